"""The small-call paths (functional calls that reuse the last call's options, gradient
lists read by the compiled code) keep every check: a bad input after many good calls is
still caught, naming the argument and changing nothing, and an option object edited in
place between two calls is validated again."""
import numpy as np
import pytest

import fastadam as fa
from test_errors import BAD_CALLS, assert_same, bufs, snapshot


@pytest.mark.parametrize("desc,exc,msg,bad", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_call_after_good_calls_with_the_same_objects_is_caught(desc, exc, msg, bad):
    p, g, m, v = bufs()
    for t in (1, 2, 3):          # the same arrays and option objects: the remembered path
        fa.adam_step(p, g, m, v, step=t)
    before = snapshot(p, g, m, v)
    kw = dict(param=p, grad=g, exp_avg=m, exp_avg_sq=v, step=4)
    kw.update(bad(p, g, m, v))
    with pytest.raises(exc, match=msg):
        fa.adam_step(kw.pop("param"), kw.pop("grad"), kw.pop("exp_avg"), kw.pop("exp_avg_sq"),
                     **kw)
    assert_same(before, [p, g, m, v])
    fa.adam_step(p, g, m, v, step=4)          # and the good call still steps
    assert not np.array_equal(before[0], p)


def test_array_changed_in_place_between_calls_is_caught():
    """No array property is remembered: each call checks the arrays it is given."""
    p, g, m, v = bufs()
    fa.adam_step(p, g, m, v, step=1)
    before = snapshot(p, g, m, v)
    m.flags.writeable = False
    with pytest.raises(ValueError, match="exp_avg is read-only"):
        fa.adam_step(p, g, m, v, step=2)
    assert_same(before, [p, g, m, v])
    m.flags.writeable = True
    with pytest.raises(ValueError, match="grad must have shape"):
        fa.adam_step(p, g[:4], m, v, step=2)
    with pytest.raises(TypeError, match="grad must have dtype float32"):
        fa.adam_step(p, g.astype(np.float64), m, v, step=2)
    assert_same(before, [p, g, m, v])


def test_betas_list_edited_in_place_is_validated_again():
    betas = [0.9, 0.999]
    p, g, m, v = bufs()
    q, h, n, w = (a.copy() for a in (p, g, m, v))
    fa.adam_step(p, g, m, v, step=1, betas=betas)
    betas[0] = 0.5                # edited between two calls with the same list
    fa.adam_step(p, g, m, v, step=2, betas=betas)
    betas[0] = 5.0
    before = snapshot(p, g, m, v)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0"):
        fa.adam_step(p, g, m, v, step=3, betas=betas)
    assert_same(before, [p, g, m, v])
    fa.adam_step(q, h, n, w, step=1, betas=(0.9, 0.999))
    fa.adam_step(q, h, n, w, step=2, betas=(0.5, 0.999))
    assert_same([q, n, w], [p, m, v])


@pytest.mark.parametrize("name", ["adam", "adamax", "nadam", "radam"])
def test_each_function_switches_options_and_dtypes_between_calls(name):
    """Alternating options and dtypes: each call equals the same call made fresh."""
    fn = getattr(fa, f"{name}_step")
    extra = {"nadam": dict(mu_product=1.0)}.get(name, {})
    for dtype in (np.float32, np.float64, np.float32):
        for lr in (1e-3, 2e-3, 1e-3):
            a = bufs(7, dtype)
            b = [x.copy() for x in a]
            fn(*a, step=1, lr=lr, **extra)
            fn(*a, step=2, lr=lr, weight_decay=0.1, **extra)
            fn(*b, step=1, lr=float(lr), **extra)
            fn(*b, step=2, lr=float(lr), weight_decay=float(0.1), **extra)
            assert_same(b, a)


def _opt_and_grads(seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(k).astype(np.float32) for k in (5, 7, 3)]
    grads = [rng.standard_normal(k).astype(np.float32) for k in (5, 7, 3)]
    return params, fa.Adam(params, lr=1e-2), grads


class _GradList(list):
    pass


@pytest.mark.parametrize("kind", [list, tuple, _GradList])
def test_grads_list_tuple_and_subclass_step_alike(kind):
    p0, o0, g0 = _opt_and_grads()
    p1, o1, g1 = _opt_and_grads()
    for _ in range(3):
        o0.step(list(g0))
        o1.step(kind(g1))
    assert_same(p0, p1)


BAD_ITEMS = [
    ("dtype", TypeError, r"grads\[1\] must have dtype float32",
     lambda p, g: g[1].astype(np.float64)),
    ("shape", ValueError, r"grads\[1\] must have shape", lambda p, g: g[1][:6]),
    ("non-contiguous", ValueError, r"grads\[1\] must be C-contiguous",
     lambda p, g: np.repeat(g[1], 2)[::2]),
    ("not an array", TypeError, r"grads\[1\] must be a numpy.ndarray",
     lambda p, g: list(g[1])),
    ("aliases a param", ValueError, r"grads\[1\] shares memory", lambda p, g: p[1]),
]


@pytest.mark.parametrize("desc,exc,msg,make", BAD_ITEMS, ids=[b[0] for b in BAD_ITEMS])
def test_bad_item_put_into_a_stepped_grads_list_is_caught(desc, exc, msg, make):
    """The same list object stepped several times, then one item replaced in place."""
    params, opt, grads = _opt_and_grads()
    for _ in range(3):
        opt.step(grads)
    before = snapshot(*params)
    state = opt.state_dict()
    good = grads[1]
    grads[1] = make(params, grads)
    with pytest.raises(exc, match=msg):
        opt.step(grads)
    assert_same(before, params)
    after = opt.state_dict()
    assert after["state"].keys() == state["state"].keys()
    for i in state["state"]:
        for k, v in state["state"][i].items():
            assert np.array_equal(np.asarray(v), np.asarray(after["state"][i][k]))
    grads[1] = good
    opt.step(grads)               # and the list steps again once repaired
    assert not np.array_equal(before[0], params[0])


def test_grads_list_changing_length_is_caught():
    params, opt, grads = _opt_and_grads()
    opt.step(grads)
    grads.append(grads[0].copy())
    with pytest.raises(ValueError, match="grads has 4 arrays, expected 3"):
        opt.step(grads)
    grads.pop()
    del grads[0]
    with pytest.raises(ValueError, match="grads has 2 arrays, expected 3"):
        opt.step(grads)


@pytest.mark.parametrize("kind", [list, tuple])
def test_clipped_and_guarded_steps_read_a_grads_list_or_tuple_like_opt_grads(kind):
    """The gradient-norm pass (max_grad_norm, nonfinite) reads the same sequence."""
    def make():
        rng = np.random.default_rng(3)
        ps = [rng.standard_normal(k).astype(np.float32) for k in (5, 7, 3)]
        return ps, fa.Adam([{"params": ps[:2], "max_grad_norm": 0.5}, {"params": ps[2:]}],
                           lr=1e-2, nonfinite="skip")
    rng = np.random.default_rng(4)
    gs = [rng.standard_normal(k).astype(np.float32) * 3 for k in (5, 7, 3)]
    p0, o0 = make()
    p1, o1 = make()
    for _ in range(3):
        for buf, g in zip(o0.grads, gs):
            buf[...] = g
        o0.step()
        o1.step(kind(gs))
    assert_same(p0, p1)
    assert o0.last_grad_norms == o1.last_grad_norms
    bad = [g.copy() for g in gs]
    bad[2][0] = np.nan
    before = snapshot(*p1)
    o1.step(kind(bad))
    assert o1.skipped_steps == 1
    assert_same(before, p1)


SHARED_CACHE_STEPS = r"""
import json
import numpy as np
import fastadam as fa
rng = np.random.default_rng(0)
ps = [rng.standard_normal(n).astype(np.float32) for n in (5, 7)]
opt = fa.Adam(ps, lr=1e-2)
for t in range(3):
    opt.step([np.full(5, 0.1 * t, np.float32), np.full(7, -0.2, np.float32)])
    opt.step(tuple(g + 1 for g in opt.grads))
p, g, m, v = (rng.standard_normal(9) for _ in range(4))
v = np.abs(v)
fa.adam_step(p, g, m, v, step=1)
print(json.dumps([float(x) for x in np.concatenate(ps + [p])]))
"""


def test_a_portable_process_and_an_ordinary_one_share_a_kernel_cache(tmp_path):
    """Kernels a FASTADAM_PORTABLE=1 process caches must serve an ordinary process (CI
    runs the portable pass first on the same cache): once, its cached address offsets
    were zeros and the ordinary process crashed reading a grads list."""
    import json
    import os
    import subprocess
    import sys
    outs = []
    for portable in ("1", "0"):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FASTADAM_PORTABLE=portable)
        res = subprocess.run([sys.executable, "-c", SHARED_CACHE_STEPS], env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (portable, res.stderr[-2000:])
        outs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
