"""Every bad input raises TypeError/ValueError naming the argument, and leaves
parameters and optimizer state exactly as they were."""
import numpy as np
import pytest

import fastadam as fa


def snapshot(*arrays):
    return [a.copy() for a in arrays]


def assert_same(before, after):
    for b, a in zip(before, after):
        assert np.array_equal(b, a, equal_nan=True)


# ---------------------------------------------------------------- functional
def bufs(n=5, dtype=np.float32):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(dtype) for _ in range(4)]


BAD_CALLS = [
    # (description, exception, message fragment, function of (p, g, m, v) -> kwargs/args)
    ("int param", TypeError, "param must have dtype float32 or float64",
     lambda p, g, m, v: dict(param=np.arange(5))),
    ("grad dtype", TypeError, "grad must have dtype float32",
     lambda p, g, m, v: dict(grad=g.astype(np.float64))),
    ("grad shape", ValueError, "grad must have shape",
     lambda p, g, m, v: dict(grad=np.zeros(4, np.float32))),
    ("2-D param", ValueError, "param must be 1-D",
     lambda p, g, m, v: dict(param=np.zeros((5, 1), np.float32))),
    ("non-contiguous grad", ValueError, "grad must be C-contiguous",
     lambda p, g, m, v: dict(grad=np.zeros(10, np.float32)[::2])),
    ("list grad", TypeError, "grad must be a numpy.ndarray",
     lambda p, g, m, v: dict(grad=[0.0] * 5)),
    ("read-only exp_avg", ValueError, "exp_avg is read-only",
     lambda p, g, m, v: dict(exp_avg=np.frombuffer(bytes(20), np.float32))),
    ("grad is param", ValueError, "share memory",
     lambda p, g, m, v: dict(grad=p)),
    ("exp_avg is exp_avg_sq", ValueError, "share memory",
     lambda p, g, m, v: dict(exp_avg=v)),
    ("nan lr", ValueError, "Invalid learning rate", lambda *a: dict(lr=float("nan"))),
    ("negative lr", ValueError, "Invalid learning rate", lambda *a: dict(lr=-1.0)),
    ("string lr", TypeError, "lr must be a real number", lambda *a: dict(lr="0.1")),
    ("beta1 = 1", ValueError, "Invalid beta parameter at index 0", lambda *a: dict(betas=(1.0, 0.9))),
    ("beta2 < 0", ValueError, "Invalid beta parameter at index 1", lambda *a: dict(betas=(0.9, -0.1))),
    ("one beta", TypeError, "betas must be a pair", lambda *a: dict(betas=(0.9,))),
    ("negative eps", ValueError, "Invalid epsilon value", lambda *a: dict(eps=-1e-8)),
    ("inf weight decay", ValueError, "Invalid weight_decay value", lambda *a: dict(weight_decay=np.inf)),
    ("step 0", ValueError, "step must be between 1", lambda *a: dict(step=0)),
    ("float step", TypeError, "step must be an int", lambda *a: dict(step=1.0)),
    ("eps_mode", ValueError, "eps_mode must be one of", lambda *a: dict(eps_mode="tf")),
    ("amsgrad flag type", TypeError, "amsgrad must be a bool", lambda *a: dict(amsgrad=1)),
    ("amsgrad without buffer", ValueError, "max_exp_avg_sq is required",
     lambda *a: dict(amsgrad=True)),
    ("max buffer aliasing", ValueError, "share memory",
     lambda p, g, m, v: dict(amsgrad=True, max_exp_avg_sq=m)),
]


