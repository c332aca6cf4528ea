"""Learning-rate schedules: trajectories equal torch.optim.lr_scheduler's (1e-12 relative)
for the same arguments, closed forms, state_dict round trips, and argument validation."""
import math
import subprocess
import sys

import numpy as np
import pytest

import fastadam as fa
from fastadam import schedules as S

REL = 1e-12
LRS = (0.1, 0.03)          # two param groups with different lrs everywhere


def fa_opt(lrs=LRS):
    return fa.Adam([{"params": [np.zeros(3)], "lr": lr} for lr in lrs])


def torch_opt(torch, lrs=LRS):
    return torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(3))], "lr": lr}
                             for lr in lrs])


def close(a, b):
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-300)


def trajectory(opt, scheds, steps, step_opt):
    """lrs, betas[0]s and get_last_lr() of every group after construction and each step."""
    out = []

    def record():
        out.append(([float(g["lr"]) for g in opt.param_groups],
                    [float(g["betas"][0]) for g in opt.param_groups],
                    [float(x) for x in scheds[-1].get_last_lr()]))
    record()
    for _ in range(steps):
        step_opt()
        for s in scheds:
            s.step()
        record()
    return out


def fa_step(opt):
    grads = [np.zeros(3) for _ in opt.param_groups]
    return lambda: opt.step(grads)     # the optimizer accepts every lr/beta the schedule sets


def assert_same(mine, ref, what):
    assert len(mine) == len(ref)
    for e, ((lr_a, b_a, last_a), (lr_b, b_b, last_b)) in enumerate(zip(mine, ref)):
        for k in range(len(lr_a)):
            assert close(lr_a[k], lr_b[k]), f"{what}: epoch {e} group {k} lr {lr_a[k]!r} != torch {lr_b[k]!r}"
            assert close(b_a[k], b_b[k]), f"{what}: epoch {e} group {k} beta1 {b_a[k]!r} != torch {b_b[k]!r}"
            assert close(last_a[k], last_b[k]), f"{what}: epoch {e} get_last_lr differs"


# Each case: name, a builder taking (module with the scheduler classes, optimizer) and
# returning the list of schedulers stepped together, and the number of steps.
def lam(e):
    return 0.95 ** e


def lam2(e):
    return 1.0 / (1 + e)


CASES = [
    ("StepLR(3, 0.5)", lambda M, o: [M.StepLR(o, step_size=3, gamma=0.5)], 40),
    ("StepLR(1, 0.9)", lambda M, o: [M.StepLR(o, 1, 0.9)], 40),
    ("StepLR(7, 2.0)", lambda M, o: [M.StepLR(o, step_size=7, gamma=2.0)], 40),
    ("ExponentialLR(0.9)", lambda M, o: [M.ExponentialLR(o, gamma=0.9)], 200),
    ("ExponentialLR(0.999)", lambda M, o: [M.ExponentialLR(o, 0.999)], 1000),
    ("ExponentialLR(1.01)", lambda M, o: [M.ExponentialLR(o, gamma=1.01)], 100),
    ("Cosine(10)", lambda M, o: [M.CosineAnnealingLR(o, T_max=10)], 45),
    ("Cosine(7, 1e-3)", lambda M, o: [M.CosineAnnealingLR(o, T_max=7, eta_min=1e-3)], 40),
    ("Cosine(1)", lambda M, o: [M.CosineAnnealingLR(o, 1)], 6),
    ("Cosine(100)", lambda M, o: [M.CosineAnnealingLR(o, T_max=100, eta_min=1e-4)], 250),
    ("LinearLR()", lambda M, o: [M.LinearLR(o)], 12),
    ("LinearLR(0.1,1,10)", lambda M, o: [M.LinearLR(o, start_factor=0.1, total_iters=10)], 20),
    ("LinearLR(1,0,8)", lambda M, o: [M.LinearLR(o, 1.0, 0.0, 8)], 15),
    ("LinearLR(0.5,0.5,3)", lambda M, o: [M.LinearLR(o, 0.5, 0.5, total_iters=3)], 6),
    ("LambdaLR", lambda M, o: [M.LambdaLR(o, lam)], 30),
    ("LambdaLR list", lambda M, o: [M.LambdaLR(o, [lam, lam2])], 30),
    ("OneCycle", lambda M, o: [M.OneCycleLR(o, max_lr=0.01, total_steps=100)], 100),
    ("OneCycle linear", lambda M, o: [M.OneCycleLR(o, 0.5, total_steps=37,
                                                   anneal_strategy="linear")], 37),
    ("OneCycle 3-phase", lambda M, o: [M.OneCycleLR(o, max_lr=[0.2, 0.05], epochs=5,
                                                    steps_per_epoch=11, pct_start=0.25,
                                                    three_phase=True)], 55),
    ("OneCycle momenta", lambda M, o: [M.OneCycleLR(o, 1.0, total_steps=50, pct_start=0.4,
                                                    base_momentum=[0.8, 0.7],
                                                    max_momentum=0.99, div_factor=10.0,
                                                    final_div_factor=100.0)], 50),
    ("OneCycle no momentum", lambda M, o: [M.OneCycleLR(o, 0.3, total_steps=20,
                                                        cycle_momentum=False)], 20),
    ("Sequential warmup+exp", lambda M, o: [M.SequentialLR(
        o, [M.LinearLR(o, 0.1, total_iters=5), M.ExponentialLR(o, 0.9)], milestones=[5])], 30),
    ("Sequential 3", lambda M, o: [M.SequentialLR(
        o, [M.LambdaLR(o, lam), M.CosineAnnealingLR(o, T_max=10, eta_min=1e-3),
            M.StepLR(o, 4, 0.5)], milestones=[3, 13])], 40),
    ("Sequential warmup+cosine", lambda M, o: [M.SequentialLR(
        o, [M.LinearLR(o, 0.01, 1.0, 4), M.CosineAnnealingLR(o, 20)], [4])], 30),
    ("chained Linear*Exp", lambda M, o: [M.LinearLR(o, 0.2, total_iters=6),
                                         M.ExponentialLR(o, 0.95)], 30),
    ("chained Cosine*Step", lambda M, o: [M.CosineAnnealingLR(o, 12, 1e-3),
                                          M.StepLR(o, 5, 0.5)], 30),
]


