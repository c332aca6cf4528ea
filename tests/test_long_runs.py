"""Long runs and extremes: 1e6 steps without bias-correction drift, tiny and huge
gradients in both precisions, no memory growth, and exact resume in another process."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastadam as fa
from reference import adam_reference

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fa.__file__)))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def test_a_million_steps_have_no_bias_correction_drift():
    """With a constant gradient g, exact arithmetic gives m_t = g(1-b1**t),
    v_t = g**2 (1-b2**t), so every bias-corrected step is lr*g/(|g|+eps) and
    p_T = p_0 - T*lr*g/(|g|+eps). A running product for b**t (or a float step count)
    would drift from this over 1e6 steps; pow on the integer t does not."""
    T, lr, b1, b2, eps = 1_000_000, 1e-6, 0.9, 0.999, 1e-8
    g = np.array([0.5, -2.0, 1e-3, 3.0])
    params = [np.zeros(4)]
    opt = fa.Adam(params, lr=lr, betas=(b1, b2), eps=eps)
    opt.grads[0][...] = g
    step = opt.step
    for _ in range(T):
        step()
    st = opt.state[0]
    assert st["step"] == T
    np.testing.assert_allclose(st["exp_avg"], g * (1 - b1 ** T), rtol=1e-12)
    np.testing.assert_allclose(st["exp_avg_sq"], g * g * (1 - b2 ** T), rtol=1e-12)
    np.testing.assert_allclose(params[0], -T * lr * g / (np.abs(g) + eps), rtol=1e-9)
    # and step T+1 equals the reference evaluated at the same integer t
    p, m, v = params[0].copy(), st["exp_avg"].copy(), st["exp_avg_sq"].copy()
    rp, rm, rv, _ = adam_reference(p, g, m, v, step=T + 1, lr=lr, betas=(b1, b2), eps=eps)
    step()
    np.testing.assert_allclose(params[0], rp, rtol=1e-12, atol=1e-12 * np.abs(rp).max())


def adam_reference_in(dtype, p, g, m, v, *, step, lr, betas, eps):
    """The reference formula evaluated in ``dtype`` arithmetic (scalars in float64, then
    rounded, as fastadam does), so float32 overflow/underflow of g*g appears as in the
    kernel: for |g| = 1e30, g*g = inf in float32 (v = inf, the update is 0 or NaN); for
    |g| = 1e-30, g*g underflows to 0 and the step is lr/bc1 * m / eps."""
    b1, b2 = betas
    bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
    c = lambda x: dtype(x)   # noqa: E731
    m = c(b1) * m + c(1 - b1) * g
    v = c(b2) * v + c(1 - b2) * g * g
    step_size = c(lr * np.sqrt(bc2) / bc1)
    return p - step_size * (m / (np.sqrt(v) + c(eps * np.sqrt(bc2)))), m, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_tiny_and_huge_gradients_behave_as_the_reference(dtype, scale):
    """float64: equal to the float64 reference (1e-12). float32: 1e30**2 overflows to inf
    and 1e-30**2 underflows to 0 in float32, where the float64 reference does neither, so
    the float32 result is compared with the reference evaluated in float32 arithmetic
    (and, where both are finite and in range, with the float64 reference's sign)."""
    rng = np.random.default_rng(0)
    g0 = (scale * rng.uniform(0.5, 2.0, 8) * np.where(rng.random(8) < 0.5, -1, 1))
    params = [np.zeros(8, dtype)]
    opt = fa.Adam(params, lr=1e-3)
    p, m, v = (np.zeros(8, dtype) for _ in range(3))
    rp64, rm64, rv64 = np.zeros(8), np.zeros(8), np.zeros(8)
    for t in range(1, 6):
        g = (g0 * (1 + 0.1 * t)).astype(dtype)
        with np.errstate(all="ignore"):
            opt.step([g])
            p, m, v = adam_reference_in(dtype, p, g, m, v, step=t, lr=1e-3,
                                        betas=(0.9, 0.999), eps=1e-8)
            rp64, rm64, rv64, _ = adam_reference(rp64, g, rm64, rv64, step=t, lr=1e-3)
    st = opt.state[0]
    if dtype == np.float64:
        np.testing.assert_allclose(params[0], rp64, rtol=1e-12)
        np.testing.assert_allclose(st["exp_avg_sq"], rv64, rtol=1e-12)
        return
    u = np.finfo(np.float32).eps
    for name, got, want in [("param", params[0], p), ("exp_avg", st["exp_avg"], m),
                            ("exp_avg_sq", st["exp_avg_sq"], v)]:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=name)
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], rtol=16 * u, atol=0, err_msg=name)
    if scale == 1e30:
        assert np.all(np.isinf(st["exp_avg_sq"])), "g*g overflows float32: v = inf"
    else:
        assert np.all(st["exp_avg_sq"] == 0), "g*g underflows float32: v = 0"
        assert np.all(np.sign(params[0]) == np.sign(rp64))


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_no_memory_growth_over_many_steps_and_constructions(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import memory_growth
    finally:
        sys.path.pop(0)
    r0, r1, r2 = memory_growth.measure(steps=100_000, constructions=500,
                                       save_path=str(tmp_path / "c.npz"))
    mib = 2**20
    print(f"RSS growth: {(r1 - r0) / mib:+.2f} MiB over 100000 steps, "
          f"{(r2 - r1) / mib:+.2f} MiB over 500 constructions with save/load")
    # A leak of even one 8-byte object per step would be 0.8 MB; allow allocator noise.
    assert r1 - r0 < 4 * mib, f"steps grew RSS by {(r1 - r0) / mib:.1f} MiB"
    assert r2 - r1 < 8 * mib, f"constructions grew RSS by {(r2 - r1) / mib:.1f} MiB"


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import fastadam as fa
    sys.path.insert(0, sys.argv[3])
    from test_long_runs import grads_for, make_params
    path, k = sys.argv[1], int(sys.argv[2])
    params = make_params()
    opt = fa.AdamW([{"params": params[:2], "amsgrad": True}, {"params": params[2:], "lr": 0.05}],
                   lr=0.01, weight_decay=0.1)
    for t in range(k):
        opt.step(grads_for(params, t))
    opt.save(path)
    np.savez(path + ".params.npz", *params)
""")


def make_params():
    rng = np.random.default_rng(42)
    return [rng.standard_normal(s).astype(d) for s, d in
            [((3, 4), np.float32), ((5,), np.float64), ((7,), np.float32)]]


def grads_for(params, t):
    rng = np.random.default_rng(1000 + t)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def test_resume_from_a_checkpoint_written_by_another_process_is_bit_exact(tmp_path):
    k, total = 7, 15
    path = str(tmp_path / "c.npz")
    subprocess.run([sys.executable, "-c", CHILD, path, str(k), HERE], env=ENV, check=True,
                   timeout=300)
    with np.load(path + ".params.npz", allow_pickle=False) as z:
        resumed = [z[f"arr_{i}"].copy() for i in range(3)]
    opt = fa.AdamW([{"params": resumed[:2], "amsgrad": True}, {"params": resumed[2:]}],
                   lr=0.5)                       # hyperparameters come from the file
    opt.load(path)
    for t in range(k, total):
        opt.step(grads_for(resumed, t))
    params = make_params()
    ref = fa.AdamW([{"params": params[:2], "amsgrad": True}, {"params": params[2:], "lr": 0.05}],
                   lr=0.01, weight_decay=0.1)
    for t in range(total):
        ref.step(grads_for(params, t))
    for a, b in zip(resumed, params):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    for i in range(3):
        for key in ("exp_avg", "exp_avg_sq"):
            assert np.array_equal(opt.state[i][key], ref.state[i][key])
        assert opt.state[i]["step"] == total
