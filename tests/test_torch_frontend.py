"""fastadam.torch against torch.optim: parity (every option, param groups, None gradients,
closures), state_dict interop both ways, torch.save round trips, lr schedulers, hooks and
the errors torch users expect. Skipped when torch is not installed (CI installs it)."""
import copy
import io
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastadam.torch as ft  # noqa: E402

SHAPES = [(7, 3), (50,), (1,), (4, 5, 2), (33,)]

# (our class, torch class, hyperparameters): every option of each algorithm.
CASES = [
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("Adam", dict(lr=1e-2, maximize=True)),
    ("Adam", dict(lr=3e-3, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("Adam", dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-6)),
    ("Adam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.3, amsgrad=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.3, maximize=True, amsgrad=True)),
    ("Adamax", dict(lr=1e-2)),
    ("Adamax", dict(lr=1e-2, weight_decay=0.1, maximize=True)),
    ("Adamax", dict(lr=2e-3, betas=(0.8, 0.99), eps=1e-6)),
    ("NAdam", dict(lr=1e-2)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.1, momentum_decay=1e-2, maximize=True)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True,
                   betas=(0.8, 0.99), eps=1e-6)),
    ("RAdam", dict(lr=1e-2)),
    ("RAdam", dict(lr=1e-2, weight_decay=0.1, maximize=True)),
    ("RAdam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True,
                   betas=(0.8, 0.99), eps=1e-6)),
]
IDS = [f"{n}-" + "-".join(f"{k}{v}" for k, v in h.items()) for n, h in CASES]
# torch implementation switches, passed to both sides (ours accepts and ignores them)
IMPLS = {"single": dict(foreach=False), "foreach": dict(foreach=True),
         "fused": dict(fused=True), "default": {}}


