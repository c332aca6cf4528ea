"""Low-precision Adam (fastadam.lowp, kernels/lowp.py, kernels/adam_lowp.py).

Against a rounding-aware float64 reference: the same step in float64 from the decoded
state, then the same rounding applied at each store. bfloat16 comparisons go through
ml_dtypes (the reference rounding)."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from numba import njit

import fastadam as fa
from fastadam import config, lowp
from fastadam.kernels import lowp as L

BF = np.dtype(ml_dtypes.bfloat16)
LR, B1, B2, EPS = 1e-2, 0.9, 0.999, 1e-8


# ---------------------------------------------------------------- helpers
def f32(a):
    return np.asarray(a).astype(np.float32)


def bf_round(x64):
    """float64 -> float64 value of its bfloat16 rounding (through float32 first, as the
    kernels round float32 values; for the 1-ulp checks the double rounding is covered)."""
    return np.asarray(x64, np.float64).astype(np.float32).astype(BF).astype(np.float64)


def bf_ulp(x):
    """The bfloat16 ulp at |x| (the spacing above 2**floor(log2|x|)); normal range."""
    a = np.maximum(np.abs(np.asarray(x, np.float64)), 2.0 ** -126)
    return 2.0 ** (np.floor(np.log2(a)) - 7)


def q8_decode_np(codes, absmax, signed):
    table = L.Q8S_TABLE if signed else L.Q8U_TABLE
    idx = codes.astype(np.int64) + (128 if signed else 0)
    scale = np.repeat(absmax.astype(np.float32), L.Q8_BLOCK)[:codes.shape[0]]
    return (table[idx] * scale).astype(np.float64)


def q8_nearest_err(x, absmax, signed):
    """Distance from x / absmax (float64) to the nearest code of the map."""
    table = np.unique((L.Q8S_TABLE if signed else L.Q8U_TABLE).astype(np.float64))
    scale = np.repeat(absmax.astype(np.float64), L.Q8_BLOCK)[:x.shape[0]]
    y = np.where(scale > 0, x / np.where(scale > 0, scale, 1), 0)
    i = np.clip(np.searchsorted(table, y), 1, table.size - 1)
    return np.minimum(np.abs(y - table[i - 1]), np.abs(y - table[i]))


def adam64(p, g, m, v, step, *, lr=LR, wd=0.0, decoupled=False, maximize=False,
           eps_mode="paper", bias_correction=True):
    """Float64 Adam step from float64 inputs: (p_decayed, m, v, upd), p_new = p_dec - upd."""
    if maximize:
        g = -g
    if wd and not decoupled:
        g = g + wd * p
    if wd and decoupled:
        p = p * (1 - lr * wd)
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g * g
    bc1 = 1 - B1 ** step if bias_correction else 1.0
    bc2 = 1 - B2 ** step if bias_correction else 1.0
    if eps_mode == "paper":
        upd = lr / bc1 * m / (np.sqrt(v) / np.sqrt(bc2) + EPS)
    else:
        upd = lr * np.sqrt(bc2) / bc1 * m / (np.sqrt(v) + EPS)
    return p, m, v, upd


def warm_state(rng, n, pdt, state_dtype, step_kw=None, **kw):
    """Parameters and a state after a few steps (so the state is not zero). ``step_kw``:
    the options of those steps; tests pass the options of the step they check, so the
    warm-up runs the kernel that step compiles and no other (compiles dominate run time)."""
    p = (rng.standard_normal(n)).astype(np.float32).astype(pdt)
    st = fa.init_lowp_state(p, state_dtype=state_dtype, **kw)
    for t in range(1, 4):
        g = rng.standard_normal(n).astype(np.float32).astype(pdt)
        fa.adam_step_lowp(p, g, st, step=t, lr=LR, **(step_kw or {}))
    return p, st


def decoded_state(st):
    m, v = st["exp_avg"], st["exp_avg_sq"]
    if m.dtype == np.int8:                         # v is stored as sqrt(v)
        return (q8_decode_np(m, st["exp_avg_absmax"], True),
                q8_decode_np(v, st["exp_avg_sq_absmax"], False) ** 2)
    return m.astype(np.float64), v.astype(np.float64)


VARIANTS = [dict(), dict(wd=0.1, decoupled=True), dict(wd=0.01), dict(maximize=True),
            dict(eps_mode="hat", bias_correction=False)]


def call_kw(var):
    return dict(weight_decay=var.get("wd", 0.0), decoupled_weight_decay=var.get("decoupled", False),
                maximize=var.get("maximize", False), eps_mode=var.get("eps_mode", "paper"),
                bias_correction=var.get("bias_correction", True))


# ---------------------------------------------------------------- bfloat16 rounding
@njit
def _enc(x, out):
    for i in range(x.shape[0]):
        out[i] = L.bf16_store(x[i])


@njit
def _enc_exact(x, out):
    for i in range(x.shape[0]):
        out[i] = L._f32_to_bf16_rne_exact(x[i])


@njit
def _enc_native(x, out):
    for i in range(x.shape[0]):
        out[i] = L._f32_to_bf16_rne_native(x[i])


@njit
def _dec(h, out):
    for i in range(h.shape[0]):
        out[i] = L.bf16_load(h[i])


@njit
def _enc_sr(x, out, key, base):
    k = L.sr_segment_key(key, base)
    for i in range(x.shape[0]):
        out[i] = L.bf16_store_sr(x[i], L.sr_bits(k, base + i))


def _bits_sample():
    """Every upper half (sign, exponent, 7 fraction bits) with the lower halves where
    rounding decides: 0, 1, just below / at / above the tie, all ones, and random ones."""
    hi = np.arange(1 << 16, dtype=np.uint32) << 16
    lows = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x4000, 0xC000], np.uint32)
    rnd = np.random.default_rng(0).integers(0, 1 << 16, 8, dtype=np.uint32)
    return (hi[:, None] | np.concatenate([lows, rnd])[None, :]).ravel()


def _ml_dtypes_bits(x):
    with np.errstate(all="ignore"):
        return x.astype(BF).view(np.uint16)


def _assert_rounding(out, x, native):
    """``out`` is the bfloat16 rounding of float32 ``x``: ml_dtypes' bits on every
    non-NaN (subnormals included); for NaN a quiet NaN of the same sign, with the bits
    of the path (exact: 0x7FC0 | sign, ml_dtypes; native: the NaN's upper 16 bits with
    the quiet bit set)."""
    ref = _ml_dtypes_bits(x)
    nan = np.isnan(x)
    assert np.array_equal(out[~nan], ref[~nan])
    o = out[nan].astype(np.uint32)
    assert np.all((o & 0x7FC0) == 0x7FC0)                                  # quiet NaN
    assert np.array_equal(o >> 15, x[nan].view(np.uint32) >> 31)           # its sign
    want = L.bf16_round_native_np(x) if native else ref
    assert np.array_equal(out, want)


def test_bf16_store_equals_ml_dtypes_on_every_rounding_case():
    u = _bits_sample()
    x = u.view(np.float32)
    assert (np.abs(x[np.isfinite(x)]) < 2.0 ** -126).sum() > 2000           # subnormals
    out = np.empty(x.size, np.uint16)
    _enc(x, out)
    _assert_rounding(out, x, L.BF16_NATIVE)
    assert np.array_equal(out, L.bf16_store_np(x))
    assert np.array_equal(L.bf16_round_np(x), _ml_dtypes_bits(x))
    back = np.empty(x.size, np.float32)
    _dec(out, back)
    assert np.array_equal(back.view(np.uint32), out.astype(np.uint32) << 16)
    # the exact integer sequence, whatever this process's mode
    _enc_exact(x, out)
    assert np.array_equal(out, _ml_dtypes_bits(x))


@pytest.mark.skipif(not L._host_has_native_bf16(), reason="no AVX512_BF16 compiled for")
def test_bf16_native_rounding_subnormals_and_nan():
    """The native path (vcvtneps2bf16 treats subnormal inputs as 0) lifts subnormals:
    every one of their rounding cases, the round-up to 2**-126 and signed zeros."""
    u = _bits_sample()
    x = u.view(np.float32)
    out = np.empty(x.size, np.uint16)
    _enc_native(x, out)
    _assert_rounding(out, x, True)
    edge = np.array([0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF, 0x007F8000,
                     0x807F8000, 0x007F7FFF, 0x00008000, 0x00018000, 0x00000000,
                     0x80000000, 0x7F810000, 0xFFBF0001, 0x7FC00001, 0x7F800000],
                    np.uint32)
    # the scalar remainder of the loop (fewer elements than a vector) rounds alike
    for k in range(1, edge.size + 1):
        o = np.empty(k, np.uint16)
        _enc_native(edge[:k].view(np.float32), o)
        _assert_rounding(o, edge[:k].view(np.float32), True)
    _enc_native(edge.view(np.float32), out[:edge.size])
    assert list(out[:3]) == [0x0000, 0x8000, 0x0080]          # 2**-149 -> +-0, max -> 2**-126
    assert out[11] == 0x7FC1 and out[12] == 0xFFFF             # payload bits kept


_MODE_PROBE = r"""
import json, numpy as np
from numba import njit
from fastadam.kernels import launch, lowp as L
@njit
def enc(x, out):
    for i in range(x.shape[0]):
        out[i] = L.bf16_store(x[i])