@pytest.mark.parametrize("name,build,steps", CASES, ids=[c[0] for c in CASES])
def test_trajectory_matches_torch(name, build, steps):
    torch = pytest.importorskip("torch")
    import torch.optim.lr_scheduler as TS
    o = fa_opt()
    mine = trajectory(o, build(S, o), steps, fa_step(o))
    t = torch_opt(torch)
    ref = trajectory(t, build(TS, t), steps, t.step)
    assert_same(mine, ref, name)
    for g, tg in zip(o.param_groups, t.param_groups):
        assert close(g["initial_lr"], tg["initial_lr"]), "initial_lr recorded differently"


def test_onecycle_raises_past_total_steps_like_torch():
    torch = pytest.importorskip("torch")
    import torch.optim.lr_scheduler as TS
    t = torch_opt(torch)
    ts = TS.OneCycleLR(t, 0.1, total_steps=5)
    o = fa_opt()
    s = S.OneCycleLR(o, 0.1, total_steps=5)
    for _ in range(5):
        t.step()
        ts.step()
        s.step()
    with pytest.raises(ValueError):
        ts.step()
    lr_before = [g["lr"] for g in o.param_groups]
    with pytest.raises(ValueError, match="total_steps=5"):
        s.step()
    assert [g["lr"] for g in o.param_groups] == lr_before, "a failed step changed the lr"
    assert s.last_epoch == 5


def test_inverse_sqrt_is_alpha_over_sqrt_t():
    o = fa_opt((0.2,))
    s = S.InverseSqrtLR(o)
    for t in range(1, 500):      # optimizer step t uses the lr set before it
        assert close(o.param_groups[0]["lr"], 0.2 / math.sqrt(t)), f"step {t}"
        o.step([np.zeros(3)])
        s.step()


@pytest.mark.parametrize("tau", [1.0, 10.0, 0.3])
def test_inverse_sqrt_matches_torch_lambda(tau):
    torch = pytest.importorskip("torch")
    import torch.optim.lr_scheduler as TS
    o = fa_opt()
    mine = trajectory(o, [S.InverseSqrtLR(o, timescale=tau)], 300, fa_step(o))
    t = torch_opt(torch)
    ref = trajectory(t, [TS.LambdaLR(t, lambda e: 1.0 / math.sqrt(1.0 + e / tau))], 300, t.step)
    assert_same(mine, ref, f"InverseSqrtLR({tau})")