@pytest.fixture
def default_float64():
    """torch keeps NAdam's mu_product (a running product over all steps) in the default
    dtype: float64 parity to 1e-12 needs it in float64 (ours is always float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def make_params(seed, dtype, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype) for s in shapes]


def twins(name, h, dtype, groups=None, impl=None, seed=0):
    """(ours, theirs, our params, their params) over equal copies of the same params."""
    init = make_params(seed, dtype)
    ours = [x.clone().requires_grad_() for x in init]
    theirs = [x.clone().requires_grad_() for x in init]
    kw = dict(h, **(impl or {}))

    def build(cls, ps):
        if groups is None:
            return cls(ps, **kw)
        return cls([dict(params=[ps[i] for i in idx], **extra) for idx, extra in groups], **kw)
    return (build(getattr(ft, name), ours), build(getattr(torch.optim, name), theirs),
            ours, theirs)


def set_grads(ps, grads):
    for p, g in zip(ps, grads):
        p.grad = None if g is None else g.clone()


def random_grads(rng, dtype, t, skip=None):
    out = []
    for k, s in enumerate(SHAPES):
        if skip is not None and skip(t, k):
            out.append(None)
        else:
            out.append(torch.from_numpy(rng.standard_normal(s) * (1 + t % 5)).to(dtype))
    return out


def assert_close64(a, b):
    a, b = a.detach().numpy(), b.detach().numpy()
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * max(np.abs(b).max(), 1e-300))


def compare_state(opt, topt, ours, theirs, close):
    for p, q in zip(ours, theirs):
        st, tst = opt.state[p], topt.state[q]
        assert set(st) == set(tst)
        assert st["step"].dtype == tst["step"].dtype
        assert float(st["step"]) == float(tst["step"])
        for key in st:
            if key != "step":
                close(st[key], tst[key])


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("name,h", CASES, ids=IDS)
def test_float64_parity_long_run(name, h, impl, request):
    """300 steps in float64, some parameters without gradient on some steps: parameters
    and every state buffer agree with torch.optim to 1e-12 (relative to the array's
    scale: torch evaluates the same formulas in another order, a few ulp per step)."""
    if impl == "fused" and name in ("Adamax", "NAdam", "RAdam"):
        pytest.skip(f"torch.optim.{name} has no fused implementation")
    if name == "NAdam":       # (not for fused Adam: its step stays float32 regardless)
        request.getfixturevalue("default_float64")
    opt, topt, ours, theirs = twins(name, h, torch.float64, impl=IMPLS[impl])
    rng = np.random.default_rng(1)
    skip = lambda t, k: k in (1, 3) and (t + k) % 4 == 0   # noqa: E731
    for t in range(300):
        grads = random_grads(rng, torch.float64, t, skip)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        topt.step()
    for p, q in zip(ours, theirs):
        assert_close64(p, q)
    compare_state(opt, topt, ours, theirs, assert_close64)


@pytest.mark.parametrize("name,h", CASES, ids=IDS)
def test_float32_parity_per_step(name, h):
    """float32: after each step the parameters differ from torch's by a few ulp; then
    torch is resynchronised to ours, so the bound is per step, not accumulated."""
    opt, topt, ours, theirs = twins(name, h, torch.float32)
    rng = np.random.default_rng(2)
    for t in range(60):
        grads = random_grads(rng, torch.float32, t, lambda t, k: k == 2 and t % 3 == 1)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        before = [p.detach().clone().numpy() for p in ours]
        opt.step()
        topt.step()
        lr = h["lr"]
        for p, q, p0 in zip(ours, theirs, before):
            # p - lr * u rounds to a few ulp of its largest term: |p| or the step size
            a, b = p.detach().numpy(), q.detach().numpy()
            scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), np.maximum(np.abs(p0), lr))
            ulp = np.spacing(scale)
            assert np.all(np.abs(a - b) <= 4 * ulp), (t, np.max(np.abs(a - b) / ulp))
        with torch.no_grad():
            for p, q in zip(ours, theirs):
                q.copy_(p)
                for key, v in opt.state[p].items():
                    topt.state[q][key].copy_(v)


def test_param_groups_and_edits_between_steps():
    """Two groups with their own hyperparameters; lr, betas, weight_decay, eps and
    maximize edited between steps (and amsgrad switched on), as a user or scheduler does."""
    groups = [([0, 2], dict(lr=3e-3)), ([1, 3, 4], dict(weight_decay=0.05, betas=(0.8, 0.9)))]
    opt, topt, ours, theirs = twins("Adam", dict(lr=1e-2), torch.float64, groups=groups)
    rng = np.random.default_rng(3)
    for t in range(80):
        if t == 20:
            for o in (opt, topt):
                o.param_groups[0]["lr"] = 5e-3
                o.param_groups[1]["betas"] = (0.7, 0.95)
        if t == 40:
            for o in (opt, topt):
                o.param_groups[1]["weight_decay"] = 0.0
                o.param_groups[0]["eps"] = 1e-3
                o.param_groups[0]["maximize"] = True
        grads = random_grads(rng, torch.float64, t)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        topt.step()
    for p, q in zip(ours, theirs):
        assert_close64(p, q)
    compare_state(opt, topt, ours, theirs, assert_close64)


def test_amsgrad_switched_on_mid_run_starts_at_zero():
    opt, _, ours, _ = twins("Adam", dict(lr=1e-2), torch.float64)
    rng = np.random.default_rng(4)
    for t in range(5):
        set_grads(ours, random_grads(rng, torch.float64, t))
        opt.step()
    opt.param_groups[0]["amsgrad"] = True
    set_grads(ours, random_grads(rng, torch.float64, 5))
    opt.step()
    st = opt.state[ours[0]]
    # max(0, v_6) = v_6 after the first AMSGrad step
    torch.testing.assert_close(st["max_exp_avg_sq"], st["exp_avg_sq"], rtol=0, atol=0)


def test_grad_none_parameters_are_skipped_like_torch():
    """A parameter without a gradient keeps its state and step; a parameter that never
    had one has no state (torch semantics), and parameters of one group can be at
    different steps."""
    opt, topt, ours, theirs = twins("AdamW", dict(lr=1e-2), torch.float64)
    rng = np.random.default_rng(5)
    for t in range(30):
        grads = random_grads(rng, torch.float64, t, lambda t, k: k == 4 or (k == 1 and t > 20))
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        topt.step()
    assert ours[4] not in opt.state and theirs[4] not in topt.state
    assert float(opt.state[ours[1]]["step"]) == 21 == float(topt.state[theirs[1]]["step"])
    assert float(opt.state[ours[0]]["step"]) == 30
    compare_state(opt, topt, ours[:4], theirs[:4], assert_close64)
    sd = opt.state_dict()
    assert 4 not in sd["state"] and sd["state"].keys() == topt.state_dict()["state"].keys()
    # a step where nobody has a gradient changes nothing
    opt.zero_grad()
    before = [p.detach().clone() for p in ours]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, ours))
    assert float(opt.state[ours[0]]["step"]) == 30


def test_closure_runs_with_grad_enabled_and_returns_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).double()
    twin = copy.deepcopy(model)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    opt = ft.Adam(model.parameters(), lr=0.1)
    topt = torch.optim.Adam(twin.parameters(), lr=0.1)

    def closure_for(m, o):
        def closure():
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            return loss
        return closure
    for _ in range(20):
        with torch.no_grad():          # step() must still give the closure autograd
            loss = opt.step(closure_for(model, opt))
        tloss = topt.step(closure_for(twin, topt))
        assert loss.item() == pytest.approx(tloss.item(), rel=1e-12)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert_close64(p, q)


def test_zero_grad_set_to_none_false_and_add_param_group():
    opt, topt, ours, theirs = twins("Adam", dict(lr=1e-2), torch.float64)
    extra = torch.randn(6, dtype=torch.float64)
    mine, their_extra = extra.clone().requires_grad_(), extra.clone().requires_grad_()
    rng = np.random.default_rng(6)
    for t in range(40):
        if t == 10:
            opt.add_param_group({"params": [mine], "lr": 0.05})
            topt.add_param_group({"params": [their_extra], "lr": 0.05})
        for o, ps in ((opt, ours), (topt, theirs)):
            o.zero_grad(set_to_none=False)
        grads = random_grads(rng, torch.float64, t)
        for ps in (ours, theirs):
            with torch.no_grad():
                for p, g in zip(ps, grads):
                    if p.grad is None:
                        p.grad = g.clone()
                    else:
                        p.grad.add_(g)      # accumulate into the same tensor
        if t >= 10:
            g = torch.from_numpy(rng.standard_normal(6))
            mine.grad, their_extra.grad = g.clone(), g.clone()
        opt.step()
        topt.step()
    for p, q in zip(ours + [mine], theirs + [their_extra]):
        assert_close64(p, q)
    assert float(opt.state[mine]["step"]) == 30


def test_grads_that_need_care_noncontiguous_requires_grad_and_moved_params():
    opt, topt, ours, theirs = twins("Adam", dict(lr=1e-2), torch.float64)
    rng = np.random.default_rng(7)
    for t in range(6):
        grads = random_grads(rng, torch.float64, t)
        if t == 1:   # a non-contiguous gradient of the right shape
            grads[0] = torch.from_numpy(rng.standard_normal((3, 7))).t()
        if t == 2:   # a gradient that requires grad (backward(create_graph=True))
            grads[1] = grads[1].clone().requires_grad_()
        if t == 4:   # a negated view: same values, memory holding their negatives
            grads[0] = torch._neg_view(grads[0].neg())
            assert grads[0].is_neg()
        set_grads(ours, grads)
        set_grads(theirs, grads)
        if t == 3:   # parameter memory replaced behind the optimizer's back
            for ps in (ours, theirs):
                ps[2].data = ps[2].data.clone()
        opt.step()
        topt.step()
    for p, q in zip(ours, theirs):
        assert_close64(p, q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_whose_data_changed_dtype_or_size_is_refused(dtype):
    """``grad.data = ...`` can give a gradient another dtype or size (torch's grad setter
    checks only assignments to ``.grad``): the step refuses it, nothing changed."""
    opt, _, ours, _ = twins("Adam", dict(lr=1e-2), dtype)
    rng = np.random.default_rng(3)
    set_grads(ours, random_grads(rng, dtype, 0))
    opt.step()
    other = torch.float32 if dtype == torch.float64 else torch.float64
    for bad in (torch.ones(ours[1].numel(), dtype=other),
                torch.ones(ours[1].numel() - 1, dtype=dtype)):
        set_grads(ours, random_grads(rng, dtype, 1))
        ours[1].grad.data = bad
        before = [p.detach().clone() for p in ours]
        state = [{k: v.clone() for k, v in opt.state[p].items()} for p in ours]
        with pytest.raises((TypeError, ValueError), match=r"grads\[1\]"):
            opt.step()
        for p, b, st in zip(ours, before, state):
            assert torch.equal(p, b)
            for k, v in st.items():
                assert torch.equal(opt.state[p][k], v), k


def test_state_is_zero_copy_and_step_bumps_version():
    opt, _, ours, _ = twins("Adam", dict(lr=1e-2), torch.float32)
    set_grads(ours, random_grads(np.random.default_rng(8), torch.float32, 0))
    v = ours[0]._version
    ptr = ours[0].data_ptr()
    opt.step()
    assert ours[0].data_ptr() == ptr and ours[0]._version > v
    m = opt.state[ours[0]]["exp_avg"]
    set_grads(ours, random_grads(np.random.default_rng(9), torch.float32, 1))
    before = m.clone()
    opt.step()
    assert not torch.equal(m, before)     # the state tensor is the live buffer


# ----------------------------------------------------------------------------- interop
def _train(opt, ps, rng, steps, dtype=torch.float64):
    for t in range(steps):
        set_grads(ps, random_grads(rng, dtype, t))
        opt.step()


@pytest.mark.parametrize("name,h", [("Adam", dict(lr=1e-2, amsgrad=True)),
                                    ("AdamW", dict(lr=1e-2, weight_decay=0.2)),
                                    ("Adamax", dict(lr=1e-2)),
                                    ("NAdam", dict(lr=1e-2, momentum_decay=1e-2)),
                                    ("RAdam", dict(lr=1e-2, weight_decay=0.1))])
@pytest.mark.parametrize("direction", ["fastadam_to_torch", "torch_to_fastadam"])
def test_state_dict_loads_both_ways(name, h, direction, default_float64):
    """Train 15 steps on one side, hand the state_dict (two param groups, through
    torch.save / torch.load(weights_only=True)) to the other, continue both 15 steps:
    same parameters and state as an uninterrupted run."""
    groups = [([0, 1], dict(lr=2e-3)), ([2, 3, 4], {})]
    opt, topt, ours, theirs = twins(name, h, torch.float64, groups=groups)
    src, dst = (opt, topt) if direction == "fastadam_to_torch" else (topt, opt)
    src_ps, dst_ps = (ours, theirs) if src is opt else (theirs, ours)
    ref_opt, _, ref_ps, _ = twins(name, h, torch.float64, groups=groups)
    rng, rng_ref = np.random.default_rng(10), np.random.default_rng(10)
    _train(src, src_ps, rng, 15)
    _train(ref_opt, ref_ps, rng_ref, 15)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert sd["param_groups"] == src.state_dict()["param_groups"]
    with torch.no_grad():
        for p, q in zip(dst_ps, src_ps):
            p.copy_(q)
    dst.load_state_dict(sd)
    _train(dst, dst_ps, rng, 15)
    _train(ref_opt, ref_ps, rng_ref, 15)
    for p, q in zip(dst_ps, ref_ps):
        assert_close64(p, q)
    compare_state(ref_opt, dst, ref_ps, dst_ps, assert_close64)


def test_state_dict_format_matches_torch():
    opt, topt, ours, theirs = twins("Adam", dict(lr=1e-2, amsgrad=True), torch.float32)
    grads = random_grads(np.random.default_rng(11), torch.float32, 0)
    set_grads(ours, grads)
    set_grads(theirs, grads)
    opt.step()
    topt.step()
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sd["param_groups"] == tsd["param_groups"]
    assert sd["state"].keys() == tsd["state"].keys()
    for k in sd["state"]:
        a, b = sd["state"][k], tsd["state"][k]
        assert list(a) == list(b)
        for key in a:
            assert type(a[key]) is type(b[key]) and a[key].dtype == b[key].dtype
            assert a[key].shape == b[key].shape
    # the handed-out step is a copy: bumping it does not touch the optimizer
    sd["state"][0]["step"] += 100
    assert float(opt.state[ours[0]]["step"]) == 1


def test_load_state_dict_hooks_fire_and_state_is_checked():
    opt, _, ours, _ = twins("Adam", dict(lr=1e-2), torch.float64)
    _train(opt, ours, np.random.default_rng(12), 3)
    calls = []
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("post"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("sd_post"))
    sd = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(sd)
    assert calls == ["sd_post", "pre", "post"]
    bad = copy.deepcopy(sd)
    bad["state"][0]["exp_avg"] = torch.zeros(3)
    opt.load_state_dict(bad)
    set_grads(ours, random_grads(np.random.default_rng(13), torch.float64, 0))
    with pytest.raises(ValueError, match="exp_avg.*shape"):
        opt.step()


def test_deepcopy_is_independent():
    opt, _, ours, _ = twins("Adam", dict(lr=1e-2), torch.float64)
    _train(opt, ours, np.random.default_rng(14), 3)
    clone = copy.deepcopy(opt)
    cps = [p for g in clone.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in ours]
    _train(clone, cps, np.random.default_rng(15), 3)
    assert all(torch.equal(a, b) for a, b in zip(before, ours))
    assert float(clone.state[cps[0]]["step"]) == 6 and float(opt.state[ours[0]]["step"]) == 3


# ----------------------------------------------------------------------------- schedulers
SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.05, total_steps=60, cycle_momentum=True),
    "ReduceLROnPlateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
        o, factor=0.5, patience=2),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + e)),
}


@pytest.mark.parametrize("name", ["AdamW", "NAdam", "RAdam"])
@pytest.mark.parametrize("sched", list(SCHEDULERS))
def test_lr_schedulers(sched, name, default_float64):
    groups = [([0, 1], dict(lr=2e-3)), ([2, 3, 4], {})]
    opt, topt, ours, theirs = twins(name, dict(lr=1e-2), torch.float64, groups=groups)
    s, ts = SCHEDULERS[sched](opt), SCHEDULERS[sched](topt)
    rng = np.random.default_rng(16)
    betas_seen = set()
    for t in range(60):
        grads = random_grads(rng, torch.float64, t)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        topt.step()
        if sched == "ReduceLROnPlateau":
            metric = 1.0 if t < 10 else 2.0       # plateaus after step 10
            s.step(metric)
            ts.step(metric)
        else:
            s.step()
            ts.step()
        betas_seen.add(opt.param_groups[0]["betas"])
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups]
    if sched == "OneCycleLR":
        assert len(betas_seen) > 10            # momentum was cycled through betas
    if sched != "LambdaLR":
        assert opt.param_groups[0]["lr"] != 2e-3
    for p, q in zip(ours, theirs):
        assert_close64(p, q)


def test_step_hooks_fire():
    opt, _, ours, _ = twins("Adamax", dict(lr=1e-2), torch.float32)
    calls = []
    h1 = opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    from torch.optim.optimizer import register_optimizer_step_post_hook
    g = register_optimizer_step_post_hook(
        lambda o, a, k: calls.append("global"))
    try:
        _train(opt, ours, np.random.default_rng(17), 2, torch.float32)
    finally:
        g.remove()
    assert calls == ["pre", "post", "global"] * 2
    h1.remove()
    _train(opt, ours, np.random.default_rng(18), 1, torch.float32)
    assert calls[-1] == "post"


# ----------------------------------------------------------------------------- errors
def test_constructor_matches_torch_signature_and_defaults():
    import inspect
    for name in ("Adam", "AdamW", "Adamax", "NAdam", "RAdam"):
        ours, theirs = getattr(ft, name), getattr(torch.optim, name)
        assert inspect.signature(ours) == inspect.signature(theirs)
        assert issubclass(ours, theirs) and issubclass(ours, torch.optim.Optimizer)
    p = torch.zeros(3, requires_grad=True)
    assert ft.Adam([p]).defaults == torch.optim.Adam([p]).defaults
    assert ft.AdamW([p]).defaults == torch.optim.AdamW([p]).defaults
    assert ft.Adamax([p]).defaults == torch.optim.Adamax([p]).defaults
    assert ft.NAdam([p]).defaults == torch.optim.NAdam([p]).defaults
    assert ft.RAdam([p]).defaults == torch.optim.RAdam([p]).defaults


def test_flags_torch_users_pass():
    p = torch.zeros(3, requires_grad=True)
    for kw in (dict(foreach=True), dict(foreach=False), dict(fused=True), dict(fused=False)):
        ft.Adam([p], **kw)      # harmless here: accepted
    with pytest.raises(ValueError, match="capturable"):
        ft.Adam([p], capturable=True)
    with pytest.raises(ValueError, match="differentiable"):
        ft.AdamW([p], differentiable=True)
    with pytest.raises(RuntimeError, match="fused.*foreach"):
        ft.Adam([p], fused=True, foreach=True)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        ft.Adam([p], lr=-1.0)
    opt = ft.Adam([p])
    opt.param_groups[0]["capturable"] = True
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="capturable"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(3))


def test_low_precision_refused_where_not_supported():
    for dt in (torch.bfloat16, torch.float16):
        for name in ("Adamax",):          # NAdam, RAdam: test_nadam_radam_16bit_...
            with pytest.raises(TypeError, match=f"{dt} parameters are supported by "
                                                "fastadam.torch.Adam, AdamW, NAdam and "
                                                "RAdam only"):
                getattr(ft, name)([torch.zeros(3, dtype=dt, requires_grad=True)])
        p = torch.zeros(3, dtype=dt, requires_grad=True)
        opt = ft.Adam([p], amsgrad=True)
        p.grad = torch.ones(3, dtype=dt)
        with pytest.raises(ValueError, match="amsgrad"):
            opt.step()
        assert torch.equal(p.detach(), torch.zeros(3, dtype=dt))
        assert not opt.state.get(p)


def _bf16_twins(name, h, seed=0, dtype=torch.bfloat16):
    """16-bit parameters (ours, plus one float32 parameter in the same optimizer) and
    torch.optim on float32 copies of the same values."""
    g = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=g) for s in [(7, 3), (50,), (4, 5, 2), (9,)]]
    ours = [x.to(dtype).requires_grad_() for x in init[:3]] + \
        [init[3].clone().requires_grad_()]
    ref = [x.detach().float().clone().requires_grad_() for x in ours]
    return getattr(ft, name)(ours, **h), getattr(torch.optim, name)(ref, **h), ours, ref


LOWP_DTYPES = [torch.bfloat16, torch.float16]


# float16 runs the decoupled-decay cases only: every other case would compile another
# float16 kernel layout, and the options' code paths are the same for both 16-bit formats
# (the kernels are generic in the format).
_DECOUPLED = dict(lr=1e-3, betas=(0.8, 0.99), decoupled_weight_decay=True, weight_decay=0.2)


@pytest.mark.parametrize("name,h,dtype", [
    ("Adam", dict(lr=1e-2, weight_decay=0.1), torch.bfloat16),
    ("AdamW", dict(lr=1e-2, maximize=True), torch.bfloat16),
    ("Adam", _DECOUPLED, torch.bfloat16),
    ("Adam", _DECOUPLED, torch.float16),
    ("AdamW", dict(lr=1e-2), torch.float16)], ids=str)
def test_low_precision_params_master_weights_track_float32_adam(name, h, dtype):
    """bfloat16 / float16 parameters step float32 master weights (fastadam.lowp): the
    master copy follows torch.optim on float32 parameters fed the same gradients (a few
    float32 ulp per step, accumulated), and the 16-bit parameter is the master rounded to
    nearest (what torch.optim would give on a float32 copy rounded to the parameter's
    dtype after each step; torch.optim on the 16-bit parameters themselves keeps 16-bit
    moments and rounds every operation, a different algorithm)."""
    opt, topt, ours, ref = _bf16_twins(name, h, dtype=dtype)
    rng = np.random.default_rng(50)
    steps = 60
    for t in range(steps):
        for k, (p, q) in enumerate(zip(ours, ref)):
            if k == 1 and t % 3 == 1:
                p.grad = q.grad = None
                continue
            gr = torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32))
            p.grad = gr.to(p.dtype)
            q.grad = p.grad.float()
        opt.step()
        topt.step()
    for p, q in zip(ours, ref):
        st = opt.state[p]
        master = st["master"] if p.dtype == dtype else p.detach()
        a, b = master.numpy(), q.detach().numpy()
        tol = 4 * steps * np.finfo(np.float32).eps * np.maximum(np.abs(b), h["lr"])
        np.testing.assert_array_less(np.abs(a - b), tol)
        if p.dtype == dtype:
            assert torch.equal(p.detach(), st["master"].to(dtype))
            assert st["exp_avg"].dtype == torch.float32
        assert float(st["step"]) == float(topt.state[q]["step"])


# the ways to keep a 16-bit parameter's precision: fastadam.torch's options -> fa.AdamW's
LOWP_MODES = [({}, dict(master_weights=True)),
              (dict(compensation=True), dict(compensation=True)),
              (dict(rounding="stochastic", seed=9), dict(rounding="stochastic", seed=9)),
              (dict(master_weights=False), {})]


@pytest.mark.parametrize("opts,fa_opts", LOWP_MODES, ids=str)
def test_float16_params_equal_numpy_object_api(opts, fa_opts):
    """fastadam.torch on float16 tensors = fa.AdamW on float16 NumPy arrays with
    state_dtype="float32" and the same way to keep precision (master weights by default,
    compensation, stochastic rounding, round to nearest), bit for bit (parameters, moments,
    master weights or compensation buffer), two param groups with their own lr."""
    import fastadam as fa
    name, h = "AdamW", dict(lr=3e-3, weight_decay=0.3)
    g = torch.Generator().manual_seed(3)
    init = [torch.randn(s, generator=g).to(torch.float16) for s in [(7, 3), (50,), (4, 5, 2)]]
    ours = [x.clone().requires_grad_() for x in init]
    arrs = [x.numpy().copy() for x in init]
    lr2 = h["lr"] / 3
    opt = getattr(ft, name)([{"params": ours[:2]}, {"params": ours[2:], "lr": lr2}], **h)
    if opts:
        assert opt.set_low_precision(**opts) is opt
    kw = {k: v for k, v in h.items() if k != "lr"}
    ref = getattr(fa, name)([{"params": arrs[:2], "lr": h["lr"]},
                             {"params": arrs[2:], "lr": lr2}],
                            state_dtype="float32", **fa_opts, **kw)
    rng = np.random.default_rng(7)
    for _ in range(25):
        grads = [rng.standard_normal(a.shape).astype(np.float16) for a in arrs]
        for p, gr in zip(ours, grads):
            p.grad = torch.from_numpy(gr.copy())
        opt.step()
        ref.step(grads)
    st = ref.state_dict()["state"]
    extra = [k for k in ("master", "compensation") if fa_opts.get(k.replace(
        "master", "master_weights"))]
    for j, (p, a) in enumerate(zip(ours, arrs)):
        assert p.dtype == torch.float16
        np.testing.assert_array_equal(p.detach().numpy().view(np.uint16), a.view(np.uint16))
        assert list(opt.state[p]) == ["step", "exp_avg", "exp_avg_sq"] + extra
        for key in ["exp_avg", "exp_avg_sq"] + extra:
            mine = opt.state[p][key].numpy().reshape(-1)
            want = np.asarray(st[j][key]).reshape(-1)
            assert mine.dtype == (np.float16 if key == "compensation" else np.float32)
            np.testing.assert_array_equal(mine.view(np.uint8), want.view(mine.dtype).view(
                np.uint8), err_msg=key)
    if opts.get("rounding") == "stochastic":     # the seed reaches the kernel
        def run(seed):
            ps = [x.clone().requires_grad_() for x in init]
            o = ft.AdamW(ps, **h).set_low_precision(**dict(opts, seed=seed))
            for _ in range(3):
                for p in ps:
                    p.grad = torch.full_like(p, 0.5)
                o.step()
            return torch.cat([p.detach().reshape(-1) for p in ps])
        assert torch.equal(run(9), run(9)) and not torch.equal(run(9), run(10))


# NAdam / RAdam on 16-bit tensors: the kernel layouts of tests/test_lowp_nr16.py (float32
# state; NAdam bfloat16 with decoupled decay, master or compensation; RAdam float16 with
# L2 decay, master), so nothing more is compiled.
NR_CASES = [("NAdam", torch.bfloat16, dict(lr=1e-2, weight_decay=0.1,
                                           decoupled_weight_decay=True), {}),
            ("NAdam", torch.bfloat16, dict(lr=1e-2, weight_decay=0.1,
                                           decoupled_weight_decay=True),
             dict(compensation=True)),
            ("RAdam", torch.float16, dict(lr=1e-2, weight_decay=0.05), {})]


@pytest.mark.parametrize("name,dtype,h,opts", NR_CASES, ids=str)
def test_nadam_radam_16bit_params_equal_numpy_object_api(name, dtype, h, opts):
    """fastadam.torch.NAdam / RAdam on bfloat16 / float16 tensors = fa.NAdam / fa.RAdam on
    the same 16-bit NumPy arrays with state_dtype="float32" and the same way to keep
    precision, bit for bit (parameters, moments, master or compensation, NAdam's
    mu_product per parameter), two param groups with their own lr; the state_dict loads
    into a new optimizer that then steps on bit for bit."""
    import fastadam as fa
    g = torch.Generator().manual_seed(3)
    init = [torch.randn(s, generator=g).to(dtype) for s in [(7, 3), (50,), (4, 5, 2)]]
    ours = [x.clone().requires_grad_() for x in init]
    arrs = [_np16(x) for x in init]
    lr2 = h["lr"] / 3
    opt = getattr(ft, name)([{"params": ours[:2]}, {"params": ours[2:], "lr": lr2}], **h)
    if opts:
        opt.set_low_precision(**opts)
    kw = {k: v for k, v in h.items() if k != "lr"}
    fa_opts = opts or {"master_weights": True}
    ref = getattr(fa, name)([{"params": arrs[:2], "lr": h["lr"]},
                             {"params": arrs[2:], "lr": lr2}],
                            state_dtype="float32", **fa_opts, **kw)
    rng = np.random.default_rng(7)

    def step(opts_list, arrays_step):
        grads = [rng.standard_normal(a.shape).astype(np.float32) for a in arrs]
        for o, ps in opts_list:
            for p, gr in zip(ps, grads):
                p.grad = torch.from_numpy(gr).to(dtype)
            o.step()
        arrays_step([torch.from_numpy(gr).to(dtype) for gr in grads])

    for _ in range(12):
        step([(opt, ours)], lambda gs: ref.step([_np16(x) for x in gs]))
    extra = "compensation" if opts.get("compensation") else "master"
    st = ref.state_dict()["state"]
    for j, (p, a) in enumerate(zip(ours, arrs)):
        assert p.dtype == dtype
        assert np.array_equal(_np16(p.detach()).view(np.uint16), a.view(np.uint16))
        for key in ("exp_avg", "exp_avg_sq", extra):
            mine = _np16(opt.state[p][key]) if key == "compensation" else \
                opt.state[p][key].numpy()
            want = np.asarray(st[j][key]).reshape(-1)
            assert np.array_equal(mine.reshape(-1).view(np.uint8),
                                  want.view(mine.dtype).view(np.uint8)), key
        if name == "NAdam":
            assert float(opt.state[p]["mu_product"]) == pytest.approx(
                st[j]["mu_product"], rel=1e-6) and st[j]["mu_product"] < 1.0
    qs = [x.detach().clone().requires_grad_() for x in ours]
    opt2 = getattr(ft, name)([{"params": qs[:2]}, {"params": qs[2:], "lr": lr2}], **h)
    if opts:
        opt2.set_low_precision(**opts)
    opt2.load_state_dict(opt.state_dict())
    for _ in range(2):
        step([(opt, ours), (opt2, qs)], lambda gs: None)
    for p, q in zip(ours, qs):
        assert torch.equal(p.detach().view(torch.int16), q.detach().view(torch.int16))


def _np16(t):
    """A 16-bit tensor's values as a NumPy array of its dtype (bfloat16: ml_dtypes)."""
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def test_low_precision_options_bad_values_and_mode_switch():
    """set_low_precision: bad values refused naming the argument, nothing changed; the
    mode switches at the next step (the new buffer starts from the parameter / at zero,
    the old one leaves state); deepcopy keeps it, state_dict stays torch's format;
    float32 parameters and the other classes are not affected / refuse it."""
    p = torch.linspace(-2, 2, 12, dtype=torch.float16).requires_grad_()
    q = torch.ones(3, requires_grad=True)                     # float32: options ignored
    opt = ft.AdamW([{"params": [p]}, {"params": [q]}], lr=1e-2)
    for _ in range(2):
        p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
        opt.step()
    assert "master" in opt.state[p] and set(opt.state[q]) == {"step", "exp_avg", "exp_avg_sq"}
    before = p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}
    for kw, err, what in [(dict(rounding="up"), ValueError, "rounding"),
                          (dict(seed=-1), ValueError, "seed"),
                          (dict(seed=1.5), TypeError, "seed"),
                          (dict(compensation=1), TypeError, "compensation"),
                          (dict(master_weights=True, compensation=True), ValueError,
                           "master_weights"),
                          (dict(master_weights=True, rounding="stochastic"), ValueError,
                           "master_weights"),
                          (dict(compensation=True, rounding="stochastic"), ValueError,
                           "compensation")]:
        with pytest.raises(err, match=what):
            opt.set_low_precision(**kw)
    with pytest.raises(TypeError, match="Adam, AdamW, NAdam and RAdam only"):
        ft.Adamax([q]).set_low_precision(compensation=True)
    assert torch.equal(p.detach(), before[0])
    for k, v in before[1].items():                      # nothing changed
        assert torch.equal(opt.state[p][k], v), k
    opt.step()                                          # still master weights
    assert not torch.equal(before[1]["master"], opt.state[p]["master"])
    assert torch.equal(p.detach(), opt.state[p]["master"].to(torch.float16))
    opt.set_low_precision(compensation=True)               # master -> compensation
    p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
    opt.step()
    assert list(opt.state[p]) == ["step", "exp_avg", "exp_avg_sq", "compensation"]
    assert opt.state[p]["compensation"].dtype == torch.float16
    assert float(opt.state[p]["step"]) == 4
    sd = opt.state_dict()
    assert set(sd["param_groups"][0]) == set(torch.optim.AdamW([p]).state_dict()[
        "param_groups"][0])                               # torch's format
    twin = copy.deepcopy(opt)
    p2, q2 = p.detach().clone().requires_grad_(), q.detach().clone().requires_grad_()
    loaded = ft.AdamW([{"params": [p2]}, {"params": [q2]}]).set_low_precision(
        compensation=True)
    loaded.load_state_dict(sd)                 # the compensation buffer comes back
    p2.grad, q2.grad = p.grad.clone(), q.grad.clone()
    opt.step()
    twin.step()                                # deepcopy kept the mode (and its grads)
    loaded.step()
    for o, x in ((twin, twin.param_groups[0]["params"][0]), (loaded, p2)):
        assert torch.equal(o.state[x]["compensation"], opt.state[p]["compensation"])
        assert torch.equal(x.detach(), p.detach())
    opt.set_low_precision()                                # -> master from the parameter
    opt.step()
    assert "compensation" not in opt.state[p] and "master" in opt.state[p]
    assert torch.equal(p.detach(), opt.state[p]["master"].to(torch.float16))


