"""AdaMax (paper 7.1) and temporal averaging (paper 7.2) against the float64 reference
and torch.optim.Adamax."""
import itertools

import numpy as np
import pytest

import fastadam as fa
from conftest import DTYPES
from reference import adamax_reference, average_reference

ADAMAX_FLAGS = [dict(weight_decay=wd, maximize=mx) for wd, mx in
                itertools.product([0.0, 0.1], [False, True])]


@pytest.mark.parametrize("flags", ADAMAX_FLAGS, ids=lambda f: f"wd{f['weight_decay']}-max{f['maximize']}")
@pytest.mark.parametrize("n", [0, 1, 1000, 40000])
def test_adamax_step_float64_matches_reference_over_100_steps(flags, n, launch_mode):
    rng = np.random.default_rng(n)
    p = rng.standard_normal(n)
    m, u = np.zeros(n), np.zeros(n)
    rp, rm, ru = p.copy(), m.copy(), u.copy()
    for t in range(1, 101):
        g = rng.standard_normal(n) * (1 + t % 5)
        fa.adamax_step(p, g, m, u, step=t, lr=0.01, **flags)
        rp, rm, ru = adamax_reference(rp, g, rm, ru, step=t, lr=0.01, **flags)
    for got, want in [(p, rp), (m, rm), (u, ru)]:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max(initial=1))