@pytest.mark.parametrize("build,closed", [
    (lambda o: S.StepLR(o, 4, 0.3), lambda b, e: b * 0.3 ** (e // 4)),
    (lambda o: S.ExponentialLR(o, 0.97), lambda b, e: b * 0.97 ** e),
    (lambda o: S.CosineAnnealingLR(o, 9, 0.01),
     lambda b, e: 0.01 + (b - 0.01) * (1 + math.cos(math.pi * e / 9)) / 2),
    (lambda o: S.LinearLR(o, 0.25, 0.75, 6), lambda b, e: b * (0.25 + 0.5 * min(e, 6) / 6)),
    (lambda o: S.InverseSqrtLR(o, 5.0), lambda b, e: b / math.sqrt(1 + e / 5.0)),
], ids=["step", "exp", "cosine", "linear", "invsqrt"])
def test_trajectory_equals_closed_form(build, closed):
    o = fa_opt()
    s = build(o)
    for e in range(40):
        for g, b in zip(o.param_groups, LRS):
            assert math.isclose(g["lr"], closed(b, e), rel_tol=1e-12, abs_tol=1e-15), \
                f"{type(s).__name__} epoch {e}: {g['lr']} != closed form {closed(b, e)}"
        assert s.last_epoch == e
        s.step()


def test_step_with_epoch_uses_closed_form():
    o = fa_opt()
    s = S.ExponentialLR(o, 0.5)
    s.step(3)
    assert s.last_epoch == 3
    assert s.get_last_lr() == pytest.approx([0.1 / 8, 0.03 / 8], rel=1e-15)


@pytest.mark.parametrize("build", [
    lambda o: S.StepLR(o, 3, 0.5),
    lambda o: S.CosineAnnealingLR(o, 8, 1e-3),
    lambda o: S.OneCycleLR(o, 0.3, total_steps=30, three_phase=True),
    lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, total_iters=4),
                                 S.ExponentialLR(o, 0.9)], [4]),
    lambda o: S.InverseSqrtLR(o, 2.0),
], ids=["step", "cosine", "onecycle", "sequential", "invsqrt"])
def test_state_dict_round_trip_resumes_the_trajectory(build):
    o1 = fa_opt()
    s1 = build(o1)
    for _ in range(7):
        s1.step()
    opt_sd, sched_sd = o1.state_dict(), s1.state_dict()
    assert "optimizer" not in sched_sd
    rest1 = []
    for _ in range(15):
        s1.step()
        rest1.append((s1.get_last_lr(), [g["betas"][0] for g in o1.param_groups]))

    o2 = fa_opt()
    s2 = build(o2)
    o2.load_state_dict(opt_sd)
    s2.load_state_dict(sched_sd)
    assert s2.last_epoch == 7
    rest2 = []
    for _ in range(15):
        s2.step()
        rest2.append((s2.get_last_lr(), [g["betas"][0] for g in o2.param_groups]))
    assert rest1 == rest2


def test_state_dict_is_a_copy():
    o = fa_opt()
    s = S.StepLR(o, 2)
    sd = s.state_dict()
    sd["base_lrs"][0] = 99.0
    assert s.base_lrs[0] == 0.1


def test_lambda_state_dict_saves_callable_objects_only():
    class Decay:
        def __init__(self, rate):
            self.rate = rate

        def __call__(self, e):
            return self.rate ** e
    o = fa_opt()
    s = S.LambdaLR(o, [Decay(0.5), lam])
    sd = s.state_dict()
    assert sd["lr_lambdas"] == [{"rate": 0.5}, None]
    o2 = fa_opt()
    s2 = S.LambdaLR(o2, [Decay(0.9), lam])
    s2.load_state_dict(sd)
    assert s2.lr_lambdas[0].rate == 0.5


def test_initial_lr_is_kept_when_a_second_scheduler_is_built():
    o = fa_opt()
    S.LinearLR(o, 0.1)
    s = S.ExponentialLR(o, 0.5)
    assert s.base_lrs == list(LRS)
    assert [g["initial_lr"] for g in o.param_groups] == list(LRS)


def test_resume_needs_initial_lr():
    with pytest.raises(ValueError, match="initial_lr"):
        S.StepLR(fa_opt(), 3, last_epoch=5)
    o = fa_opt()
    for g in o.param_groups:
        g["initial_lr"] = g["lr"]
    s = S.ExponentialLR(o, 0.5, last_epoch=4)
    assert s.last_epoch == 5


def test_lambda_returning_bad_value_raises_and_changes_nothing():
    o = fa_opt()
    s = S.LambdaLR(o, lambda e: 1.0 if e < 2 else -1.0)
    s.step()
    with pytest.raises(ValueError, match="invalid learning rate"):
        s.step()
    assert s.last_epoch == 1 and [g["lr"] for g in o.param_groups] == list(LRS)
    s2 = S.LambdaLR(fa_opt(), lambda e: "x" if e else 1.0)
    with pytest.raises(TypeError, match="lr_lambda"):
        s2.step()


