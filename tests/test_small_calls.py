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