u = (np.arange(1 << 16, dtype=np.uint32) << 16) | np.uint32(0x7FFF)
u = np.concatenate([u, u | 1, u & 0xFFFF0000, np.arange(1, 1 << 12, dtype=np.uint32),
                    0x7F800000 | np.arange(1, 1 << 12, dtype=np.uint32) << 11])
x = u.view(np.float32)
out = np.empty(x.size, np.uint16)
enc(x, out)
with np.errstate(all="ignore"):
    ref = x.astype(__import__("ml_dtypes").bfloat16).view(np.uint16)
print(json.dumps({"mode": L.BF16_MODE, "hash": launch.SOURCE_HASH,
                  "equal": bool(np.array_equal(out, ref)),
                  "model": bool(np.array_equal(out, L.bf16_store_np(x))),
                  "nan_equal": bool(np.array_equal(out[np.isnan(x)], ref[np.isnan(x)]))}))
"""


def test_bf16_mode_follows_fastadam_exact(tmp_path):
    """FASTADAM_EXACT=1 gives ml_dtypes' bits on every input, NaN included; the default
    is the native path where AVX512_BF16 exists. The mode is part of the launchers'
    cache key (two modes never share a cached kernel)."""
    root = str(pathlib.Path(__file__).resolve().parents[1])
    out = {}
    for exact in (False, True):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=root)
        env.pop("FASTADAM_EXACT", None)
        if exact:
            env["FASTADAM_EXACT"] = "1"
        res = subprocess.run([sys.executable, "-c", _MODE_PROBE], env=env,
                             capture_output=True, text=True, timeout=600, cwd=root)
        assert res.returncode == 0, res.stderr
        out[exact] = json.loads(res.stdout.strip().splitlines()[-1])
    assert out[True]["mode"] == "exact"
    assert out[True]["equal"] and out[True]["model"]
    native = L._host_has_native_bf16() and os.environ.get("NUMBA_CPU_NAME", "host") == "host"
    assert out[False]["mode"] == ("native" if native else "exact")
    assert out[False]["model"]
    assert out[False]["nan_equal"] == (not native)    # the probe has NaN payloads
    if native:
        assert out[False]["hash"] != out[True]["hash"]


@pytest.mark.skipif(not os.environ.get("FASTADAM_EXHAUSTIVE"),
                    reason="all 2**32 float32 patterns: ~70 s; set FASTADAM_EXHAUSTIVE=1")
def test_bf16_store_equals_ml_dtypes_exhaustive():
    chunk = 1 << 26
    out = np.empty(chunk, np.uint16)
    for start in range(0, 1 << 32, chunk):
        x = np.arange(start, start + chunk, dtype=np.uint64).astype(np.uint32).view(np.float32)
        _enc(x, out)
        assert np.array_equal(out, L.bf16_store_np(x)), hex(start)
        nan = np.isnan(x)
        assert np.array_equal(out[~nan], _ml_dtypes_bits(x)[~nan]), hex(start)


def test_stochastic_rounding_picks_a_neighbour_and_is_unbiased():
    n = 200_000
    rng = np.random.default_rng(1)
    x = np.repeat(rng.standard_normal(20).astype(np.float32), n // 20)
    out = np.empty(n, np.uint16)
    _enc_sr(x, out, 12345, 0)
    y = out.astype(np.uint32) << 16
    lo = x.view(np.uint32) & 0xFFFF0000                        # truncation (toward zero)
    assert np.all((y == lo) | (y == lo + 0x10000))
    frac = (x.view(np.uint32) & 0xFFFF) / 65536.0              # P(round away from zero)
    up = (y != lo).reshape(20, -1).mean(axis=1)
    p = frac.reshape(20, -1)[:, 0]
    sd = np.sqrt(p * (1 - p) / (n // 20)) + 1e-9
    assert np.all(np.abs(up - p) < 5 * sd + 1e-3), (up, p)
    # NaN and inf survive; values that are exact in bfloat16 never move
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 1.0, -2.5, 0.0], np.float32)
    o = np.empty(7, np.uint16)
    _enc_sr(special, o, 99, 0)
    with np.errstate(invalid="ignore"):
        assert np.array_equal(o, special.astype(BF).view(np.uint16))


def test_stochastic_bits_depend_on_key_and_index_only():
    x = np.full(4096, np.float32(1.0 + 2 ** -10))
    a, b, c = (np.empty(4096, np.uint16) for _ in range(3))
    _enc_sr(x, a, 7, 1 << 20)
    _enc_sr(x[:2048], b[:2048], 7, 1 << 20)                   # split differently: same bits
    _enc_sr(x[2048:], b[2048:], 7, (1 << 20) + 2048)
    _enc_sr(x, c, 8, 1 << 20)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert L.sr_key(0, 1) != L.sr_key(0, 2) != L.sr_key(1, 1)


# ---------------------------------------------------------------- 8-bit codes
@njit
def _q8(x, inv, cu, cs, du, ds, scale):
    for i in range(x.shape[0]):
        cu[i] = L.q8u_encode(abs(x[i]), inv)
        cs[i] = L.q8s_encode(x[i], inv)
        du[i] = L.q8u_decode(cu[i], scale)
        ds[i] = L.q8s_decode(cs[i], scale)


def _run_q8(x, inv=1.0, scale=1.0):
    n = x.shape[0]
    cu, cs = np.empty(n, np.uint8), np.empty(n, np.int8)
    du, ds = np.empty(n, np.float32), np.empty(n, np.float32)
    _q8(x.astype(np.float32), np.float32(inv), cu, cs, du, ds, np.float32(scale))
    return cu, cs, du, ds


def test_q8_maps_are_sorted_dynamic_and_decode_matches_tables():
    u, s = L.Q8U_TABLE, L.Q8S_TABLE
    assert u[0] == 0 and u[-1] == 1 and np.all(np.diff(u) > 0)
    assert s[128] == 0 and s[255] == 1 and s[1] == -1 and np.all(np.diff(s[1:]) > 0)
    assert np.array_equal(s[129:], -s[127:0:-1])                       # symmetric
    assert u[1] == 8.0 ** -7 and s[129] == 8.0 ** -6
    # 128 codes in the top decade (1/8, 1], 64 in the next: the dynamic layout
    assert np.count_nonzero(u > 0.125) == 128 and np.count_nonzero((u > 1 / 64) & (u <= 0.125)) == 64
    cu, cs, du, ds = _run_q8(np.concatenate([u, -u]), scale=1.0)
    # decoding every code in the kernels equals the tables, and encode(decode(c)) == c
    codes = np.arange(256)
    cu2, cs2, du2, ds2 = _run_q8(u)
    assert np.array_equal(cu2, codes.astype(np.uint8))
    assert np.array_equal(du2.view(np.uint32), u.view(np.uint32))
    cu3, cs3, du3, ds3 = _run_q8(s[1:])
    assert np.array_equal(cs3, np.arange(-127, 128).astype(np.int8))
    assert np.array_equal(ds3, s[1:])


def test_q8_encode_is_nearest_code():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.random(200_000), 8.0 ** rng.uniform(-9, 0, 200_000),
                        [0.0, 1.0, 1e-30]]).astype(np.float32)
    x = np.concatenate([x, -x])
    cu, cs, du, ds = _run_q8(x)
    xa = np.abs(x).astype(np.float64)
    for signed, dec in ((False, du), (True, ds)):
        ref = xa if not signed else x.astype(np.float64)
        got = np.abs(dec.astype(np.float64) - ref)
        best = q8_nearest_err(ref, np.ones(-(-x.size // L.Q8_BLOCK), np.float32), signed)
        # exact up to the float32 rounding of the grid position (three roundings of
        # 2**-24 each, relative): a near-tie may pick the other neighbour
        assert np.all(got <= best + 2.0 ** -21 * np.maximum(np.abs(ref), 2.0 ** -30))
    # NaN -> code 0 and > 1 -> top code (the block scale carries NaN; absmax bounds x)
    cu, cs, _, _ = _run_q8(np.array([np.nan, 1.5, -1.5], np.float32))
    assert list(cu) == [0, 255, 255] and list(cs) == [0, 127, -127]


# ---------------------------------------------------------------- one step vs reference
@pytest.mark.parametrize("var", VARIANTS)
@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8", "float32"])
def test_float32_params_low_precision_state_one_step(state_dtype, var):
    # serial kernels (n is below one parallel block anyway): the parallel kernel of
    # every layout is held to the serial one bit for bit below
    rng = np.random.default_rng(3)
    n = 3000
    p, st = warm_state(rng, n, np.float32, state_dtype, step_kw=call_kw(var))
    g = rng.standard_normal(n).astype(np.float32)
    m0, v0 = decoded_state(st)
    pd, m, v, upd = adam64(p.astype(np.float64), g.astype(np.float64), m0, v0, 4, **var)
    p_before = p.copy()
    fa.adam_step_lowp(p, g, st, step=4, lr=LR, **call_kw(var))
    m1, v1 = decoded_state(st)
    if state_dtype == "bfloat16":
        # within 1 bfloat16 ulp of the reference rounded the same way (float32 vs
        # float64 arithmetic may round a near-tie the other way: at most one ulp)
        assert np.all(np.abs(m1 - bf_round(m)) <= bf_ulp(m) + 1e-30)
        assert np.all(np.abs(v1 - bf_round(v)) <= bf_ulp(v) + 1e-30)
    elif state_dtype == "int8":
        blocks = -(-n // L.Q8_BLOCK)
        ref_am = np.array([np.abs(m[b * 256:(b + 1) * 256]).max() for b in range(blocks)])
        ref_av = np.array([np.sqrt(v[b * 256:(b + 1) * 256]).max() for b in range(blocks)])
        assert np.allclose(st["exp_avg_absmax"], ref_am, rtol=1e-6, atol=0)
        assert np.allclose(st["exp_avg_sq_absmax"], ref_av, rtol=1e-6, atol=0)
        # each stored code is the nearest (to float32 rounding) to the new value
        for x, dec, scale, signed in ((m, m1, st["exp_avg_absmax"], True),
                                      (np.sqrt(v), np.sqrt(v1), st["exp_avg_sq_absmax"], False)):
            s = np.repeat(scale.astype(np.float64), L.Q8_BLOCK)[:n]
            err = np.abs(dec - x) / s
            assert np.all(err <= q8_nearest_err(x, scale, signed) + 1e-5)
    else:
        assert np.allclose(m1, m, rtol=1e-5, atol=1e-7) and np.allclose(v1, v, rtol=1e-5, atol=1e-9)
    # float32 parameter: computed from the decoded state in float32, not rounded
    tol = 1e-6 * np.abs(pd) + 1e-5 * np.abs(upd) + 1e-12
    assert np.all(np.abs(p.astype(np.float64) - (pd - upd)) <= tol)
    assert not np.array_equal(p, p_before)


@pytest.mark.parametrize("mode", ["nearest", "stochastic", "compensation", "master"])
@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_bf16_params_one_step(mode, state_dtype):
    rng = np.random.default_rng(4)
    n = 3000
    kw = {"compensation": {"compensation": True}, "master": {"master_weights": True}}.get(mode, {})
    var = dict(wd=0.1, decoupled=True)
    p, st = warm_state(rng, n, BF, state_dtype, step_kw=call_kw(var), **kw)
    g = rng.standard_normal(n).astype(np.float32).astype(BF)
    p0 = (st["master"] if mode == "master" else p).astype(np.float64)
    c0 = st["compensation"].astype(np.float64) if mode == "compensation" else 0.0
    m0, v0 = decoded_state(st)
    pd, m, v, upd = adam64(p0, g.astype(np.float64), m0, v0, 4, **var)
    exact = pd - upd
    fa.adam_step_lowp(p, g, st, step=4, lr=LR, rounding="stochastic" if mode == "stochastic" else "nearest",
                      seed=5, **call_kw(var))
    p1 = p.astype(np.float64)
    if mode == "nearest":
        assert np.all(np.abs(p1 - bf_round(exact)) <= bf_ulp(exact))
    elif mode == "stochastic":
        # one of the two neighbours of the exact value
        assert np.all(np.abs(p1 - exact) <= bf_ulp(exact) * (1 + 1e-3))
        assert 0 < np.count_nonzero(p1 != bf_round(exact)) < n
    elif mode == "master":
        w = st["master"].astype(np.float64)
        assert np.all(np.abs(w - exact) <= 1e-6 * np.abs(exact) + 1e-5 * np.abs(upd))
        assert np.array_equal(p, st["master"].astype(BF))                # rounded in the same pass
    else:
        # Kahan: parameter + compensation carries the exact sum up to the rounding of the
        # compensation buffer itself (half a bfloat16 ulp of c) and float32 arithmetic
        c1 = st["compensation"].astype(np.float64)
        target = p0 + c0 + (exact - p0)
        assert np.all(np.abs(p1 + c1 - target) <= bf_ulp(c1) / 2 + 1e-6 * np.abs(p0) + 1e-30)
        assert np.all(np.abs(c1) <= bf_ulp(p1))     # |c| below one ulp of the parameter
    if state_dtype == "bfloat16":
        m1, v1 = decoded_state(st)
        assert np.all(np.abs(m1 - bf_round(m)) <= bf_ulp(m) + 1e-30)
        assert np.all(np.abs(v1 - bf_round(v)) <= bf_ulp(v) + 1e-30)


def test_master_weights_follow_float32_adam_bit_for_bit():
    rng = np.random.default_rng(6)
    n = 5000
    p32 = rng.standard_normal(n).astype(np.float32)
    pb = p32.astype(BF)
    w = pb.astype(np.float32)                      # the master starts from the bf16 params
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    st = fa.init_lowp_state(pb, state_dtype="float32", master_weights=True)
    assert np.array_equal(st["master"], w)
    for t in range(1, 60):
        gb = rng.standard_normal(n).astype(np.float32).astype(BF)
        fa.adam_step(w, gb.astype(np.float32), m, v, step=t, lr=1e-3, weight_decay=0.01,
                     decoupled_weight_decay=True)
        fa.adam_step_lowp(pb, gb, st, step=t, lr=1e-3, weight_decay=0.01,
                          decoupled_weight_decay=True)
        assert np.array_equal(st["master"].view(np.uint32), w.view(np.uint32)), t
        assert np.array_equal(st["exp_avg"], m) and np.array_equal(st["exp_avg_sq"], v)
        assert np.array_equal(pb, w.astype(BF))


# Every layout's parallel kernel, against its serial kernel: bit for bit over several
# parallel blocks (a last block that is not whole, 8-bit blocks across block edges) with
# every thread count. The one-step tests above hold the serial kernels to the reference.
LAYOUTS = ([(np.float32, s, "nearest") for s in ("float32", "bfloat16", "int8")]
           + [(BF, s, m) for s in ("bfloat16", "int8")
              for m in ("nearest", "stochastic", "compensation", "master")])


@pytest.mark.parametrize("pdt,state_dtype,mode", LAYOUTS,
                         ids=[f"{np.dtype(p).name}-{s}-{m}" for p, s, m in LAYOUTS])
def test_parallel_kernel_equals_serial_bit_for_bit(pdt, state_dtype, mode, monkeypatch):
    n = 2 * config.BLOCK + 3 * L.Q8_BLOCK + 77
    kw = {"compensation": {"compensation": True}, "master": {"master_weights": True}}.get(mode, {})
    var = dict(wd=0.1, decoupled=True) if pdt is BF else {}
    step_kw = dict(call_kw(var), rounding="stochastic" if mode == "stochastic" else "nearest",
                   seed=5)
    rng = np.random.default_rng(12)
    p0 = rng.standard_normal(n).astype(np.float32).astype(pdt)
    gs = [rng.standard_normal(n).astype(np.float32).astype(pdt) for _ in range(3)]

    def run(parallel, threads):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 0 if parallel else 1 << 62)
        p = p0.copy()
        st = fa.init_lowp_state(p, state_dtype=state_dtype, **kw)
        with fa.threads(threads):
            for t, g in enumerate(gs, 1):
                fa.adam_step_lowp(p, g, st, step=t, lr=LR, **step_kw)
        return [p.view(np.uint8).copy()] + [st[k].view(np.uint8).copy() for k in sorted(st)]

    want = run(False, 1)
    for threads in sorted({1, fa.get_num_threads()}):
        got = run(True, threads)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert np.array_equal(a, b), threads


def test_stochastic_rounding_reproducible_for_seed_and_threads(monkeypatch):
    rng = np.random.default_rng(7)
    n = 200_000
    p0 = rng.standard_normal(n).astype(np.float32).astype(BF)
    gs = [rng.standard_normal(n).astype(np.float32).astype(BF) for _ in range(3)]

    def run(seed, threads, parallel):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 0 if parallel else 1 << 62)
        p = p0.copy()
        st = fa.init_lowp_state(p, state_dtype="bfloat16")
        with fa.threads(threads):
            for t, g in enumerate(gs, 1):
                # decoupled weight decay: the kernels of the bfloat16-bfloat16-stochastic
                # layout above (serial and parallel), not two more to compile
                fa.adam_step_lowp(p, g, st, step=t, lr=1e-3, rounding="stochastic", seed=seed,
                                  weight_decay=0.1, decoupled_weight_decay=True)
        return p.view(np.uint16).copy()

    a = run(11, 1, False)
    assert np.array_equal(a, run(11, 1, False))
    assert np.array_equal(a, run(11, fa.get_num_threads(), True))
    if config.numba.config.NUMBA_NUM_THREADS >= 2:
        assert np.array_equal(a, run(11, 2, True))
    assert not np.array_equal(a, run(12, 1, False))


def test_decode_state_matches_reference_decoding():
    rng = np.random.default_rng(10)
    for sd in ("bfloat16", "int8", "float32"):
        _, st = warm_state(rng, 700, np.float32, sd)
        m, v = lowp.decode_state(st)
        rm, rv = decoded_state(st)
        assert m.dtype == v.dtype == np.float32
        assert np.allclose(m, rm, rtol=1e-6, atol=0) and np.allclose(v, rv, rtol=1e-6, atol=0)


def test_int8_state_survives_save_and_load_exactly(tmp_path):
    rng = np.random.default_rng(8)
    p, st = warm_state(rng, 1000, np.float32, "int8")
    np.savez(tmp_path / "s.npz", **st)
    with np.load(tmp_path / "s.npz") as f:
        back = {k: f[k] for k in f.files}
    assert set(back) == set(st)
    for k in st:
        assert back[k].dtype == st[k].dtype and np.array_equal(back[k], st[k])
    g = rng.standard_normal(1000).astype(np.float32)
    p2 = p.copy()
    fa.adam_step_lowp(p, g, st, step=4)
    fa.adam_step_lowp(p2, g, back, step=4)
    assert np.array_equal(p, p2) and all(np.array_equal(st[k], back[k]) for k in st)


# ---------------------------------------------------------------- bad input
def _snapshot(*arrays):
    return [a.copy() for a in arrays]


def test_errors_name_the_argument_and_change_nothing():
    rng = np.random.default_rng(9)
    pb = rng.standard_normal(600).astype(np.float32).astype(BF)
    p32 = pb.astype(np.float32)
    with pytest.raises(ValueError, match="state_dtype"):
        fa.init_lowp_state(p32, state_dtype="float8")
    with pytest.raises(ValueError, match="master_weights"):
        fa.init_lowp_state(p32, master_weights=True)
    with pytest.raises(ValueError, match="compensation"):
        fa.init_lowp_state(pb, master_weights=True, compensation=True)
    with pytest.raises(TypeError, match="param"):
        fa.init_lowp_state(p32.astype(np.float64))
    st = fa.init_lowp_state(pb, state_dtype="int8")
    # one real step first (with the options of test_bf16_params_one_step[int8-nearest],
    # whose kernel it shares); every bad call below is refused before any kernel runs
    fa.adam_step_lowp(pb, pb.copy(), st, step=1, weight_decay=0.1, decoupled_weight_decay=True)
    before = _snapshot(pb, *st.values())

    def unchanged():
        return all(np.array_equal(a.view(np.uint8), b.view(np.uint8))
                   for a, b in zip(before, [pb, *st.values()]))

    bad_calls = [
        (TypeError, "grad", lambda: fa.adam_step_lowp(pb, p32, st, step=2)),          # mixed
        (ValueError, "rounding", lambda: fa.adam_step_lowp(pb, pb.copy(), st, step=2, rounding="up")),
        (TypeError, "seed", lambda: fa.adam_step_lowp(pb, pb.copy(), st, step=2, seed=1.5)),
        (ValueError, "lr", lambda: fa.adam_step_lowp(pb, pb.copy(), st, step=2, lr=-1.0)),
        (ValueError, "step", lambda: fa.adam_step_lowp(pb, pb.copy(), st, step=0)),
        (ValueError, "eps_mode", lambda: fa.adam_step_lowp(pb, pb.copy(), st, step=2, eps_mode="x")),
        (ValueError, "unknown entry 'max_exp_avg_sq'",
         lambda: fa.adam_step_lowp(pb, pb.copy(), {**st, "max_exp_avg_sq": st["exp_avg"]}, step=2)),
        (TypeError, r"exp_avg_sq'\] must have dtype uint8",
         lambda: fa.adam_step_lowp(pb, pb.copy(), {**st, "exp_avg_sq": st["exp_avg"].copy()}, step=2)),
        (ValueError, "exp_avg_absmax",
         lambda: fa.adam_step_lowp(pb, pb.copy(), {k: a for k, a in st.items() if k != "exp_avg_absmax"},
                                   step=2)),
        (ValueError, "shape",
         lambda: fa.adam_step_lowp(pb, pb.copy(), {**st, "exp_avg_absmax": np.zeros(2, np.float32)},
                                   step=2)),
        (ValueError, "share memory", lambda: fa.adam_step_lowp(pb, pb, st, step=2)),
        (ValueError, "master", lambda: fa.adam_step_lowp(p32, p32.copy(),
                                                         {**fa.init_lowp_state(p32), "master": p32.copy()},
                                                         step=2)),
        (ValueError, "stochastic", lambda: fa.adam_step_lowp(p32, p32.copy(), fa.init_lowp_state(p32),
                                                             step=2, rounding="stochastic")),
        (TypeError, "dtype", lambda: fa.adam_step_lowp(pb, pb.copy(),
                                                       {"exp_avg": np.zeros(600), "exp_avg_sq": np.zeros(600)},
                                                       step=2)),
        (TypeError, "state must be a dict", lambda: fa.adam_step_lowp(pb, pb.copy(), [1, 2], step=2)),
    ]
    for exc, match, call in bad_calls:
        with pytest.raises(exc, match=match):
            call()
        assert unchanged(), match
    comp = fa.init_lowp_state(pb, state_dtype="bfloat16", compensation=True)
    with pytest.raises(ValueError, match="stochastic"):
        fa.adam_step_lowp(pb, pb.copy(), comp, step=1, rounding="stochastic")
    assert unchanged() and not comp["compensation"].view(np.uint16).any()


# ---------------------------------------------------------------- convergence
# The training runs live in scripts/lowp_experiments.py (which also draws the plot of
# docs/low_precision.md); loaded here as a module.
_EXP = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "lowp_experiments.py"
_spec = importlib.util.spec_from_file_location("lowp_experiments", _EXP)
X = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(X)


@pytest.mark.parametrize("state_dtype,tol", [("bfloat16", 0.01), ("int8", 0.02)])
def test_logistic_regression_converges_like_float32_state(state_dtype, tol):
    ref = X.train_logreg(None)
    got = X.train_logreg(state_dtype)
    assert ref[-1] < 0.6 * ref[0]            # log(2) -> 0.356 (noisy labels)
    assert abs(got[-1] - ref[-1]) <= tol * ref[-1], (got[-1], ref[-1])


@pytest.mark.parametrize("state_dtype,tol", [("bfloat16", 0.01), ("int8", 0.02)])
def test_digits_mlp_converges_like_float32_state(state_dtype, tol):
    pytest.importorskip("sklearn")
    ref = X.train_digits_mlp(None)
    got = X.train_digits_mlp(state_dtype)
    assert ref[-1] < 0.2 * ref[0]
    assert abs(got[-1] - ref[-1]) <= tol * ref[-1], (got[-1], ref[-1])


def test_tiny_updates_stall_with_nearest_but_not_with_stochastic_or_compensation():
    ref = X.train_tiny("float32")
    near = X.train_tiny("nearest")
    assert ref[-1] < 0.5 * ref[0]
    assert near[-1] == near[0]                            # not one parameter moved
    for mode in ("stochastic", "compensation", "master"):
        got = X.train_tiny(mode)
        assert abs(got[-1] - ref[-1]) <= 0.01 * ref[-1], (mode, got[-1], ref[-1])