BAD = [
    (lambda o: S.StepLR(object(), 3), TypeError, "optimizer must be a fastadam optimizer"),
    (lambda o: S.StepLR(o, 0), ValueError, "step_size must be positive"),
    (lambda o: S.StepLR(o, 2.5), TypeError, "step_size must be an int"),
    (lambda o: S.StepLR(o, True), TypeError, "step_size must be an int"),
    (lambda o: S.StepLR(o, 3, gamma=-0.1), ValueError, "gamma"),
    (lambda o: S.StepLR(o, 3, last_epoch=-2), ValueError, "last_epoch"),
    (lambda o: S.ExponentialLR(o, float("nan")), ValueError, "gamma"),
    (lambda o: S.ExponentialLR(o, "0.9"), TypeError, "gamma must be a real number"),
    (lambda o: S.CosineAnnealingLR(o, 0), ValueError, "T_max must be positive"),
    (lambda o: S.CosineAnnealingLR(o, 10, eta_min=-1.0), ValueError, "eta_min"),
    (lambda o: S.LinearLR(o, start_factor=0.0), ValueError, "start_factor"),
    (lambda o: S.LinearLR(o, start_factor=1.5), ValueError, "start_factor"),
    (lambda o: S.LinearLR(o, end_factor=1.5), ValueError, "end_factor"),
    (lambda o: S.LinearLR(o, total_iters=0), ValueError, "total_iters must be positive"),
    (lambda o: S.LambdaLR(o, 0.9), TypeError, "lr_lambda must be callable"),
    (lambda o: S.LambdaLR(o, [lam]), ValueError, "one function per param group"),
    (lambda o: S.InverseSqrtLR(o, timescale=0.0), ValueError, "timescale"),
    (lambda o: S.OneCycleLR(o, 0.1), ValueError, "total_steps, or epochs and steps_per_epoch"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=0), ValueError, "total_steps must be positive"),
    (lambda o: S.OneCycleLR(o, 0.1, epochs=2, steps_per_epoch=-1), ValueError,
     "steps_per_epoch must be positive"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=10, pct_start=1.5), ValueError, "pct_start"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=10, anneal_strategy="exp"), ValueError,
     "anneal_strategy"),
    (lambda o: S.OneCycleLR(o, [0.1], total_steps=10), ValueError, "max_lr must have one entry"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=10, max_momentum=1.0), ValueError,
     "max_momentum"),
    (lambda o: S.OneCycleLR(o, -0.1, total_steps=10), ValueError, "max_lr"),
    (lambda o: S.LambdaLR(o, [lam, 2.0]), TypeError, r"lr_lambda\[1\] must be callable"),
]

BAD_SEQUENTIAL = [
    (lambda o: S.SequentialLR(o, [], []), ValueError, "at least one scheduler"),
    (lambda o: S.SequentialLR(o, S.StepLR(o, 2), []), TypeError, "schedulers must be a list"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.StepLR(o, 3)], [5, 6]), ValueError,
     "milestones must have"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.StepLR(o, 3), S.StepLR(o, 4)], [5, 5]),
     ValueError, "strictly increasing"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.StepLR(o, 3)], [0]), ValueError,
     r"milestones\[0\] must be positive"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), "x"], [3]), TypeError, r"schedulers\[1\]"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.StepLR(fa_opt(), 3)], [3]), ValueError,
     "another optimizer"),
]


@pytest.mark.parametrize("build,exc,match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_arguments_raise_naming_the_argument(build, exc, match):
    o = fa_opt()
    before = [{k: v for k, v in g.items() if k != "params"} for g in o.param_groups]
    with pytest.raises(exc, match=match):
        build(o)
    after = [{k: v for k, v in g.items() if k != "params"} for g in o.param_groups]
    assert after == before, "a rejected constructor modified the param groups"


@pytest.mark.parametrize("build,exc,match", BAD_SEQUENTIAL,
                         ids=[b[2][:40] for b in BAD_SEQUENTIAL])
def test_bad_sequential_arguments_raise_naming_the_argument(build, exc, match):
    with pytest.raises(exc, match=match):
        build(fa_opt())


def test_fastadam_does_not_import_torch():
    code = ("import sys, fastadam, fastadam.schedules as s; "
            "import numpy as np; o = fastadam.Adam([np.zeros(2)]); s.OneCycleLR(o, 0.1, total_steps=3); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