@pytest.mark.parametrize("flags", ADAMAX_FLAGS, ids=lambda f: f"wd{f['weight_decay']}-max{f['maximize']}")
def test_adamax_float32_step_within_few_ulp_of_float64(flags, launch_mode):
    rng = np.random.default_rng(7)
    n, u32 = 5000, np.finfo(np.float32).eps
    p = rng.standard_normal(n).astype(np.float32)
    m = (0.1 * rng.standard_normal(n)).astype(np.float32)
    u = rng.random(n).astype(np.float32)
    for t in (1, 3, 100):
        g = rng.standard_normal(n).astype(np.float32)
        rp, rm, ru = adamax_reference(p, g, m, u, step=t, lr=0.01, **flags)
        p0, m0 = p.astype(np.float64), m.astype(np.float64)
        gt = np.abs(g.astype(np.float64)) + flags["weight_decay"] * np.abs(p0)
        fa.adamax_step(p, g, m, u, step=t, lr=0.01, **flags)
        m_terms = 0.9 * np.abs(m0) + 0.1 * gt
        np.testing.assert_array_less(np.abs(m - rm), 4 * u32 * m_terms + 1e-45)
        np.testing.assert_array_less(np.abs(u - ru), 4 * u32 * ru)
        delta = np.abs(p0 - rp)
        tol = 4 * u32 * (np.abs(p0) + delta) + 8 * u32 * delta * (1 + m_terms / (np.abs(rm) + 1e-300))
        np.testing.assert_array_less(np.abs(p - rp), tol + 1e-45)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamax_object_matches_reference(dtype, launch_mode):
    rng = np.random.default_rng(2)
    shapes = [(3, 4), (0,), (1,), (50,)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ref = [[p.astype(np.float64), np.zeros(s), np.zeros(s)] for p, s in zip(params, shapes)]
    opt = fa.Adamax(params, lr=0.01, weight_decay=0.05)
    for t in range(1, 21):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        opt.step(grads)
        for r, g in zip(ref, grads):
            r[:] = adamax_reference(*r[:1], g, *r[1:], step=t, lr=0.01, weight_decay=0.05)
    for p, r in zip(params, ref):
        if dtype == np.float64:
            np.testing.assert_allclose(p, r[0], rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_array_less(np.abs(p - r[0]),
                                         4 * 20 * np.finfo(np.float32).eps * np.maximum(np.abs(r[0]), 1e-2))
    assert set(opt.state[0]) == {"step", "exp_avg", "exp_inf"}
    assert opt.defaults["lr"] == 0.01 and fa.Adamax([np.zeros(1)]).defaults["lr"] == 2e-3


def test_adamax_rejects_adam_only_options():
    with pytest.raises(TypeError):
        fa.Adamax([np.zeros(2)], amsgrad=True)
    with pytest.raises(ValueError, match="Invalid beta"):
        fa.Adamax([np.zeros(2)], betas=(0.9, 1.0))


def test_adamax_nan_gradient_propagates_like_torch_amax():
    p, m, u = np.ones(2), np.zeros(2), np.array([5.0, 5.0])
    with np.errstate(invalid="ignore"):
        fa.adamax_step(p, np.array([np.nan, 1.0]), m, u, step=2)
    assert np.isnan(u[0]) and u[1] == 0.999 * 5.0 and np.isnan(p[0]) and np.isfinite(p[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kw", [(fa.Adam, dict(amsgrad=True)), (fa.AdamW, {}), (fa.Adamax, {})])
def test_temporal_average_matches_reference_and_is_bias_corrected(cls, kw, dtype, launch_mode):
    rng = np.random.default_rng(3)
    shapes = [(4, 5), (7,)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    plain = [p.copy() for p in params]
    beta = 0.9
    opt = cls(params, lr=0.05, average=beta, **kw)
    twin = cls(plain, lr=0.05, **kw)          # averaging must not change the trajectory
    first = [p.astype(np.float64) for p in params]
    assert all(np.array_equal(a, p) for a, p in zip(opt.averaged_params(), params))
    pbar = [np.zeros(s) for s in shapes]
    for t in range(1, 31):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        opt.step(grads)
        twin.step(grads)
        pbar = [average_reference(pb, p, beta) for pb, p in zip(pbar, params)]
    for p, q in zip(params, plain):
        assert np.array_equal(p, q)
    got = opt.averaged_params()
    for a, pb, p in zip(got, pbar, params):
        assert a.dtype == dtype and a.shape == p.shape
        want = pb / (1 - beta ** 30)
        rtol = 1e-12 if dtype == np.float64 else 30 * 4 * np.finfo(np.float32).eps
        np.testing.assert_allclose(a, want, rtol=rtol, atol=rtol * np.abs(want).max())
    # bias correction: after one step the average is exactly the parameter
    opt1 = cls([f.astype(dtype) for f in first], lr=0.05, average=beta, **kw)
    opt1.step([np.ones(s, dtype) for s in shapes])
    for a, p in zip(opt1.averaged_params(), opt1._params):
        np.testing.assert_allclose(a, p, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_average_is_checkpointed_and_resumes_bit_for_bit(tmp_path):
    rng = np.random.default_rng(4)
    grads = [[rng.standard_normal(5)] for _ in range(6)]
    a = [np.zeros(5)]
    opt = fa.Adam(a, lr=0.1, average=0.99)
    for g in grads[:3]:
        opt.step(g)
    opt.save(tmp_path / "c.npz")
    b = [a[0].copy()]
    for g in grads[3:]:
        opt.step(g)
    opt2 = fa.Adam(b, lr=0.1, average=0.99)
    opt2.load(tmp_path / "c.npz")
    for g in grads[3:]:
        opt2.step(g)
    assert np.array_equal(a[0], b[0])
    assert np.array_equal(opt.averaged_params()[0], opt2.averaged_params()[0])
    assert "param_avg" in opt.state_dict()["state"][0]
    other = fa.Adam([np.zeros(5)], average=0.5)
    with pytest.raises(ValueError, match="average"):
        other.load_state_dict(opt.state_dict())


def test_averaged_params_without_average_is_an_error():
    with pytest.raises(ValueError, match="average=beta"):
        fa.Adam([np.zeros(2)]).averaged_params()
    with pytest.raises(ValueError, match="Invalid average"):
        fa.Adam([np.zeros(2)], average=1.0)


def test_averaging_runs_inside_the_update_kernel():
    # One launch per step whether or not averaging is on: no second pass over memory.
    opt = fa.Adam([np.zeros(10, np.float32)], average=0.9)
    opt.step()
    (b, L), = opt._launches
    from fastadam.kernels import registry
    # (algorithm, variant, state rows, weight decay mode, scale_grad, average)
    assert L.key == (registry.get("adam").id, 0, 2, 0, False, True)
    assert b.state.shape[0] == 3   # m, v, average: one state block


torch = None
try:
    import torch
except ImportError:
    pass


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h", [dict(lr=1e-2), dict(lr=2e-3, weight_decay=0.1),
                               dict(lr=1e-2, maximize=True, betas=(0.8, 0.99))],
                         ids=["plain", "wd", "maximize"])
def test_adamax_matches_torch_over_100_steps(h, dtype, launch_mode):
    rng = np.random.default_rng(0)
    shapes = [(6, 5), (40,)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ours = [x.copy() for x in init]
    theirs = [torch.tensor(x.copy(), requires_grad=True) for x in init]
    opt, topt = fa.Adamax(ours, **h), torch.optim.Adamax(theirs, **h)
    for t in range(100):
        grads = [(rng.standard_normal(s) * (1 + t % 4)).astype(dtype) for s in shapes]
        opt.step(grads)
        for tp, g in zip(theirs, grads):
            tp.grad = torch.from_numpy(g.copy())
        topt.step()
    for i, (a, tp) in enumerate(zip(ours, theirs)):
        b = tp.detach().numpy()
        if dtype == np.float64:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())
            np.testing.assert_allclose(opt.state[i]["exp_inf"], topt.state[tp]["exp_inf"].numpy(),
                                       rtol=1e-12)
        else:
            tol = 4 * 100 * np.finfo(np.float32).eps * np.maximum(np.abs(b), 1e-2)
            np.testing.assert_array_less(np.abs(a - b), tol)
