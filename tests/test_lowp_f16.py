"""float16 (IEEE half) parameters and gradients in the low-precision Adam path
(kernels/lowp.py f16_load / f16_store, PARAM_F16 in kernels/adam_lowp.py, fastadam.lowp,
the optimizer objects).

The reference rounding is NumPy's float32 -> float16 ``astype`` (round to nearest even).
Few layouts are compiled here (each costs seconds): nearest with bfloat16 state, Kahan
compensation with bfloat16 state (serial and parallel), a float32 master copy with float32
state, stochastic rounding with float32 state (serial and parallel), all with decoupled
weight decay."""
import copy

import ml_dtypes
import numpy as np
import pytest
from numba import njit

import fastadam as fa
from fastadam import config
from fastadam.kernels import lowp as L

F16 = np.dtype(np.float16)
BF = np.dtype(ml_dtypes.bfloat16)
LR, B1, B2, EPS = 1e-2, 0.9, 0.999, 1e-8
WD = {"weight_decay": 0.1, "decoupled_weight_decay": True}


def f16_round(x64):
    """float64 -> float64 value of its float16 rounding (through float32, as the kernels
    round float32 values)."""
    with np.errstate(all="ignore"):
        return np.asarray(x64, np.float64).astype(np.float32).astype(F16).astype(np.float64)


def f16_ulp(x):
    """The float16 ulp at |x| (2**-24 in the subnormal range)."""
    a = np.maximum(np.abs(np.asarray(x, np.float64)), 2.0 ** -14)
    return 2.0 ** (np.floor(np.log2(a)) - 10)


def adam64(p, g, m, v, step, lr=LR, wd=0.1):
    """Float64 AdamW step: (p_decayed, m, v, upd); the new parameter is p_dec - upd."""
    p = p * (1 - lr * wd)
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g * g
    upd = lr / (1 - B1 ** step) * m / (np.sqrt(v) / np.sqrt(1 - B2 ** step) + EPS)
    return p, m, v, upd


def warm(rng, n, state_dtype, **kw):
    """float16 parameters and a state after three steps (not zero)."""
    p = rng.standard_normal(n).astype(np.float32).astype(F16)
    st = fa.init_lowp_state(p, state_dtype=state_dtype, **kw)
    for t in range(1, 4):
        g = rng.standard_normal(n).astype(np.float32).astype(F16)
        fa.adam_step_lowp(p, g, st, step=t, lr=LR, **WD)
    return p, st


# ---------------------------------------------------------------- conversions
@njit
def _enc(x, out):
    for i in range(x.shape[0]):
        out[i] = L.f16_store(x[i])


@njit
def _dec(h, out):
    for i in range(h.shape[0]):
        out[i] = L.f16_load(h[i])


def _bits_sample():
    """Every upper half of a float32 with the lower halves where float16 rounding decides:
    the rounding bit of a normal half is bit 12, of a subnormal half bit 13..23 (the
    upper half covers bits 16..23); just below / at / above each tie, and random ones."""
    hi = np.arange(1 << 16, dtype=np.uint32) << 16
    lows = [0, 1, 0xFFFF]
    for bit in range(12, 16):
        t = 1 << bit
        lows += [t - 1, t, t + 1, t | (t << 1), (t << 1) - 1 if bit < 15 else 0xFFFE]
    rnd = np.random.default_rng(0).integers(0, 1 << 16, 6, dtype=np.uint32)
    lows = np.unique(np.concatenate([np.array(lows, np.uint32), rnd]))
    return (hi[:, None] | lows[None, :]).ravel()


def test_f16_store_equals_numpy_astype_on_every_rounding_case():
    u = _bits_sample()
    x = u.view(np.float32)
    out = np.empty(x.size, np.uint16)
    _enc(x, out)
    with np.errstate(all="ignore"):
        ref = x.astype(F16).view(np.uint16)
    nan = np.isnan(x)
    # every non-NaN: bit for bit (ties to even, subnormals, overflow to inf, +-0, +-inf)
    assert np.array_equal(out[~nan], ref[~nan])
    # the cases the sample must contain
    r = ref[~nan]
    assert np.any(r == 0x7C00) and np.any(r == 0xFC00)              # overflow / inf
    assert np.any((r & 0x7C00) == 0) and np.any((r & 0x7FFF) == 1)  # subnormals
    # NaN stays NaN with its sign (NumPy may keep payload bits the hardware quiets)
    o = out[nan]
    assert np.all((o & 0x7C00) == 0x7C00) and np.all((o & 0x03FF) != 0)
    assert np.array_equal(o >> 15, (u[nan] >> 31).astype(np.uint16))
    # load: exact widening of every half
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    back = np.empty(h.size, np.float32)
    _dec(h, back)
    want = h.view(F16).astype(np.float32)
    hn = np.isnan(want)
    assert np.array_equal(back.view(np.uint32)[~hn], want.view(np.uint32)[~hn])
    assert np.all(np.isnan(back[hn]))


