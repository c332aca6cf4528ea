"""Tests generated from the variants table (tests/variants.py): each algorithm x option
row gets reference parity, torch parity, functional = object API, state_dict and
checkpoint round-trips, bad values, and refusal of options it cannot serve."""
import copy

import numpy as np
import pytest

from fastadam.kernels import registry

from variants import (BAD_VALUES, IDS, OTHER_VALUES, VARIANTS, as_grad, functional_step,
                      make_problem, random_grad, reference_step, torch_grad)

F32 = np.finfo(np.float32).eps


def _hp(v, opt, gi=0):
    g = dict(opt.param_groups[gi])
    g["decoupled"] = v.alg.decoupled(g)
    return g


@pytest.mark.parametrize("v", VARIANTS, ids=IDS)
def test_object_api_matches_the_float64_reference(v, launch_mode):
    rng, init = make_problem(np.float64)
    ours = [x.copy() for x in init]
    opt = v.cls(ours, **v.options)
    hp = _hp(v, opt)
    ref = [x.copy() for x in init]
    ref_state = [{k: np.zeros_like(x) for k in v.alg.state[:v.alg.n_state(hp)]} for x in init]
    for t in range(1, 61):
        grads = [random_grad(v, rng, x, t, np.float64, 1 + t % 4) for x in init]
        opt.step(grads)
        ref = [reference_step(v, p, g, st, t, hp) for p, g, st in zip(ref, grads, ref_state)]
    for i, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13 * np.abs(b).max())
        for k, want in ref_state[i].items():
            got = opt.state[i][k]
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13 * np.abs(want).max(),
                                       err_msg=f"state {k!r} of param {i}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("v", VARIANTS, ids=IDS)
def test_functional_form_equals_the_object_api_bit_for_bit(v, dtype, launch_mode):
    rng, (x,) = make_problem(dtype, shapes=((300,),))
    p_obj, p_fun = x.copy(), x.copy()
    opt = v.cls([p_obj], **v.options)
    names = v.alg.state[:v.alg.n_state(opt.param_groups[0])]
    state = {k: np.zeros_like(x) for k in names}
    mu = 1.0
    for t in range(1, 21):
        g = random_grad(v, rng, x, t, dtype)
        opt.step([g])
        mu = functional_step(v, p_fun, g, state, t, mu)
    np.testing.assert_array_equal(p_fun, p_obj)
    for k in names:
        np.testing.assert_array_equal(state[k], opt.state[0][k], err_msg=k)


def _steps(v, opt, rng, shapes, n, dtype):
    for t in range(1, n + 1):
        opt.step([random_grad(v, rng, np.empty(s), t, dtype) for s in shapes])


@pytest.mark.parametrize("v", VARIANTS, ids=IDS)
def test_state_dict_and_checkpoint_round_trips_resume_bit_for_bit(v, tmp_path):
    shapes = [(4, 5), (9,)]
    _, init = make_problem(np.float32, shapes=shapes)
    a_params = [x.copy() for x in init]
    a = v.cls(a_params, **v.options)
    _steps(v, a, np.random.default_rng(1), shapes, 5, np.float32)
    b_params = [x.copy() for x in a_params]
    b = v.cls(b_params, **v.options)
    b.load_state_dict(a.state_dict())
    c_params = [x.copy() for x in a_params]
    c = v.cls(c_params, **v.options)
    a.save(tmp_path / "ckpt.npz")
    c.load(tmp_path / "ckpt.npz")
    d_params = [x.copy() for x in a_params]
    d = copy.deepcopy(a)
    d_params = d._params
    for o in (a, b, c, d):
        _steps(v, o, np.random.default_rng(2), shapes, 5, np.float32)
    for other in (b_params, c_params, d_params):
        for x, y in zip(a_params, other):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("v", VARIANTS, ids=IDS)
def test_bad_option_values_raise_naming_the_option_and_change_nothing(v):
    names = [o.name for o in v.cls([np.zeros(1)])._validate.options]
    for name in names:
        for bad, exc in BAD_VALUES[name]:
            with pytest.raises(exc, match=name):
                v.cls([{"params": [np.zeros(3)], name: bad}], **v.options)
            p = np.ones(3)
            opt = v.cls([p], **v.options)
            opt.step([as_grad(v, np.full(3, 0.5))])
            before = (p.copy(), copy.deepcopy(opt.state_dict()))
            with pytest.raises(exc, match=name):
                opt.add_param_group({"params": [np.zeros(2)], name: bad})
            good = opt.param_groups[0].get(name)
            opt.param_groups[0][name] = bad
            for _ in range(2):        # every step raises the same error, nothing changes
                with pytest.raises(exc, match=name):
                    opt.step([as_grad(v, np.full(3, 0.5))])
                np.testing.assert_array_equal(p, before[0])
            opt.param_groups[0][name] = good      # undone: stepping resumes
            opt.step([as_grad(v, np.full(3, 0.5))])
            q = before[0].copy()
            fresh = v.cls([q], **v.options)
            fresh.load_state_dict(before[1])
            fresh.step([as_grad(v, np.full(3, 0.5))])
            np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("v", VARIANTS, ids=IDS)
