"""Many low-precision arrays in one launch (fastadam/lowp_multi.py,
fastadam/kernels/lowp_multi.py): bit-identical to one ``adam_step_lowp`` call per array,
serial and parallel, for every parameter format, state layout and precision mode, with
groups of different hyperparameters; and fastadam.torch's 16-bit step runs one launch."""
import copy

import numpy as np
import pytest

from fastadam import lowp
from fastadam import lowp_multi as LM
from fastadam.kernels import adam_lowp as A

BF = lowp._bfloat16()

# (param dtype, state dtype, precision option, parallel too): every address column of
# the table (master copy, compensation buffer, bfloat16 and int8 state with its scales),
# both parameter widths and the stochastic-rounding keys; each layout compiles its own
# kernels, so the list is kept short (the layouts' arithmetic is adam_lowp's
# segment_plain / segment_q8, tested per array in test_lowp*.py).
LAYOUTS = [
    ("bfloat16", "float32", "master", False),
    ("float16", "bfloat16", "compensation", False),
    ("bfloat16", "bfloat16", "stochastic", True),
    ("float32", "int8", "nearest", True),
]
# Two groups that share the kernel (weight decay on, maximize off) and differ in every
# value of their rows: one launch, each item reading its own group's row.
GROUPS = [dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, maximize=False,
               seed=3),
          dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, maximize=False,
               seed=11)]


def _dtype(name):
    return BF if name == "bfloat16" else np.dtype(name)


def _setup(pdt, sdt, opt, sizes, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(np.float32).astype(_dtype(pdt)) for n in sizes]
    states = [lowp.init_lowp_state(p, state_dtype=sdt, master_weights=opt == "master",
                                   compensation=opt == "compensation") for p in params]
    return params, states


def _per_array(params, states, grads, group_of, step, rounding, decoupled):
    for p, st, g, gi in zip(params, states, grads, group_of):
        h = GROUPS[gi]
        lowp.adam_step_lowp(p, g, st, step=step, lr=h["lr"], betas=h["betas"], eps=h["eps"],
                            weight_decay=h["weight_decay"], maximize=h["maximize"],
                            decoupled_weight_decay=decoupled, rounding=rounding,
                            seed=h["seed"])


def _multi(ms, grads, step, rounding, decoupled):
    from fastadam.functional import _ADAM
    h = np.array([_ADAM.setup(g["lr"], g["betas"], g["eps"], g["weight_decay"], decoupled,
                              False, g["maximize"], True, "paper").h for g in GROUPS])
    keys = np.array([lowp.sr_key(g["seed"], step) if rounding == "stochastic" else 0
                     for g in GROUPS], np.int64)
    ms.step(grads, h, np.full(len(GROUPS), step, np.int64), keys)


CASES = [(pdt, sdt, opt, sizes) for pdt, sdt, opt, par in LAYOUTS
         for sizes in ([(5, 16384 + 300, 777, 0)]                 # serial: below the threshold
                       + ([(70000, 300, 17)] if par else []))]    # parallel


@pytest.mark.parametrize("pdt,sdt,opt,sizes", CASES)
def test_one_launch_equals_one_call_per_array(pdt, sdt, opt, sizes):
    rounding = "stochastic" if opt == "stochastic" else "nearest"
    decoupled = opt != "master"            # both weight-decay kinds
    params, states = _setup(pdt, sdt, opt, sizes)
    p2, s2 = copy.deepcopy(params), copy.deepcopy(states)
    group_of = [j % 2 for j in range(len(sizes))]
    pk = lowp._param_kind(params[0].dtype)
    ms = LM.MultiStep(p2, s2, group_of, [lowp.pmode_of(pk, st, rounding) for st in s2],
                      [lowp.wd_mode(g["weight_decay"], decoupled) for g in GROUPS],
                      [g["maximize"] for g in GROUPS])
    assert len(ms.launches) == 1
    rng = np.random.default_rng(1)
    for step in (1, 2, 3):
        grads = [rng.standard_normal(p.shape[0]).astype(np.float32).astype(p.dtype)
                 for p in params]
        _per_array(params, states, grads, group_of, step, rounding, decoupled)
        _multi(ms, grads, step, rounding, decoupled)
        for a, b in zip(params, p2):
            assert a.tobytes() == b.tobytes()
        for sa, sb in zip(states, s2):
            assert sa.keys() == sb.keys()
            for k in sa:
                assert sa[k].tobytes() == sb[k].tobytes(), k
    assert any(not np.array_equal(a.astype(np.float32), b.astype(np.float32))
               for a, b in zip(params, _setup(pdt, sdt, opt, sizes)[0]))   # it moved


