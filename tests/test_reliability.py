"""nonfinite="propagate" | "skip" | "raise", max_grad_norm clipping (vs torch's
clip_grad_norm_ + step), norm determinism, copying and pickling."""
import copy
import pickle

import numpy as np
import pytest

import fastadam as fa
from conftest import DTYPES
from reference import adam_reference, clip_coef_reference


def setup(dtype=np.float32, **kw):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal(5).astype(dtype)]
    opt = fa.Adam(params, lr=0.1, amsgrad=True, **kw)
    opt.step([np.ones((4, 3), dtype), np.ones(5, dtype)])
    return params, opt


def everything(params, opt):
    sd = opt.state_dict()
    out = [p.copy() for p in params]
    for st in sd["state"].values():
        out += [v for v in st.values() if isinstance(v, np.ndarray)]
    return out, [st["step"] for st in sd["state"].values()]


def same(a, b):
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a[0], b[0])) and a[1] == b[1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("use_opt_grads", [False, True])
def test_skip_leaves_everything_bit_identical_and_counts(dtype, bad, use_opt_grads, launch_mode):
    params, opt = setup(dtype, nonfinite="skip")
    before = everything(params, opt)
    grads = [np.ones((4, 3), dtype), np.ones(5, dtype)]
    grads[1][2] = bad
    if use_opt_grads:
        for buf, g in zip(opt.grads, grads):
            buf[...] = g
        opt.step()
    else:
        opt.step(grads)
    assert same(before, everything(params, opt))
    assert opt.skipped_steps == 1
    grads[1][2] = 1.0
    opt.step(grads)
    assert opt.state[0]["step"] == 2 and opt.skipped_steps == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_raise_names_the_gradient_and_changes_nothing(dtype, launch_mode):
    params, opt = setup(dtype, nonfinite="raise")
    before = everything(params, opt)
    grads = [np.ones((4, 3), dtype), np.ones(5, dtype)]
    grads[0][1, 1] = np.nan
    with pytest.raises(ValueError, match=r"grads\[0\] contains NaN or inf"):
        opt.step(grads)
    assert same(before, everything(params, opt))


def test_propagate_is_the_default_and_matches_torch_semantics():
    params, opt = setup()
    assert opt.nonfinite == "propagate"
    grads = [np.ones((4, 3), np.float32), np.ones(5, np.float32)]
    grads[1][0] = np.nan
    opt.step(grads)
    assert np.isnan(params[1][0]) and np.isfinite(params[1][1:]).all()


def test_huge_but_finite_float64_gradients_are_not_mistaken_for_nonfinite():
    # Their squares overflow float64; the exact check must still see finite values.
    p = [np.zeros(3)]
    opt = fa.Adam(p, lr=0.1, nonfinite="raise", max_grad_norm=1.0)
    opt.step([np.array([1e200, -1e200, 0.0])])
    assert np.isfinite(p[0]).all() and opt.state[0]["step"] == 1
    np.testing.assert_allclose(opt.last_grad_norms[0], np.sqrt(2) * 1e200, rtol=1e-12)


def test_invalid_nonfinite_mode():
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        fa.Adam([np.zeros(2)], nonfinite="ignore")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm", [0.5, 1e6])   # clipping active / inactive
def test_clipping_matches_reference_per_group(dtype, max_norm, launch_mode):
    rng = np.random.default_rng(1)
    a = [rng.standard_normal(s).astype(dtype) for s in [(6,), (2, 3)]]
    b = [rng.standard_normal(4).astype(dtype)]
    opt = fa.Adam([{"params": a, "max_grad_norm": max_norm}, {"params": b}], lr=0.01)
    ref = [x.astype(np.float64) for x in a + b]
    ms = [np.zeros(x.shape) for x in ref]
    vs = [np.zeros(x.shape) for x in ref]
    for t in range(1, 11):
        grads = [(rng.standard_normal(x.shape) * 3).astype(dtype) for x in a + b]
        opt.step(grads)
        coef, norm = clip_coef_reference(grads[:2], max_norm)
        np.testing.assert_allclose(opt.last_grad_norms[0], norm, rtol=1e-12)
        assert opt.last_grad_norms[1] is None or opt.last_grad_norms[1] > 0
        for i, g in enumerate(grads):
            g64 = g.astype(np.float64) * (coef if i < 2 else 1.0)
            ref[i], ms[i], vs[i], _ = adam_reference(ref[i], g64, ms[i], vs[i], step=t, lr=0.01)
    for x, r in zip(a + b, ref):
        if dtype == np.float64:
            np.testing.assert_allclose(x, r, rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_array_less(np.abs(x - r), 4 * 10 * 1.2e-7 * np.maximum(np.abs(r), 1e-2))


def test_grad_norm_is_identical_for_any_thread_count(monkeypatch):
    from fastadam import config
    rng = np.random.default_rng(2)
    sizes = [100_000, 37, 65_536]
    g = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    norms = []
    for threshold, threads in [(1 << 62, 1), (0, 1), (0, 2)]:
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", threshold)
        with fa.threads(min(threads, fa.config.numba.config.NUMBA_NUM_THREADS)):
            opt = fa.Adam([np.zeros(n, np.float32) for n in sizes], max_grad_norm=1.0)
            opt.step(g)
            norms.append(opt.last_grad_norms[0])
    assert norms[0] == norms[1] == norms[2]
    np.testing.assert_allclose(norms[0], np.sqrt(sum((x.astype(np.float64) ** 2).sum() for x in g)),
                               rtol=1e-12)


def test_invalid_max_grad_norm():
    for bad, exc in [(0.0, ValueError), (-1.0, ValueError), (np.nan, ValueError), ("1", TypeError)]:
        with pytest.raises(exc, match="max_grad_norm"):
            fa.Adam([np.zeros(2)], max_grad_norm=bad)


torch = pytest.importorskip("torch") if False else None
try:
    import torch
except ImportError:
    torch = None


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("cls,tcls", [("Adam", "Adam"), ("AdamW", "AdamW")])
def test_clipping_matches_torch_clip_grad_norm_then_step(cls, tcls):
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s) for s in [(5, 4), (7,)]]
    ours = [x.copy() for x in init]
    theirs = [torch.tensor(x.copy(), requires_grad=True) for x in init]
    opt = getattr(fa, cls)(ours, lr=0.01, max_grad_norm=2.0)
    topt = getattr(torch.optim, tcls)(theirs, lr=0.01)
    for t in range(50):
        grads = [rng.standard_normal(x.shape) * (0.1 + t % 4) for x in init]
        opt.step(grads)
        for tp, g in zip(theirs, grads):
            tp.grad = torch.from_numpy(g.copy())
        tnorm = torch.nn.utils.clip_grad_norm_(theirs, 2.0)
        topt.step()
        np.testing.assert_allclose(opt.last_grad_norms[0], float(tnorm), rtol=1e-12)
    for a, tp in zip(ours, theirs):
        np.testing.assert_allclose(a, tp.detach().numpy(), rtol=1e-11, atol=1e-12)