def test_options_of_other_algorithms_are_refused_and_extra_keys_pass(v):
    served = {o.name for o in v.cls([np.zeros(1)])._validate.options}
    foreign = sorted(registry.KNOWN_OPTIONS - served)
    for name in foreign:
        value = OTHER_VALUES.get(name, True)
        with pytest.raises(ValueError, match=f"has no '{name}' option"):
            v.cls([{"params": [np.zeros(3)], name: value}], **v.options)
        p = np.ones(3)
        opt = v.cls([p], **v.options)
        with pytest.raises(ValueError, match=f"has no '{name}' option"):
            opt.add_param_group({"params": [np.zeros(2)], name: value})
        assert len(opt.param_groups) == 1
        opt.param_groups[0][name] = value
        with pytest.raises(ValueError, match=f"has no '{name}' option"):
            opt.step([as_grad(v, np.ones(3))])
        np.testing.assert_array_equal(p, 1.0)
        del opt.param_groups[0][name]
        opt.step([as_grad(v, np.ones(3))])
        assert opt.state[0]["step"] == 1
    # keys that are no algorithm's options are the user's (schedulers store initial_lr)
    opt = v.cls([{"params": [np.zeros(3)], "initial_lr": 0.1, "name": "head"}], **v.options)
    opt.step([as_grad(v, np.ones(3))])
    assert opt.param_groups[0]["name"] == "head"


# ------------------------------------------------------------------------ torch parity
torch = pytest.importorskip("torch")
TORCH_VARIANTS = [v for v in VARIANTS if v.torch]


@pytest.fixture
def torch_default_float64():
    # torch keeps scalar state (NAdam's mu_product, the step) in the default dtype.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _run_pair(v, dtype, steps):
    rng, init = make_problem(dtype)
    ours = [x.copy() for x in init]
    theirs = [torch.tensor(x.copy(), requires_grad=True) for x in init]
    opt = v.cls(ours, **v.options)
    topt = getattr(torch.optim, v.torch)(theirs, **v.options)
    for t in range(steps):
        grads = [random_grad(v, rng, x, t + 1, dtype, 1 + (t % 5)) for x in init]
        opt.step(grads)
        for tp, g in zip(theirs, grads):
            tp.grad = torch_grad(v, g, tp.shape)
        topt.step()
    return opt, topt, ours, theirs


@pytest.mark.parametrize("v", TORCH_VARIANTS, ids=[v.id for v in TORCH_VARIANTS])
def test_matches_torch_in_float64_over_a_long_run(v, torch_default_float64, torch_one_thread,
                                                  launch_mode):
    opt, topt, ours, theirs = _run_pair(v, np.float64, 500)
    for i, (a, tp) in enumerate(zip(ours, theirs)):
        b = tp.detach().numpy()
        # Relative 1e-12 of the array's scale: torch evaluates the same formula in a
        # different order (lerp, addcdiv), a few ulp per step.
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())
        tst = topt.state[tp]
        for k in v.alg.state[:v.alg.n_state(opt.param_groups[0])]:
            want = tst[k].numpy()
            np.testing.assert_allclose(opt.state[i][k], want, rtol=1e-12,
                                       atol=1e-12 * np.abs(want).max(), err_msg=k)
        for k, _ in v.alg.group_scalars:
            assert opt.state[i][k] == pytest.approx(float(tst[k]), rel=1e-13)
        assert opt.state[i]["step"] == int(tst["step"])


@pytest.mark.parametrize("v", TORCH_VARIANTS, ids=[v.id for v in TORCH_VARIANTS])
def test_matches_torch_in_float32(v, torch_one_thread, launch_mode):
    steps = 100
    opt, topt, ours, theirs = _run_pair(v, np.float32, steps)
    for a, tp in zip(ours, theirs):
        b = tp.detach().numpy()
        # Both float32 trajectories round p every step: a few ulp of |p| per step.
        tol = 4 * steps * F32 * np.maximum(np.abs(b), 1e-2)
        np.testing.assert_array_less(np.abs(a - b), tol)
