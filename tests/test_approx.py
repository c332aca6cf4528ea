"""The float32 estimate division (kernels/approx.py) against the exact float32 update.

The exact float32 update is written out below in NumPy float32 arithmetic (each
operation rounded once, in the kernels' order), so it is the same expression the kernels
compute with an exact divide. Through the real kernels (fa.adam_step, fa.adamax_step):

* in this process (estimate path where the CPU has one): every update is within 2 ulp
  of the exact one over wide input ranges, and NaN / inf come out where they do exactly;
* in a process with FASTADAM_EXACT=1, sharing this process's numba cache: the update is
  bit-identical to the exact formula (so that process did not load a cached estimate
  kernel either);
* the generated Adam hot loop uses the reciprocal estimate and no packed divide when the
  CPU has the estimate, and the packed divide under FASTADAM_EXACT=1.

AdaMax keeps its exact divide (one divide and no square root: the estimate measured
slower there); its sweep stays as the guard for anyone switching it over.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastadam as fa
from fastadam.kernels import approx

F32 = np.float32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ulp_distance(a, b):
    """|a - b| in float32 ulps (units in the last place), counted through the ordered
    integer representation; 0 where both are NaN, a huge value where only one is."""
    a = np.asarray(a, F32)
    b = np.asarray(b, F32)

    def ordered(x):
        i = x.view(np.int32).astype(np.int64)
        return np.where(i < 0, -(2 ** 31) - i, i)

    d = np.abs(ordered(a) - ordered(b))
    na, nb = np.isnan(a), np.isnan(b)
    d = np.where(na & nb, 0, d)
    return np.where(na ^ nb, 2 ** 40, d)


B1, OMB1, B2, OMB2, STEP_SIZE, EPS_EFF = range(6)


def hyper_row(*, lr, beta1, beta2, eps, weight_decay, bias_correction=True,
              eps_mode="paper"):
    assert weight_decay == 0.0
    return dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, bias_correction=bias_correction,
                eps_mode=eps_mode)


def scalars(h, t, adamax):
    """The step's scalars as the kernels compute them (kernels/adam.py, adamax.py):
    float64 math, rounded once to float32."""
    b1, b2, lr, eps = h["beta1"], h["beta2"], h["lr"], h["eps"]
    if adamax:
        step_size, eps_eff = lr / (1.0 - b1 ** float(t)), eps
    else:
        bc1, bc2_sqrt = 1.0, 1.0
        if h["bias_correction"]:
            bc1, bc2_sqrt = 1.0 - b1 ** float(t), np.sqrt(1.0 - b2 ** float(t))
        step_size = lr * bc2_sqrt / bc1
        eps_eff = eps if h["eps_mode"] == "hat" else eps * bc2_sqrt
    return np.array([b1, 1.0 - b1, b2, 1.0 - b2, step_size, eps_eff]).astype(F32)


def exact_adam(p, g, m, v, h, t):
    """The kernel's Adam update (no weight decay) in float32 with an exact divide."""
    sc = scalars(h, t, False)
    with np.errstate(all="ignore"):
        m1 = sc[B1] * m + sc[OMB1] * g
        v1 = sc[B2] * v + sc[OMB2] * (g * g)
        p1 = p - sc[STEP_SIZE] * (m1 / (np.sqrt(v1) + sc[EPS_EFF]))
    return p1, m1, v1


def exact_adamax(p, g, m, u, h, t):
    sc = scalars(h, t, True)
    with np.errstate(all="ignore"):
        m1 = sc[B1] * m + sc[OMB1] * g
        bu = sc[B2] * u
        a = np.abs(g) + sc[EPS_EFF]
        u1 = np.where((a > bu) | np.isnan(a), a, bu).astype(F32)
        p1 = p - sc[STEP_SIZE] * (m1 / u1)
    return p1, m1, u1


def wide(rng, n, lo, hi, *, signed):
    """n float32 values log-uniform in [10**lo, 10**hi] (random sign if ``signed``)."""
    x = (10.0 ** rng.uniform(lo, hi, n)).astype(F32)
    return np.where(rng.random(n) < 0.5, -x, x).astype(F32) if signed else x


SPECIAL_V = np.array([0.0, 1e-45, 3e-45, 1e-42, 1e-40, 1.1754942e-38, 1.1754944e-38,
                      1e-30, 1.0, 1e30, 3.4e38, np.inf, np.nan], F32)