@pytest.mark.parametrize("desc,exc,msg,bad", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_adam_step_rejects_bad_input_and_changes_nothing(desc, exc, msg, bad):
    p, g, m, v = bufs()
    before = snapshot(p, g, m, v)
    kw = dict(param=p, grad=g, exp_avg=m, exp_avg_sq=v, step=1)
    kw.update(bad(p, g, m, v))
    with pytest.raises(exc, match=msg):
        fa.adam_step(kw.pop("param"), kw.pop("grad"), kw.pop("exp_avg"), kw.pop("exp_avg_sq"), **kw)
    assert_same(before, [p, g, m, v])


# ---------------------------------------------------------------- constructor
@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(lr=-0.1), ValueError, "Invalid learning rate: -0.1"),
    (dict(lr=float("nan")), ValueError, "Invalid learning rate"),
    (dict(betas=(1.2, 0.999)), ValueError, "Invalid beta parameter at index 0: 1.2"),
    (dict(betas=(0.9, 1.0)), ValueError, "Invalid beta parameter at index 1"),
    (dict(eps=-1.0), ValueError, "Invalid epsilon value"),
    (dict(weight_decay=-1.0), ValueError, "Invalid weight_decay value"),
    (dict(amsgrad="yes"), TypeError, "amsgrad must be a bool"),
    (dict(eps_mode="x"), ValueError, "eps_mode"),
])
def test_constructor_rejects_bad_hyperparameters_with_torch_style_messages(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        fa.Adam([np.zeros(3)], **kwargs)


def test_bad_hyperparameter_in_a_group_names_the_group():
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\]"):
        fa.Adam([{"params": [np.zeros(2)]}, {"params": [np.zeros(2)], "lr": -1}])


ro = np.zeros(3)
ro.flags.writeable = False
shared = np.zeros(10)


@pytest.mark.parametrize("params,exc,msg", [
    (np.zeros(3), TypeError, "not a single array"),
    ([], ValueError, "empty parameter list"),
    (5, TypeError, "params must be a list"),
    ([np.zeros(3), {"params": [np.zeros(2)]}], TypeError, "not a mix"),
    ([np.arange(3)], TypeError, "dtype float32 or float64"),
    ([np.zeros((4, 4))[:, 0]], ValueError, "C-contiguous"),
    ([ro], ValueError, "read-only"),
    ([shared[:6], shared[4:]], ValueError, "share memory"),
    ([shared, shared], ValueError, "share memory"),
    ([{"lr": 0.1}], ValueError, "has no 'params'"),
    ([{"params": []}], ValueError, "is empty"),
])
def test_constructor_rejects_bad_params(params, exc, msg):
    with pytest.raises(exc, match=msg):
        fa.Adam(params)


# ---------------------------------------------------------------- step
def trained(dtype=np.float32, amsgrad=True):
    rng = np.random.default_rng(1)
    params = [rng.standard_normal((3, 2)).astype(dtype), rng.standard_normal(4).astype(dtype)]
    opt = fa.Adam(params, lr=0.1, amsgrad=amsgrad)
    opt.step([np.ones((3, 2), dtype), np.ones(4, dtype)])
    return params, opt


def frozen(params, opt):
    sd = opt.state_dict()
    arrays = [a.copy() for a in params]
    for st in sd["state"].values():
        arrays += [st[k] for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if k in st]
    return arrays, [st["step"] for st in sd["state"].values()], [dict(g) for g in sd["param_groups"]]


def assert_frozen(before, params, opt):
    after = frozen(params, opt)
    assert_same(before[0], after[0])
    assert before[1] == after[1]


STEP_BAD = [
    ("too few grads", ValueError, "grads has 1 arrays, expected 2",
     lambda P, o: [np.ones((3, 2), np.float32)]),
    ("not a list", TypeError, "grads must be a list", lambda P, o: np.ones(4, np.float32)),
    ("wrong shape", ValueError, r"grads\[1\] must have shape \(4,\)",
     lambda P, o: [np.ones((3, 2), np.float32), np.ones(5, np.float32)]),
    ("wrong dtype", TypeError, r"grads\[0\] must have dtype float32",
     lambda P, o: [np.ones((3, 2)), np.ones(4, np.float32)]),
    ("non-contiguous", ValueError, r"grads\[0\] must be C-contiguous",
     lambda P, o: [np.ones((2, 3), np.float32).T, np.ones(4, np.float32)]),
    ("grad is a param", ValueError, r"grads\[1\] shares memory",
     lambda P, o: [np.ones((3, 2), np.float32), P[1]]),
    ("grad is optimizer state", ValueError, r"grads\[0\] shares memory",
     lambda P, o: [o.state[0]["exp_avg"], np.ones(4, np.float32)]),
    ("grad overlaps a param partially", ValueError, r"grads\[1\] shares memory",
     lambda P, o: [np.ones((3, 2), np.float32), P[0].reshape(-1)[2:6]]),
]