@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=str)
def test_low_precision_state_dict_round_trips_and_loads_from_torch(dtype):
    h = dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)
    opt, _, ours, _ = _bf16_twins("Adam", h, dtype=dtype)
    rng = np.random.default_rng(51)

    def train(o, ps, n):
        for _ in range(n):
            for p in ps:
                p.grad = torch.from_numpy(
                    rng.standard_normal(tuple(p.shape)).astype(np.float32)).to(p.dtype)
            o.step()
    train(opt, ours, 5)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert list(sd["state"][0]) == ["step", "exp_avg", "exp_avg_sq", "master"]
    # fastadam -> fastadam: exact (master weights included)
    opt2, _, ours2, _ = _bf16_twins("Adam", h, dtype=dtype)
    with torch.no_grad():
        for p, q in zip(ours2, ours):
            p.copy_(q)
    opt2.load_state_dict(sd)
    state = rng.bit_generator.state
    train(opt, ours, 3)
    rng.bit_generator.state = state
    train(opt2, ours2, 3)
    for p, q in zip(ours, ours2):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])
    # torch.optim.Adam on 16-bit parameters loads ours (moments cast, master ignored)
    tps = [p.detach().clone().requires_grad_() for p in ours]
    topt = torch.optim.Adam(tps, **h)
    topt.load_state_dict(opt.state_dict())
    assert topt.state[tps[0]]["exp_avg"].dtype == dtype
    train(topt, tps, 1)
    # and ours loads torch's 16-bit state: moments widened, master from the parameter
    opt3, _, ours3, _ = _bf16_twins("Adam", h, dtype=dtype)
    with torch.no_grad():
        for p, q in zip(ours3, tps):
            p.copy_(q)
    opt3.load_state_dict(topt.state_dict())
    assert torch.equal(opt3.state[ours3[0]]["exp_avg"],
                       topt.state[tps[0]]["exp_avg"].float())
    train(opt3, ours3, 1)
    assert float(opt3.state[ours3[0]]["step"]) == 10
    assert opt3.state[ours3[0]]["exp_avg"].dtype == torch.float32