def f16_sr_np(x, bits):
    """float32 array -> float16 (numpy) by stochastic rounding with uint32 random ``bits``,
    in float64 arithmetic (the reference of kernels/lowp.py f16_store_sr): the neighbours
    toward and away from zero on the float16 grid of |x|, away when the random fraction
    (the low d bits over 2**d, d = log2(ulp / float32 ulp); below 2**-24 the high 24 bits
    over 2**24) is at least 1 - (distance to the lower neighbour) / ulp."""
    x = np.asarray(x, np.float32)
    with np.errstate(all="ignore"):
        return _f16_sr_np(x, bits)


def _f16_sr_np(x, bits):
    r = np.asarray(bits, np.uint32).astype(np.uint64)
    ax = np.abs(x.astype(np.float64))
    with np.errstate(all="ignore"):
        e = np.floor(np.log2(np.where(ax > 0, ax, 1.0)))
        ulp = 2.0 ** np.maximum(e - 10, -24)
        lo = np.floor(ax / ulp) * ulp
        frac = (ax - lo) / ulp                                  # in [0, 1), exact
        d = np.clip(np.log2(ulp) - (np.maximum(e, -126) - 23), 0, 63).astype(np.uint64)
        u = (r & ((np.uint64(1) << d) - np.uint64(1))) / 2.0 ** d.astype(np.float64)
        up = u + frac >= 1.0
        tiny = ax < 2.0 ** -24
        up = np.where(tiny, 2.0 ** 24 - (r >> np.uint64(8)) <= ax * 2.0 ** 48, up)
        mag = np.where(tiny, 0.0, lo) + np.where(up, np.where(tiny, 2.0 ** -24, ulp), 0.0)
        out = (np.copysign(mag, x)).astype(np.float16)
    out = np.where(np.isnan(x), x.astype(np.float16), out)
    out = np.where(np.isinf(x), x.astype(np.float16), out)
    return out.astype(np.float16)


@njit
def _enc_sr(x, bits, out):
    for i in range(x.shape[0]):
        out[i] = L.f16_store_sr(x[i], bits[i])


def _sr_sample(rng):
    """float32 values over the float16 range and beyond (normal, subnormal, below 2**-24,
    overflow, float32 subnormals, specials) and random bits, plus the extreme bits."""
    u = _bits_sample()
    mag = 2.0 ** rng.uniform(-30, 17, 400_000) * (1 + rng.random(400_000))
    x = np.concatenate([u.view(np.float32), (mag * rng.choice([-1, 1], mag.size)).astype(
        np.float32), np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519, 65520,
                               65535.9, 65536, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26,
                               1e-45, -1e-40, 6.1e-5, 2.0 ** -14], np.float32)])
    bits = rng.integers(0, 1 << 32, x.size, dtype=np.uint64).astype(np.uint32)
    bits[:5000] = 0
    bits[5000:10000] = 0xFFFFFFFF
    return x, bits


def test_f16_stochastic_store_equals_float64_reference():
    """f16_store_sr (integer cut at the float16 grid in the kernel) = the float64
    reference f16_sr_np (neighbours and remainder computed in float64), bit for bit on
    every non-NaN; the result is always one of the two float16 neighbours of x, and bits
    = 0 truncates toward zero."""
    x, bits = _sr_sample(np.random.default_rng(20))
    out = np.empty(x.size, np.uint16)
    _enc_sr(x, bits, out)
    ref = f16_sr_np(x, bits)
    nan = np.isnan(x)
    assert np.array_equal(out[~nan], ref.view(np.uint16)[~nan])
    o = out[nan]
    assert o.size and np.all((o & 0x7C00) == 0x7C00) and np.all((o & 0x03FF) != 0)
    y = out[~nan].view(F16).astype(np.float64)
    xs = x[~nan].astype(np.float64)
    with np.errstate(all="ignore"):
        near = x[~nan].astype(F16).astype(np.float64)      # one neighbour
        ulp = f16_ulp(xs)
        ok = (y == near) | (np.abs(y - xs) < ulp) | (np.isinf(y) & (np.abs(xs) > 65504))
    assert np.all(ok)
    z = ~nan & (bits == 0) & (np.abs(x) <= 65504)         # no random bits: toward zero
    assert np.all(np.abs(out[z].view(F16).astype(np.float64)) <= np.abs(x[z]))