@pytest.mark.parametrize("desc,exc,msg,bad", STEP_BAD, ids=[s[0] for s in STEP_BAD])
def test_step_rejects_bad_grads_and_changes_nothing(desc, exc, msg, bad, launch_mode):
    params, opt = trained()
    before = frozen(params, opt)
    with pytest.raises(exc, match=msg):
        opt.step(bad(params, opt))
    assert_frozen(before, params, opt)
    opt.step([np.ones((3, 2), np.float32), np.ones(4, np.float32)])   # still usable
    assert opt.state[0]["step"] == 2


@pytest.mark.parametrize("key,value,exc", [
    ("lr", float("nan"), ValueError), ("lr", -1.0, ValueError), ("lr", None, TypeError),
    ("betas", (0.9, 1.5), ValueError), ("eps", -1.0, ValueError),
    ("weight_decay", float("nan"), ValueError), ("amsgrad", "no", TypeError),
])
def test_step_rejects_bad_edited_hyperparameters_and_changes_nothing(key, value, exc):
    params, opt = trained()
    before = frozen(params, opt)
    good = opt.param_groups[0][key]
    opt.param_groups[0][key] = value
    with pytest.raises(exc, match=rf"param_groups\[0\]\['{key}'\]"):
        opt.step([np.ones((3, 2), np.float32), np.ones(4, np.float32)])
    assert_frozen(before, params, opt)
    opt.param_groups[0][key] = good
    opt.step([np.ones((3, 2), np.float32), np.ones(4, np.float32)])
    assert opt.state[0]["step"] == 2


def test_mixed_dtype_aliasing_is_caught_before_any_launch_writes():
    # Two launches (float32 and float64 buckets): the second's bad gradient must be found
    # before the first launch writes.
    a, b = np.zeros(3, np.float32), np.zeros(3)
    opt = fa.Adam([a, b])
    before = frozen([a, b], opt)
    with pytest.raises(ValueError, match=r"grads\[1\] shares memory"):
        opt.step([np.ones(3, np.float32), b])
    assert_frozen(before, [a, b], opt)


def test_replacing_group_params_is_rejected():
    params, opt = trained()
    before = frozen(params, opt)
    opt.param_groups[0]["params"] = [np.zeros(2)]
    opt.param_groups[0]["lr"] = 0.5
    with pytest.raises(ValueError, match="was replaced"):
        opt.step([np.ones((3, 2), np.float32), np.ones(4, np.float32)])
    assert_frozen(before, params, opt)


# ---------------------------------------------------------------- load_state_dict / load
def corrupt(sd, how):
    if how == "groups":
        sd["param_groups"].append(dict(sd["param_groups"][0]))
    elif how == "shape":
        sd["state"][0]["exp_avg"] = np.zeros((2, 3), np.float32)
    elif how == "dtype":
        sd["state"][1]["exp_avg_sq"] = sd["state"][1]["exp_avg_sq"].astype(np.float64)
    elif how == "algorithm":
        sd["algorithm"] = "adamax"
    elif how == "negative step":
        sd["state"][0]["step"] = -1
    elif how == "uneven steps":
        sd["state"][1]["step"] = 7
    elif how == "missing moments":
        del sd["state"][0]["exp_avg"]
    elif how == "missing max":
        del sd["state"][1]["max_exp_avg_sq"]
    elif how == "bad lr":
        sd["param_groups"][0]["lr"] = -3.0
    elif how == "param count":
        sd["param_groups"][0]["params"] = [0]
    elif how == "not a dict":
        return [sd]
    elif how == "no state":
        del sd["state"]
    elif how == "list moment":
        sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].tolist()
    return sd