def test_bad_params():
    with pytest.raises(ValueError, match="device meta"):
        ft.Adam([torch.zeros(3, device="meta", requires_grad=True)])
    with pytest.raises(ValueError, match="not contiguous"):
        ft.Adam([torch.zeros(3, 4).t().requires_grad_()])
    with pytest.raises(TypeError, match="complex"):
        ft.Adam([torch.zeros(3, dtype=torch.complex64, requires_grad=True)])
    with pytest.raises(TypeError, match="float32 or float64"):
        ft.Adam([torch.zeros(3, dtype=torch.int32)])
    opt = ft.Adam([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match="contiguous"):
        opt.add_param_group({"params": [torch.zeros(3, 4).t().requires_grad_()]})
    assert len(opt.param_groups) == 1       # the bad group was not kept


def test_sparse_gradient_error_like_torch():
    for cls in (ft.Adam, torch.optim.Adam):
        p = torch.zeros(4, requires_grad=True)
        opt = cls([p])
        p.grad = torch.sparse_coo_tensor([[1]], [1.0], (4,), check_invariants=True)
        with pytest.raises(RuntimeError, match="does not support sparse gradients"):
            opt.step()
        assert torch.equal(p.detach(), torch.zeros(4))


def test_import_fastadam_does_not_import_torch():
    code = "import sys, fastadam; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_benchmark_smoke():
    """`fastadam bench --torch` machinery runs and reports both optimizers (no timing
    is asserted: the machine may be busy)."""
    from fastadam.torch import benchmark
    rows = benchmark.run(cases=((2000, 10),), steps=2)
    assert len(rows) == 1 and rows[0]["n_tensors"] == 10
    assert rows[0]["fastadam_s"] > 0 and rows[0]["torch_fused_s"] > 0
    assert rows[0]["floor_s"] > 0
    assert rows[0]["ceiling"] == rows[0]["torch_fused_s"] / rows[0]["floor_s"]
    text = benchmark.format_rows(rows)
    assert "torch fused" in text and "ceiling" in text


def test_all_six_algorithms_exported_with_torch_signatures():
    """NAdam, RAdam and SparseAdam are present (fastadam has them): subclasses of their
    torch.optim twins with the same signature and defaults."""
    import inspect
    for name in ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "SparseAdam"):
        ours, theirs = getattr(ft, name), getattr(torch.optim, name)
        assert issubclass(ours, theirs) and name in ft.__all__
        assert inspect.signature(ours) == inspect.signature(theirs)
        p = torch.zeros(3, requires_grad=True)
        assert ours([p]).defaults == theirs([p]).defaults