def test_deepcopy_and_pickle_are_independent_optimizers():
    params, opt = setup()
    before = [p.copy() for p in params]
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        clone.step([np.ones((4, 3), np.float32), np.ones(5, np.float32)])
        assert clone.state[0]["step"] == 2
        assert not np.array_equal(clone._params[0], before[0])
    assert all(np.array_equal(p, b) for p, b in zip(params, before))
    assert opt.state[0]["step"] == 1
    with pytest.raises(TypeError, match="shallow copy"):
        copy.copy(opt)


def test_learning_rate_edits_reuse_the_launch_plans():
    params, opt = setup()
    launches = opt._launches
    for lr in (0.05, 0.01):
        opt.param_groups[0]["lr"] = lr
        opt.step([np.ones((4, 3), np.float32), np.ones(5, np.float32)])
        assert opt._launches is launches
    opt.param_groups[0]["maximize"] = True     # a kernel flag: new launches
    opt.step([np.ones((4, 3), np.float32), np.ones(5, np.float32)])
    assert opt._launches is not launches


def test_grad_buffers_are_the_flat_buffers_behind_grads():
    opt = fa.Adam([np.zeros(3, np.float32), np.zeros(2), np.zeros(4, np.float32)])
    bufs = opt.grad_buffers
    assert [b.dtype for b in bufs] == [np.float32, np.float64] and [b.size for b in bufs] == [7, 2]
    bufs[0][:] = 2
    assert opt.grads[2].tolist() == [2, 2, 2, 2]