SPECIAL_M = np.array([0.0, -0.0, 1e-45, -1e-40, 1e-38, 1.0, -1.0, 1e30, -3.4e38, np.inf,
                      -np.inf, np.nan], F32)
EPSILONS = [0.0, 1e-45, 1e-40, 1e-38, 1e-30, 1e-16, 1e-8, 1e-4, 0.1, 1.0]


def sweep_inputs(seed, n=40_007):
    """(m, v) pairs: wide log-uniform ranges (v up to 1e30, from denormals), plus every
    pair of special values. n is odd so the vector loops' scalar remainders run too."""
    rng = np.random.default_rng(seed)
    m = wide(rng, n, -45, 30, signed=True)
    v = wide(rng, n, -45, 30, signed=False)
    v[: n // 20] = 0.0
    v[n // 20: n // 10] = wide(rng, n // 10 - n // 20, -45, -38, signed=False)  # denormal
    mm, vv = np.meshgrid(SPECIAL_M, SPECIAL_V)
    return np.concatenate([m, mm.ravel()]), np.concatenate([v, vv.ravel()])


def run_adam(m0, v0, eps, p0=None, lr=1.0):
    """One step through fa.adam_step with g = 0 (so the moments are b1*m0, b2*v0):
    "hat" eps and no bias correction, so eps_eff = eps and step_size = lr."""
    n = m0.size
    p = np.zeros(n, F32) if p0 is None else p0.copy()
    g = np.zeros(n, F32)
    m, v = m0.copy(), v0.copy()
    kw = dict(lr=lr, betas=(0.9, 0.999), eps=eps, bias_correction=False, eps_mode="hat")
    with np.errstate(all="ignore"):
        fa.adam_step(p, g, m, v, step=1, **kw)
    h = hyper_row(lr=lr, beta1=0.9, beta2=0.999, eps=eps, weight_decay=0.0,
                    bias_correction=False, eps_mode="hat")
    ref = exact_adam(np.zeros(n, F32) if p0 is None else p0, g, m0, v0, h, 1)
    return (p, m, v), ref


def run_adamax(m0, u0, eps, g=None, lr=1.0):
    """One AdaMax step at t = 1000 (1 - 0.9**1000 rounds to 1: step_size = lr)."""
    n = m0.size
    p = np.zeros(n, F32)
    g = np.zeros(n, F32) if g is None else g
    m, u = m0.copy(), u0.copy()
    with np.errstate(all="ignore"):
        fa.adamax_step(p, g, m, u, step=1000, lr=lr, betas=(0.9, 0.999), eps=eps)
    h = hyper_row(lr=lr, beta1=0.9, beta2=0.999, eps=eps, weight_decay=0.0)
    return (p, m, u), exact_adamax(np.zeros(n, F32), g, m0, u0, h, 1000)


@pytest.mark.parametrize("eps", EPSILONS)
def test_adam_update_within_2_ulp_of_exact(eps, launch_mode):
    m0, v0 = sweep_inputs(1)
    (p, m, v), (p_ref, m_ref, v_ref) = run_adam(m0, v0, eps)
    assert np.array_equal(m, m_ref, equal_nan=True) and np.array_equal(v, v_ref, equal_nan=True)
    d = ulp_distance(p, p_ref)
    worst = int(np.argmax(d))
    assert d.max() <= 2, (f"{d.max()} ulp at m={m0[worst]!r} v={v0[worst]!r} eps={eps}: "
                          f"{p[worst]!r} vs exact {p_ref[worst]!r}")
    # the non-finite results are exactly the exact path's (NaN, +inf, -inf, and signed 0)
    assert np.array_equal(np.signbit(p[p == 0]), np.signbit(p_ref[p == 0]))


@pytest.mark.parametrize("eps", EPSILONS)
def test_adamax_update_within_2_ulp_of_exact(eps, launch_mode):
    m0, u0 = sweep_inputs(2)
    # kernels/approx.py: denominators above 2**126 (8.5e37) are out of the estimate's
    # range; AdaMax's u gets there only from gradients that large.
    keep = ~(np.isfinite(u0) & (u0 * F32(0.999) > F32(2.0 ** 126)))
    m0, u0 = m0[keep], u0[keep]
    (p, m, u), (p_ref, m_ref, u_ref) = run_adamax(m0, u0, eps)
    assert np.array_equal(m, m_ref, equal_nan=True) and np.array_equal(u, u_ref, equal_nan=True)
    d = ulp_distance(p, p_ref)
    worst = int(np.argmax(d))
    assert d.max() <= 2, (f"{d.max()} ulp at m={m0[worst]!r} u={u0[worst]!r} eps={eps}: "
                          f"{p[worst]!r} vs exact {p_ref[worst]!r}")
    assert np.array_equal(np.signbit(p[p == 0]), np.signbit(p_ref[p == 0]))


def within_2_ulp_of_update(p, p_ref, p0):
    """|p - p_ref| <= 2 ulp of the exact update u = p0 - p_ref, plus 1 ulp of p_ref for
    the final rounding. (Where p0 and u nearly cancel, p_ref is small and 1 ulp of u is
    many ulps of p_ref: no division short of the exact one keeps those ulps.)"""
    with np.errstate(all="ignore"):
        u = np.abs(p0.astype(np.float64) - p_ref)
        tol = 2 * np.spacing(u.astype(F32)) + np.spacing(np.abs(p_ref))
        return np.abs(p.astype(np.float64) - p_ref) <= tol


def test_realistic_steps_within_2_ulp():
    """Random parameters, gradients and warm moments at a usual learning rate, with
    bias correction ("paper" eps): each parameter moves by the exact path's update to
    within 2 ulp of that update."""
    rng = np.random.default_rng(3)
    n = 100_003
    p0 = rng.standard_normal(n).astype(F32)
    g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 2, n)).astype(F32)
    m0 = (0.1 * rng.standard_normal(n)).astype(F32)
    v0 = (rng.random(n) * 10.0 ** rng.uniform(-12, 2, n)).astype(F32)
    for t in (1, 10, 10_000):
        p, m, v = p0.copy(), m0.copy(), v0.copy()
        fa.adam_step(p, g, m, v, step=t, lr=1e-3)
        h = hyper_row(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
        p_ref, _, _ = exact_adam(p0, g, m0, v0, h, t)
        assert within_2_ulp_of_update(p, p_ref, p0).all()
        p, m, u = p0.copy(), m0.copy(), np.abs(v0)
        fa.adamax_step(p, g, m, u, step=t)
        h = hyper_row(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
        p_ref, _, _ = exact_adamax(p0, g, m0, np.abs(v0), h, t)
        assert within_2_ulp_of_update(p, p_ref, p0).all()


def test_estimate_is_used_where_available():
    if os.environ.get("FASTADAM_EXACT", "").strip() not in ("", "0"):
        assert approx.MODE == "exact"
    elif approx._host_has_estimates():
        assert approx.MODE == "estimate"
    else:
        assert approx.MODE == "exact"


def test_div_python_and_float64_are_exact():
    from numba import njit

    @njit(error_model="numpy")
    def f(a, b):
        return approx.div(a, b, 0.0)

    a = np.array([1.0, -3.0, 0.0, np.inf, 7.0])
    b = np.array([3.0, 7.0, 0.0, 2.0, 0.0])
    with np.errstate(all="ignore"):
        expect = a / b
    assert np.array_equal(np.array([f(x, y) for x, y in zip(a, b)]), expect, equal_nan=True)
    assert approx.div(1.0, 4.0, 1.0) == 0.25


def test_float32_division_edges_are_ieee():
    """approx.div on float32 where the refinement breaks down (b = +-0, inf, NaN) and
    out of the estimate's range gives exactly IEEE's a / b (the fix-up that replaces the
    NaN correction term; kernels/approx.py)."""
    from numba import njit

    @njit(error_model="numpy")
    def f(a, b, lo):
        out = np.empty(a.size, F32)
        for i in range(a.size):
            out[i] = approx.div(a[i], b[i], lo)
        return out

    a_vals = np.array([0.0, -0.0, 1.0, -3.0, 1e-45, 3e38, np.inf, -np.inf, np.nan], F32)
    b_vals = np.array([0.0, -0.0, np.inf, np.nan, 1.0, 2.0 ** -64, 2.0 ** 64], F32)
    aa, bb = (x.ravel() for x in np.meshgrid(a_vals, b_vals))
    with np.errstate(all="ignore"):
        expect = aa / bb
    for lo in (F32(0.0), F32(1e-8)):
        keep = ~((bb > 0) & (bb < lo))         # b >= lo, or b = 0 / inf / NaN
        got = f(aa[keep], bb[keep], lo)
        assert np.array_equal(got, expect[keep], equal_nan=True), (lo, got, expect[keep])
        z = expect[keep] == 0
        assert np.array_equal(np.signbit(got[z]), np.signbit(expect[keep][z]))


EXACT_PROBE = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1] + "/tests")
import test_approx as T
from fastadam.kernels import approx
res = {"mode": approx.MODE, "adam": [], "adamax": []}
for eps in T.EPSILONS:
    m0, v0 = T.sweep_inputs(4)
    (p, m, v), (p_ref, m_ref, v_ref) = T.run_adam(m0, v0, eps)
    res["adam"].append(bool(np.array_equal(p.view(np.int32), p_ref.view(np.int32))))
    (p, m, u), (p_ref, m_ref, u_ref) = T.run_adamax(m0, v0, eps)
    res["adamax"].append(bool(np.array_equal(p.view(np.int32), p_ref.view(np.int32))))