def test_param_appended_to_group_list_is_picked_up():
    opt, topt, ours, theirs = twins("Adam", dict(lr=1e-2), torch.float64)
    extra = torch.randn(4, dtype=torch.float64)
    a, b = extra.clone().requires_grad_(), extra.clone().requires_grad_()
    rng = np.random.default_rng(19)
    for t in range(10):
        if t == 4:
            opt.param_groups[0]["params"].append(a)
            topt.param_groups[0]["params"].append(b)
        grads = random_grads(rng, torch.float64, t)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        g = torch.from_numpy(rng.standard_normal(4))
        a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        topt.step()
    for p, q in zip(ours + [a], theirs + [b]):
        assert_close64(p, q)


def test_train_script_smoke(tmp_path):
    """scripts/train_torch.py runs end to end (3 steps of the digits MLP) and both
    optimizers see the same losses at the start."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    import json
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "scripts", "train_torch.py"),
                          "mlp", "--steps", "3", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(tmp_path / "mlp.json") as f:
        d = json.load(f)
    a, b = d["curves"]["fastadam"]["loss"], d["curves"]["torch_fused"]["loss"]
    assert len(a) == 3 and a[0] == b[0] and abs(a[2] - b[2]) < 1e-5 * abs(b[2])
    assert (tmp_path / "training.png").exists()


def test_nadam_mu_product_live_per_parameter_and_in_state_dict():
    """NAdam's mu_product: a 0-d tensor per parameter in self.state and the state_dict
    (torch's format), live (advanced by each step), a separate copy in the state_dict, and
    parameters of one group skipped on different steps keep their own product."""
    opt, topt, ours, theirs = twins("NAdam", dict(lr=1e-2), torch.float32)
    rng = np.random.default_rng(21)
    skip = lambda t, k: k == 1 and t % 2 == 1   # noqa: E731
    for t in range(7):
        grads = random_grads(rng, torch.float32, t, skip)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        topt.step()
        for p, q in zip(ours, theirs):
            a, b = opt.state[p]["mu_product"], topt.state[q]["mu_product"]
            assert a.shape == b.shape == () and a.dtype == b.dtype
            np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    assert float(opt.state[ours[1]]["mu_product"]) != float(opt.state[ours[0]]["mu_product"])
    sd, tsd = opt.state_dict(), topt.state_dict()
    for k in sd["state"]:
        assert list(sd["state"][k]) == list(tsd["state"][k])
    sd["state"][0]["mu_product"] *= 0
    assert float(opt.state[ours[0]]["mu_product"]) != 0
    bad = copy.deepcopy(sd)
    bad["state"][0]["mu_product"] = torch.tensor(float("nan"))
    opt.load_state_dict(bad)
    set_grads(ours, random_grads(rng, torch.float32, 0))
    before = [p.detach().clone() for p in ours]
    with pytest.raises(ValueError, match="mu_product"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, ours))


# ----------------------------------------------------------------------------- SparseAdam
def sparse_twins(dtype, seed=0, groups=False, **h):
    """Two embedding tables, a 1-D and a 3-D parameter, on both sides."""
    g = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=g, dtype=dtype)
            for s in [(40, 6), (25, 3), (30,), (12, 2, 3)]]
    ours = [x.clone().requires_grad_() for x in init]
    theirs = [x.clone().requires_grad_() for x in init]

    def build(cls, ps):
        if groups:
            return cls([dict(params=ps[:2], lr=2e-3), dict(params=ps[2:])], **h)
        return cls(ps, **h)
    return build(ft.SparseAdam, ours), build(torch.optim.SparseAdam, theirs), ours, theirs


def sparse_grads(rng, ps, t, skip=None):
    """Uncoalesced COO gradients (duplicate rows, as nn.Embedding(sparse=True) gives),
    some parameters without a gradient on some steps."""
    out = []
    for k, p in enumerate(ps):
        if skip is not None and skip(t, k):
            out.append(None)
            continue
        n = int(rng.integers(0, 9))
        rows = torch.from_numpy(rng.integers(0, p.shape[0], n))
        vals = torch.from_numpy(rng.standard_normal((n, *p.shape[1:])) * (1 + t % 5)).to(p.dtype)
        out.append(torch.sparse_coo_tensor(rows[None], vals, tuple(p.shape),
                                           check_invariants=True))
    return out


def _sparse_run(opt, topt, ours, theirs, rng, steps, skip=None):
    for t in range(steps):
        grads = sparse_grads(rng, ours, t, skip)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        topt.step()


@pytest.mark.usefixtures("torch_one_thread")   # conftest: tiny tensors, loaded cores
@pytest.mark.parametrize("h", [dict(lr=1e-2), dict(lr=1e-2, maximize=True, eps=1e-6),
                               dict(lr=3e-3, betas=(0.5, 0.9))], ids=str)
def test_sparse_adam_float64_parity_long_run(h):
    opt, topt, ours, theirs = sparse_twins(torch.float64, groups=True, **h)
    skip = lambda t, k: k in (1, 3) and (t + k) % 4 == 0   # noqa: E731
    _sparse_run(opt, topt, ours, theirs, np.random.default_rng(30), 300, skip)
    for p, q in zip(ours, theirs):
        assert_close64(p, q)
        st, tst = opt.state[p], topt.state[q]
        assert list(st) == list(tst) and st["step"] == tst["step"]
        assert type(st["step"]) is type(tst["step"]) is int
        for key in ("exp_avg", "exp_avg_sq"):
            assert st[key].shape == tst[key].shape
            assert_close64(st[key], tst[key])


@pytest.mark.usefixtures("torch_one_thread")   # conftest: tiny tensors, loaded cores
def test_sparse_adam_float32_parity_per_step():
    opt, topt, ours, theirs = sparse_twins(torch.float32, lr=1e-2)
    rng = np.random.default_rng(31)
    for t in range(60):
        before = [p.detach().clone().numpy() for p in ours]
        grads = sparse_grads(rng, ours, t, lambda t, k: k == 2 and t % 3 == 1)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        topt.step()
        for p, q, p0 in zip(ours, theirs, before):
            a, b = p.detach().numpy(), q.detach().numpy()
            scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), np.maximum(np.abs(p0), 1e-2))
            assert np.all(np.abs(a - b) <= 4 * np.spacing(scale))
        with torch.no_grad():
            for p, q in zip(ours, theirs):
                q.copy_(p)
                if q in topt.state:
                    for key in ("exp_avg", "exp_avg_sq"):
                        topt.state[q][key].copy_(opt.state[p][key])


def test_sparse_adam_embedding_training_matches_torch():
    """nn.Embedding(sparse=True) in a model: same parameters as torch.optim.SparseAdam,
    the gradient needs no coalescing on the torch side, and the state is zero-copy."""
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        models.append(torch.nn.Embedding(100, 16, sparse=True).double())
    opt = ft.SparseAdam(models[0].parameters(), lr=1e-2)
    topt = torch.optim.SparseAdam(models[1].parameters(), lr=1e-2)
    for t in range(50):
        idx = torch.randint(0, 100, (8, 5))
        for m, o in zip(models, (opt, topt)):
            o.zero_grad()
            m(idx).square().sum().backward()
        assert not models[0].weight.grad.is_coalesced()
        opt.step()
        topt.step()
    assert_close64(models[0].weight, models[1].weight)
    w = models[0].weight
    inner = opt._layout.inners[0][0]
    assert opt.state[w]["exp_avg"].data_ptr() == inner._m[0].ctypes.data   # zero-copy


@pytest.mark.parametrize("direction", ["fastadam_to_torch", "torch_to_fastadam"])
def test_sparse_adam_state_dict_loads_both_ways(direction):
    opt, topt, ours, theirs = sparse_twins(torch.float64, groups=True, lr=1e-2)
    ref, _, ref_ps, _ = sparse_twins(torch.float64, groups=True, lr=1e-2)
    src, dst = (opt, topt) if direction == "fastadam_to_torch" else (topt, opt)
    src_ps, dst_ps = (ours, theirs) if src is opt else (theirs, ours)
    skip = lambda t, k: k == 3 and t < 20    # noqa: E731  (param 3 has no state yet)
    rng, rng_ref = np.random.default_rng(32), np.random.default_rng(32)
    for t in range(15):
        set_grads(src_ps, sparse_grads(rng, src_ps, t, skip))
        src.step()
        set_grads(ref_ps, sparse_grads(rng_ref, ref_ps, t, skip))
        ref.step()
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert 3 not in sd["state"] and sd["state"][0]["step"] == 15
    with torch.no_grad():
        for p, q in zip(dst_ps, src_ps):
            p.copy_(q)
    dst.load_state_dict(sd)
    for t in range(15, 30):
        set_grads(dst_ps, sparse_grads(rng, dst_ps, t, skip))
        dst.step()
        set_grads(ref_ps, sparse_grads(rng_ref, ref_ps, t, skip))
        ref.step()
    for p, q in zip(dst_ps, ref_ps):
        assert_close64(p, q)
        assert dst.state[p]["step"] == ref.state[q]["step"]
        assert_close64(dst.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"])


def test_sparse_adam_errors_and_schedulers():
    opt, topt, ours, theirs = sparse_twins(torch.float64, lr=1e-2)
    before = [p.detach().clone() for p in ours]
    grads = sparse_grads(np.random.default_rng(33), ours, 0)
    grads[2] = torch.ones(30, dtype=torch.float64)          # dense: refused, like torch
    set_grads(ours, grads)
    with pytest.raises(RuntimeError, match="does not support dense gradients"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, ours)) and not opt.state
    # schedulers edit lr between steps
    opt, topt, ours, theirs = sparse_twins(torch.float64, lr=1e-2)
    s = torch.optim.lr_scheduler.StepLR(opt, 3, gamma=0.5)
    ts = torch.optim.lr_scheduler.StepLR(topt, 3, gamma=0.5)
    rng = np.random.default_rng(34)
    for t in range(12):
        _sparse_run(opt, topt, ours, theirs, rng, 1)
        s.step()
        ts.step()
    assert opt.param_groups[0]["lr"] == topt.param_groups[0]["lr"] < 1e-2
    for p, q in zip(ours, theirs):
        assert_close64(p, q)


# ----------------------------------------------------------------------------- grad patterns
@pytest.mark.parametrize("name", ["Adam", "NAdam", "RAdam"])
@pytest.mark.parametrize("patterns", ["alternating", "random"])
def test_changing_gradient_sets_match_torch(name, patterns, default_float64):
    """The set of parameters with gradients changes between steps (a branch used every
    other step; or a random subset each step, more patterns than the block cache keeps):
    parameters, state and step counts stay equal to torch's, and the state seen through
    opt.state is live (it is the buffer the next step updates)."""
    opt, topt, ours, theirs = twins(name, dict(lr=1e-2, weight_decay=0.1), torch.float64)
    rng = np.random.default_rng(40)
    if patterns == "alternating":
        skip = lambda t, k: k == 3 and t % 2 == 1 or k == 0 and t % 3 == 2   # noqa: E731
    else:
        masks = rng.random((200, len(SHAPES))) < 0.4
        skip = lambda t, k: bool(masks[t, k])   # noqa: E731
    for t in range(120):
        grads = random_grads(rng, torch.float64, t, skip)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        topt.step()
        if t % 17 == 0:
            for p, q in zip(ours, theirs):
                assert_close64(p, q)
    for p, q in zip(ours, theirs):
        assert_close64(p, q)
    compare_state(opt, topt, ours, theirs, assert_close64)
    # live: an in-place edit of the published moments is what the next step reads
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            opt.state[p]["exp_avg"].mul_(0.5)
            topt.state[q]["exp_avg"].mul_(0.5)
    grads = random_grads(rng, torch.float64, 0, lambda t, k: k == 2)
    set_grads(ours, grads)
    set_grads(theirs, grads)
    opt.step()
    topt.step()
    for p, q in zip(ours, theirs):
        assert_close64(p, q)
    compare_state(opt, topt, ours, theirs, assert_close64)


def test_alternating_gradient_sets_reuse_blocks():
    """After the first alternation no inner optimizer is built again: both patterns are
    unions of the same blocks (checked through the layout, not timed)."""
    opt, _, ours, _ = twins("Adam", dict(lr=1e-2), torch.float32)
    rng = np.random.default_rng(41)
    inners = set()
    for t in range(20):
        set_grads(ours, random_grads(rng, torch.float32, t, lambda t, k: k == 3 and t % 2))
        opt.step()
        if t >= 2:
            inners.update(id(b.inners[0][0]) for b in opt._layout.blocks)
    assert len(opt._layout.blocks) == 2 and len(inners) == 2
    assert len(opt._layout.patterns) == 2