def test_f16_stochastic_rounding_in_the_step_is_unbiased():
    """Many elements with the same parameter, gradient and state: the step's exact
    float32 value is the same for all (the master-weight test shows the kernel's float32
    arithmetic is float32 Adam's), each element draws its own bits; the stored float16
    values are the two neighbours of that value, with mean within 5 sigma of it, for
    normal and subnormal float16 parameters."""
    k, reps = 6, 40_000
    p0 = np.array([1.2345, -3.3, 0.011, 700.0, 3e-6, -4e-7], np.float32).astype(F16)
    # (zero gradients for the subnormal ones: only the decay moves them, they stay
    # subnormal, between two points of the 2**-24 grid)
    g0 = np.array([0.3, -1.0, 2.0, -0.5, 0.0, 0.0], np.float32).astype(F16)
    p = np.repeat(p0, reps)
    g = np.repeat(g0, reps)
    st = fa.init_lowp_state(p, state_dtype="float32")
    lr = 1e-3
    fa.adam_step_lowp(p, g, st, step=1, lr=lr, rounding="stochastic", seed=5, **WD)
    w, m, v = p0.astype(np.float32), np.zeros(k, np.float32), np.zeros(k, np.float32)
    fa.adam_step(w, g0.astype(np.float32), m, v, step=1, lr=lr, **WD)   # exact float32
    y = p.astype(np.float64).reshape(k, reps)
    for j in range(k):
        x = float(w[j])
        lo, hi = np.sort(np.unique(y[j]))[[0, -1]]
        assert lo <= x <= hi and set(np.unique(y[j])) <= {lo, hi}, j
        assert hi - lo <= f16_ulp(x) * (1 + 1e-9), j
        assert hi > lo, j                      # none of these x is on the float16 grid
        if hi > lo:
            f = (x - lo) / (hi - lo)
            sd = (hi - lo) * np.sqrt(f * (1 - f) / reps)
            assert abs(y[j].mean() - x) < 5 * sd + 1e-12 * abs(x), (j, y[j].mean(), x)


def test_f16_stochastic_rounding_reproducible_for_seed_and_threads(monkeypatch):
    n = 2 * config.BLOCK + 77
    rng = np.random.default_rng(21)
    p0 = rng.standard_normal(n).astype(np.float32).astype(F16)
    gs = [rng.standard_normal(n).astype(np.float32).astype(F16) for _ in range(3)]

    def run(seed, threads, parallel):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 0 if parallel else 1 << 62)
        p = p0.copy()
        st = fa.init_lowp_state(p, state_dtype="float32")
        with fa.threads(threads):
            for t, g in enumerate(gs, 1):
                fa.adam_step_lowp(p, g, st, step=t, lr=LR, rounding="stochastic", seed=seed,
                                  **WD)
        return p.view(np.uint16).copy()

    a = run(11, 1, False)
    assert np.array_equal(a, run(11, 1, True))
    if config.numba.config.NUMBA_NUM_THREADS >= 2:
        assert np.array_equal(a, run(11, 2, True))
    assert not np.array_equal(a, run(12, 1, False))