@pytest.mark.parametrize("how,exc,msg", [
    ("groups", ValueError, "must have 1 groups"),
    ("shape", ValueError, r"\['exp_avg'\] must have shape \(3, 2\)"),
    ("dtype", TypeError, "must have dtype float32"),
    ("algorithm", ValueError, "from a 'adamax' optimizer"),
    ("negative step", ValueError, "must be an int >= 0"),
    ("uneven steps", ValueError, "are at step"),
    ("missing moments", ValueError, "lacks exp_avg"),
    ("missing max", ValueError, "lacks max_exp_avg_sq"),
    ("bad lr", ValueError, "Invalid learning rate"),
    ("param count", ValueError, "parameter counts differ"),
    ("not a dict", TypeError, "state_dict must be a dict"),
    ("no state", ValueError, "no 'state' entry"),
    ("list moment", TypeError, "must be a numpy.ndarray"),
])
def test_load_state_dict_rejects_bad_input_and_changes_nothing(how, exc, msg):
    params, opt = trained()
    before = frozen(params, opt)
    lr_before = opt.param_groups[0]["lr"]
    with pytest.raises(exc, match=msg):
        opt.load_state_dict(corrupt(opt.state_dict(), how))
    assert_frozen(before, params, opt)
    assert opt.param_groups[0]["lr"] == lr_before


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", "truncate", "other-npz"])
def test_load_rejects_corrupt_checkpoints_and_changes_nothing(tmp_path, content):
    params, opt = trained()
    path = tmp_path / "c.npz"
    if content == "truncate":
        opt.save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "other-npz":
        np.savez(path, a=np.zeros(3))
    else:
        path.write_bytes(content)
    before = frozen(params, opt)
    with pytest.raises(ValueError, match="checkpoint"):
        opt.load(path)
    assert_frozen(before, params, opt)


def test_load_missing_file_is_a_clear_error(tmp_path):
    params, opt = trained()
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        opt.load(tmp_path / "nope.npz")


def test_checkpoint_of_other_shapes_is_rejected(tmp_path):
    _, opt = trained()
    path = tmp_path / "c.npz"
    opt.save(path)
    other = fa.Adam([np.zeros((2, 3), np.float32), np.zeros(4, np.float32)], amsgrad=True)
    before = frozen(other._params, other)
    with pytest.raises(ValueError, match="must have shape"):
        other.load(path)
    assert_frozen(before, other._params, other)


# ---------------------------------------------------------------- many gradients
# step() checks gradient lists in compiled code from the array objects
# (kernels/unsafe.py); the Python checks then name the culprit.
MANY_SHAPES = [(3, 2)] + [(4,)] * 9 + [(2, 2, 2)]


class Sub(np.ndarray):
    pass


MANY_BAD = [
    ("wrong dtype", TypeError, r"grads\[5\] must have dtype float32", 5,
     lambda g: g.astype(np.float64)),
    ("wrong shape same size", ValueError, r"grads\[0\] must have shape \(3, 2\)", 0,
     lambda g: g.reshape(2, 3)),
    ("wrong ndim same size", ValueError, r"grads\[10\] must have shape \(2, 2, 2\)", 10,
     lambda g: g.reshape(-1)),
    ("non-contiguous", ValueError, r"grads\[9\] must be C-contiguous", 9,
     lambda g: np.ones(8, np.float32)[::2]),
    ("not an array", TypeError, r"grads\[3\] must be a numpy.ndarray", 3,
     lambda g: g.tolist()),
    ("aliases a param", ValueError, r"grads\[4\] shares memory", 4, "param"),
]


@pytest.mark.parametrize("desc,exc,msg,idx,make", MANY_BAD, ids=[m[0] for m in MANY_BAD])
def test_many_grads_are_checked_as_strictly_and_change_nothing(desc, exc, msg, idx, make,
                                                               launch_mode):
    params = [np.ones(s, np.float32) for s in MANY_SHAPES]
    opt = fa.Adam(params, lr=0.1)
    good = [np.ones(s, np.float32) for s in MANY_SHAPES]
    opt.step(good)
    before = frozen(params, opt)
    grads = list(good)
    grads[idx] = params[idx] if make == "param" else make(good[idx])
    with pytest.raises(exc, match=msg):
        opt.step(grads)
    assert_frozen(before, params, opt)


def test_many_grads_of_unusual_but_valid_kinds_are_accepted():
    # Arrays the compiled test does not recognise (a subclass, a read-only view, a
    # size-1 dimension with odd strides) go through the Python checks and are accepted.
    params = [np.zeros(s, np.float32) for s in MANY_SHAPES]
    twin = [p.copy() for p in params]
    opt, ref = fa.Adam(params, lr=0.1), fa.Adam(twin, lr=0.1)
    grads = [np.full(s, 0.5, np.float32) for s in MANY_SHAPES]
    odd = list(grads)
    odd[1] = grads[1].view(Sub)
    ro = grads[2].copy()
    ro.flags.writeable = False
    odd[2] = ro
    opt.step(odd)
    ref.step(grads)
    for a, b in zip(params, twin):
        assert np.array_equal(a, b)