def test_one_layout_one_launch(monkeypatch):
    params, states = _setup("bfloat16", "float32", "master", (300, 20000, 9, 40000))
    calls = []
    real = lowp.launch
    monkeypatch.setattr(lowp, "launch", lambda k, n, *a: (calls.append(n), real(k, n, *a)))
    ms = LM.MultiStep(params, states, [0, 0, 0, 0],
                      [A.PMODE_MASTER] * 4, [lowp.wd_mode(0.0, True)], [False])
    grads = [np.ones(p.shape, p.dtype) for p in params]
    h = np.array([__import__("fastadam.functional", fromlist=["_ADAM"])._ADAM.setup(
        1e-3, (0.9, 0.999), 1e-8, 0.0, True, False, False, True, "paper").h])
    ms.step(grads, h, np.array([1]), np.array([0]))
    assert calls == [300 + 20000 + 9 + 40000]


def test_torch_16bit_step_is_one_launch_per_dtype(monkeypatch):
    torch = pytest.importorskip("torch")
    from fastadam.torch import Adam
    ps = [torch.randn(n, dtype=dt, requires_grad=True)
          for dt in (torch.bfloat16, torch.float16) for n in (50, 3000, 7) * 3]
    opt = Adam(ps, lr=1e-3)
    ref = [p.detach().float().clone() for p in ps]
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()                                 # builds the layout
    calls = []
    real = lowp.launch
    monkeypatch.setattr(lowp, "launch", lambda k, n, *a: (calls.append(n), real(k, n, *a)))
    opt.step()
    assert sorted(calls) == [sum(p.numel() for p in ps) // 2] * 2     # one per dtype
    assert all(not torch.equal(p.detach().float(), r) for p, r in zip(ps, ref))


def test_torch_16bit_rows_kept_and_per_step_lr_taken(monkeypatch):
    """fastadam.torch's 16-bit inner optimizer keeps its kernel rows between steps: an
    unchanged step rebuilds nothing and passes the same arrays; an lr scheduler's change
    is taken at the very next step (bit-identical to adam_step_lowp with that lr)."""
    torch = pytest.importorskip("torch")
    from fastadam.kernels.spec import H_LR
    from fastadam.torch import Adam
    from fastadam.torch._lowp import LowpInner
    rng = np.random.default_rng(5)
    p = torch.tensor(rng.standard_normal(300).astype(np.float32)).to(torch.bfloat16)
    p.requires_grad_()
    ref = p.detach().view(torch.int16).numpy().view(BF).copy()
    st = lowp.init_lowp_state(ref, state_dtype="float32", master_weights=True)
    opt = Adam([p], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 ** k)
    seen, builds = [], []
    step, build = LM.MultiStep.step, LowpInner._build_rows
    monkeypatch.setattr(LM.MultiStep, "step", lambda self, g, h, t, keys: (
        seen.append((h, t, keys, h.copy(), t.copy())), step(self, g, h, t, keys)))
    monkeypatch.setattr(LowpInner, "_build_rows",
                        lambda self, groups: (builds.append(1), build(self, groups)))
    for k in range(5):
        g = rng.standard_normal(300).astype(np.float32).astype(BF)
        p.grad = torch.from_numpy(g.view(np.int16)).view(torch.bfloat16)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        lowp.adam_step_lowp(ref, g, st, step=k + 1, lr=lr)
        assert np.array_equal(p.detach().view(torch.int16).numpy(), ref.view(np.int16)), k
        assert len(builds) == 1 + max(0, k - 2), k      # rebuilt only after an lr change
        if k >= 2:
            sched.step()                                # steps 3 and 4: lr halves
    assert all(s[0] is seen[0][0] and s[1] is seen[0][1] and s[2] is seen[0][2]
               for s in seen)                           # the same arrays every step
    assert [int(s[4][0]) for s in seen] == [1, 2, 3, 4, 5]
    assert [s[3][0, H_LR] for s in seen] == [1e-2, 1e-2, 1e-2, 5e-3, 2.5e-3]
    assert np.array_equal(opt.state[p]["master"].numpy(), st["master"])