# ---------------------------------------------------------------- one step
@pytest.mark.parametrize("mode", ["nearest", "compensation"])
def test_f16_params_one_step_against_float64(mode):
    rng = np.random.default_rng(4)
    n = 3000
    kw = {"compensation": True} if mode == "compensation" else {}
    p, st = warm(rng, n, "bfloat16", **kw)
    # a few parameters in the float16 subnormal range and near its top
    p[:8] = np.array([3e-6, -5e-7, 6e-5, -1e-7, 6e4, -6e4, 0.0, 1e-3], np.float32).astype(F16)
    g = rng.standard_normal(n).astype(np.float32).astype(F16)
    p0 = p.astype(np.float64)
    c0 = st["compensation"].astype(np.float64) if kw else 0.0
    m0 = st["exp_avg"].astype(np.float64)
    v0 = st["exp_avg_sq"].astype(np.float64)
    pd, m, v, upd = adam64(p0, g.astype(np.float64), m0, v0, 4)
    exact = pd - upd
    fa.adam_step_lowp(p, g, st, step=4, lr=LR, **WD)
    p1 = p.astype(np.float64)
    assert p.dtype == F16 and np.all(np.isfinite(p1))
    if mode == "nearest":
        assert np.all(np.abs(p1 - f16_round(exact)) <= f16_ulp(exact))
        assert np.count_nonzero(p1 == f16_round(exact)) > 0.95 * n
    else:
        # Kahan: parameter + compensation carry the exact sum up to the rounding of the
        # compensation buffer (half a float16 ulp of c) and float32 arithmetic
        c1 = st["compensation"].astype(np.float64)
        assert st["compensation"].dtype == F16
        target = p0 + c0 + (exact - p0)
        assert np.all(np.abs(p1 + c1 - target)
                      <= f16_ulp(c1) / 2 + 1e-6 * np.abs(p0) + 1e-6 * np.abs(upd))
        assert np.all(np.abs(c1) <= f16_ulp(p1))
    for key, x in (("exp_avg", m), ("exp_avg_sq", v)):      # bfloat16 moments: 1 ulp
        bulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(x), 2.0 ** -126))) - 7)
        want = x.astype(np.float32).astype(BF).astype(np.float64)
        assert np.all(np.abs(st[key].astype(np.float64) - want) <= bulp + 1e-30), key


def test_f16_master_weights_follow_float32_adam_bit_for_bit():
    rng = np.random.default_rng(6)
    n = 5000
    ph = rng.standard_normal(n).astype(np.float32).astype(F16)
    w = ph.astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    st = fa.init_lowp_state(ph, state_dtype="float32", master_weights=True)
    assert np.array_equal(st["master"], w)
    for t in range(1, 40):
        gh = rng.standard_normal(n).astype(np.float32).astype(F16)
        fa.adam_step(w, gh.astype(np.float32), m, v, step=t, lr=LR, **WD)
        fa.adam_step_lowp(ph, gh, st, step=t, lr=LR, **WD)
        assert np.array_equal(st["master"].view(np.uint32), w.view(np.uint32)), t
        assert np.array_equal(st["exp_avg"], m) and np.array_equal(st["exp_avg_sq"], v)
        assert np.array_equal(ph.view(np.uint16), w.astype(F16).view(np.uint16)), t


def test_f16_adamax_master_weights_follow_float32_adamax_bit_for_bit():
    rng = np.random.default_rng(3)
    n = 2000
    ph = rng.standard_normal(n).astype(np.float32).astype(F16)
    w = ph.astype(np.float32)
    m, u = np.zeros(n, np.float32), np.zeros(n, np.float32)
    st = fa.init_lowp_state(ph, state_dtype="float32", master_weights=True,
                            algorithm="adamax")
    for t in range(1, 20):
        gh = rng.standard_normal(n).astype(np.float32).astype(F16)
        fa.adamax_step(w, gh.astype(np.float32), m, u, step=t, lr=1e-3, weight_decay=0.01)
        fa.adamax_step_lowp(ph, gh, st, step=t, lr=1e-3, weight_decay=0.01)
        assert np.array_equal(st["master"].view(np.uint32), w.view(np.uint32)), t
        assert np.array_equal(st["exp_avg"], m) and np.array_equal(st["exp_inf"], u)
        assert np.array_equal(ph.view(np.uint16), w.astype(F16).view(np.uint16))


def test_f16_parallel_kernel_equals_serial_bit_for_bit(monkeypatch):
    n = 2 * config.BLOCK + 77
    rng = np.random.default_rng(12)
    p0 = rng.standard_normal(n).astype(np.float32).astype(F16)
    gs = [rng.standard_normal(n).astype(np.float32).astype(F16) for _ in range(3)]

    def run(parallel, threads):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 0 if parallel else 1 << 62)
        p = p0.copy()
        st = fa.init_lowp_state(p, state_dtype="bfloat16", compensation=True)
        with fa.threads(threads):
            for t, g in enumerate(gs, 1):
                fa.adam_step_lowp(p, g, st, step=t, lr=LR, **WD)
        return [p.view(np.uint8).copy()] + [st[k].view(np.uint8).copy() for k in sorted(st)]

    want = run(False, 1)
    for threads in sorted({1, fa.get_num_threads()}):
        got = run(True, threads)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert np.array_equal(a, b), threads


# ---------------------------------------------------------------- optimizer objects
def _params(rng):
    return [rng.standard_normal(s).astype(np.float32).astype(F16) for s in ((40, 7), (33,))]


def _grads(ps, rng):
    return [rng.standard_normal(p.shape).astype(np.float32).astype(F16) for p in ps]


