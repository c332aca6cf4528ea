"""fastadam.adam_step against the float64 reference, for every flag combination."""
import itertools

import numpy as np
import pytest

import fastadam as fa
from conftest import DTYPES, make_state
from reference import adam_error_scale, adam_reference

FLAGS = [dict(weight_decay=wd, decoupled=dec, amsgrad=ams, maximize=mx,
              bias_correction=bc, eps_mode=mode)
         for wd, dec, ams, mx, bc, mode in itertools.product(
             [0.0, 0.1], [False, True], [False, True], [False, True], [True, False],
             ["paper", "hat"])
         if not (wd == 0.0 and dec)]
FLAG_IDS = ["wd{weight_decay}-{d}-{a}-{m}-{b}-{eps_mode}".format(
    d="dec" if f["decoupled"] else "l2", a="ams" if f["amsgrad"] else "noams",
    m="max" if f["maximize"] else "min", b="bc" if f["bias_correction"] else "nobc", **f)
    for f in FLAGS]
SIZES = [0, 1, 7, 1000, 40000]   # empty, single element, odd tail, in-cache, multi-block


def call(p, g, m, v, vmax, step, flags, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    fa.adam_step(p, g, m, v, step=step, lr=lr, betas=betas, eps=eps,
                 weight_decay=flags["weight_decay"],
                 decoupled_weight_decay=flags["decoupled"], amsgrad=flags["amsgrad"],
                 max_exp_avg_sq=vmax, maximize=flags["maximize"],
                 bias_correction=flags["bias_correction"], eps_mode=flags["eps_mode"])


@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
@pytest.mark.parametrize("n", [1, 1000, 40000])
def test_float64_matches_reference_over_100_steps(flags, n, launch_mode):
    rng = np.random.default_rng(n)
    p, _, m, v, vmax = make_state(rng, n, np.float64, amsgrad=flags["amsgrad"], warm=False)
    rp, rm, rv, rvmax = p.copy(), m.copy(), v.copy(), None if vmax is None else vmax.copy()
    for t in range(1, 101):
        g = rng.standard_normal(n) * (1 + t % 7)
        call(p, g, m, v, vmax, t, flags, lr=0.01)
        rp, rm, rv, rvmax = adam_reference(rp, g, rm, rv, rvmax, step=t, lr=0.01, **flags)
    # Relative 1e-12 of each array's scale: elements that pass near zero carry the
    # absolute rounding of their larger past values, so a pure elementwise rtol is not
    # meaningful for them.
    for name, got, want in [("param", p, rp), ("exp_avg", m, rm), ("exp_avg_sq", v, rv)]:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max(),
                                   err_msg=name)
    if flags["amsgrad"]:
        np.testing.assert_allclose(vmax, rvmax, rtol=1e-12, atol=1e-12 * rvmax.max())


@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
@pytest.mark.parametrize("n", SIZES)
def test_float32_step_within_few_ulp_of_float64_step(flags, n, launch_mode):
    rng = np.random.default_rng(1000 + n)
    u = np.finfo(np.float32).eps
    p, g, m, v, vmax = make_state(rng, n, np.float32, amsgrad=flags["amsgrad"])
    for t in (1, 2, 10, 1000):
        hyper = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8)
        rp, rm, rv, rvmax = adam_reference(p, g, m, v, vmax, step=t, **hyper, **flags)
        m_terms, v_terms = adam_error_scale(p, g, m, v, **hyper,
                                            weight_decay=flags["weight_decay"])
        p0 = p.astype(np.float64)
        call(p, g, m, v, vmax, t, flags, **hyper)
        assert p.dtype == m.dtype == v.dtype == np.float32
        np.testing.assert_array_less(np.abs(m - rm), 4 * u * m_terms + 1e-45, err_msg="exp_avg")
        np.testing.assert_array_less(np.abs(v - rv), 4 * u * v_terms + 1e-45, err_msg="exp_avg_sq")
        # p = p - delta: rounding of p itself plus the propagated relative error of delta
        # (from m, v, the sqrt and the division), each a few u.
        delta = np.abs(p0 - rp)
        tol = 4 * u * (np.abs(p0) + delta) + 8 * u * delta * (1 + m_terms / (np.abs(rm) + 1e-300))
        np.testing.assert_array_less(np.abs(p - rp), tol + 1e-45, err_msg="param")
        g = rng.standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_updates_in_place_and_returns_none(dtype):
    p, g, m, v, _ = make_state(np.random.default_rng(0), 10, dtype)
    ids = [x.ctypes.data for x in (p, m, v)]
    before = p.copy()
    assert fa.adam_step(p, g, m, v, step=1) is None
    assert [x.ctypes.data for x in (p, m, v)] == ids
    assert not np.array_equal(p, before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_first_step_moves_each_param_by_lr_against_gradient_sign(dtype):
    # Paper, section 2.1: with bias correction the first effective step is ~lr*sign(g).
    p = np.zeros(5, dtype)
    g = np.array([3.0, -2.0, 1e-3, -1e3, 0.5], dtype)
    fa.adam_step(p, g, np.zeros_like(p), np.zeros_like(p), step=1, lr=0.1)
    # Exactly -lr * g / (|g| + eps): short of lr by at most eps / min|g| = 1e-5 relative.
    np.testing.assert_allclose(p, -0.1 * np.sign(g), rtol=1e-8 / 1e-3 + 1e-6)
    assert np.all(np.abs(p) <= 0.1 * (1 + 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_nan_and_inf_gradients_propagate_like_reference(dtype, amsgrad):
    g = np.array([np.nan, np.inf, -np.inf, 1.0], dtype)
    p = np.ones(4, dtype)
    m, v = np.zeros(4, dtype), np.zeros(4, dtype)
    vmax = np.zeros(4, dtype) if amsgrad else None
    with np.errstate(invalid="ignore"):      # inf - inf in the reference is the point
        rp, rm, rv, rvmax = adam_reference(p, g, m, v, vmax, step=1, amsgrad=amsgrad)
        fa.adam_step(p, g, m, v, step=1, amsgrad=amsgrad, max_exp_avg_sq=vmax)
    np.testing.assert_array_equal(np.isnan(p), np.isnan(rp))
    np.testing.assert_array_equal(np.isnan(v), np.isnan(rv))
    if amsgrad:
        np.testing.assert_array_equal(np.isnan(vmax), np.isnan(rvmax))
    assert np.isfinite(p[3])


def test_amsgrad_nan_in_v_reaches_max_buffer():
    # vmax = max(vmax, v) must propagate NaN (torch.maximum does); a plain comparison
    # would keep the old vmax.
    p, m = np.ones(2), np.zeros(2)
    v = np.array([np.nan, 1.0])
    vmax = np.array([5.0, 5.0])
    fa.adam_step(p, np.ones(2), m, v, step=3, amsgrad=True, max_exp_avg_sq=vmax)
    assert np.isnan(vmax[0]) and vmax[1] == 5.0


def test_parallel_and_serial_results_are_bit_identical(monkeypatch):
    from fastadam import config
    rng = np.random.default_rng(5)
    base = make_state(rng, 100_003, np.float32, amsgrad=True)
    out = []
    for threshold in (1 << 62, 0):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", threshold)
        p, g, m, v, vmax = (x.copy() for x in base)
        for t in range(1, 4):
            fa.adam_step(p, g, m, v, step=t, amsgrad=True, max_exp_avg_sq=vmax, weight_decay=0.1)
        out.append((p, m, v, vmax))
    for a, b in zip(*out):
        assert np.array_equal(a, b)