print(json.dumps(res))
"""


def test_exact_env_is_bit_identical_and_not_served_from_cache():
    # compile (and cache) the default path's kernels in this process first
    m0, v0 = sweep_inputs(4, n=101)
    run_adam(m0, v0, 1e-8)
    run_adamax(m0, v0, 1e-8)
    env = dict(os.environ, FASTADAM_EXACT="1", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", EXACT_PROBE, ROOT], env=env,
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["mode"] == "exact"
    assert all(out["adam"]), out
    assert all(out["adamax"]), out


ASM_PROBE = r"""
import json, re
import numpy as np
from fastadam.kernels import approx, registry
from fastadam.kernels.launch import build_launchers
from fastadam.kernels.spec import N_GROUP_SCALARS, N_HYPER
out = {"mode": approx.MODE}
for name in ("adam", "adamax"):
    alg = registry.get(name)
    for i, kern in enumerate(build_launchers(alg.id, 0, 2, 0, False, False)[:2]):
        a = np.zeros(64, np.float32)
        kern(a, a.copy(), a.copy(), a.copy() + 1, a[:0], a[:0], np.zeros(N_HYPER), 1,
             np.ones(N_GROUP_SCALARS))
        asm = "\n".join(kern.inspect_asm().values())
        out[f"{name}-{i}"] = {
            "rcp": sorted(set(re.findall(r"\b(v?rcp(?:14)?p[sd])\s+[^\n]*?%([xyz])mm", asm))),
            "div": len(re.findall(r"\bv?divps\b", asm)),
            "sqrt": len(re.findall(r"\bv?sqrtps\b", asm)),
            "min": len(re.findall(r"\bv?minps\b", asm)),
        }