def test_optimizer_equals_functional_and_state_dict_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    ps = _params(rng)
    fs = [p.copy().reshape(-1) for p in ps]
    sts = [fa.init_lowp_state(f, state_dtype="bfloat16", compensation=True) for f in fs]
    opt = fa.AdamW(ps, lr=LR, weight_decay=0.1, state_dtype="bfloat16", compensation=True)
    for t in range(1, 4):
        gs = _grads(ps, rng)
        opt.step(gs)
        for f, g, st in zip(fs, gs, sts):
            fa.adam_step_lowp(f, g.reshape(-1), st, step=t, lr=LR, **WD)
        for p, f, st, i in zip(ps, fs, sts, range(2)):
            assert np.array_equal(p.reshape(-1).view(np.uint16), f.view(np.uint16))
            for k in st:
                assert np.array_equal(opt.state[i][k].view(np.uint16), st[k].view(np.uint16))
    sd = opt.state_dict()
    assert sd["state"][0]["compensation"].dtype in (F16, np.dtype(np.uint16))
    opt.save(tmp_path / "ck.npz")
    gs = [_grads(ps, rng) for _ in range(2)]
    copies = []
    for how in ("state_dict", "checkpoint", "deepcopy"):
        qs = [p.copy() for p in ps]
        o2 = fa.AdamW(qs, lr=LR, weight_decay=0.1, state_dtype="bfloat16", compensation=True)
        if how == "state_dict":
            o2.load_state_dict(sd)
        elif how == "checkpoint":
            o2.load(tmp_path / "ck.npz")
        else:
            o2 = copy.deepcopy(opt)
            qs = o2.param_groups[0]["params"]
        copies.append((o2, qs))
    for g in gs:
        opt.step(g)
        for o2, _ in copies:
            o2.step([x.copy() for x in g])
    for o2, qs in copies:
        for p, q in zip(ps, qs):
            assert q.dtype == F16 and np.array_equal(p.view(np.uint16), q.view(np.uint16))
        for i in range(2):
            for k, a in opt.state[i].items():
                b = o2.state[i][k]
                a, b = np.atleast_1d(np.asarray(a)), np.atleast_1d(np.asarray(b))
                assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), k


# ---------------------------------------------------------------- refusals
def test_f16_refusals_name_the_argument_and_change_nothing():
    rng = np.random.default_rng(9)
    p = rng.standard_normal(100).astype(np.float32).astype(F16)
    g = rng.standard_normal(100).astype(np.float32).astype(F16)
    st = fa.init_lowp_state(p, state_dtype="bfloat16")
    before = (p.copy(), {k: a.copy() for k, a in st.items()})

    def unchanged():
        assert np.array_equal(p.view(np.uint16), before[0].view(np.uint16))
        for k, a in st.items():
            assert np.array_equal(a.view(np.uint16), before[1][k].view(np.uint16))

    with pytest.raises(ValueError, match="rounding"):
        fa.adam_step_lowp(p, g, st, step=1, rounding="stochastic ")
    unchanged()
    with pytest.raises(ValueError, match=r"rounding='stochastic' cannot be combined"):
        fa.adam_step_lowp(p, g, dict(st, master=p.astype(np.float32)), step=1,
                          rounding="stochastic")
    unchanged()
    with pytest.raises(TypeError, match="grad"):
        fa.adam_step_lowp(p, g.astype(BF), st, step=1)
    unchanged()
    bad = dict(st, compensation=np.zeros(100, BF))      # a bfloat16 buffer for float16
    with pytest.raises(TypeError, match="compensation"):
        fa.adam_step_lowp(p, g, bad, step=1)
    unchanged()
    with pytest.raises(ValueError, match="master_weights"):
        fa.init_lowp_state(p.astype(np.float32), master_weights=True)
    # the optimizer: stochastic rounding with a master copy, mixed float16 / bfloat16 /
    # float32
    with pytest.raises(ValueError, match=r"rounding='stochastic' cannot be combined"):
        fa.Adam([p.copy()], state_dtype="bfloat16", rounding="stochastic",
                master_weights=True)
    for other in (BF, np.float32):
        with pytest.raises(TypeError, match=r"parameter 1 .*float16"):
            fa.Adam([p.copy(), p.astype(other)], state_dtype="bfloat16")
    opt = fa.Adam([p.copy()], state_dtype="bfloat16")
    with pytest.raises(TypeError, match="all float16"):
        opt.add_param_group({"params": [p.astype(BF)]})