print(json.dumps(out))
"""


@pytest.mark.parametrize("exact", [False, True], ids=["default", "FASTADAM_EXACT"])
def test_hot_loop_instructions(tmp_path, exact):
    """In a fresh process with an empty cache (inspect_asm needs a compiled kernel)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=ROOT)
    env.pop("FASTADAM_EXACT", None)
    if exact:
        env["FASTADAM_EXACT"] = "1"
    res = subprocess.run([sys.executable, "-c", ASM_PROBE], env=env, capture_output=True,
                         text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    fast = not exact and approx._host_has_estimates()
    assert out["mode"] == ("estimate" if fast else "exact")
    for key in ("adam-0", "adam-1", "adamax-0", "adamax-1"):
        r = out[key]
        if key.startswith("adam-"):
            assert r["sqrt"] > 0, (key, r)            # the exact square root stays
        if fast and key.startswith("adam-"):
            # a packed (ymm or zmm) reciprocal estimate and no packed divide
            assert any(w in "yz" for _, w in r["rcp"]), (key, r)
            assert r["div"] == 0, (key, r)
            assert r["min"] > 0, (key, r)     # the NaN fix-up is one vminps
        else:   # AdaMax keeps the exact divide (the estimate measured slower there)
            assert r["rcp"] == [] and r["div"] > 0, (key, r)
