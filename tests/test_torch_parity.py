"""Parity with torch.optim.Adam / AdamW: same hyperparameters, same gradient sequence,
100 steps. Skipped when torch is not installed (CI installs it)."""
import numpy as np
import pytest

import fastadam as fa

torch = pytest.importorskip("torch")

CASES = [
    (fa.Adam, "Adam", dict(lr=1e-2)),
    (fa.Adam, "Adam", dict(lr=1e-2, amsgrad=True)),
    (fa.Adam, "Adam", dict(lr=1e-2, maximize=True)),
    (fa.Adam, "Adam", dict(lr=3e-3, weight_decay=0.1, amsgrad=True, maximize=True)),
    (fa.Adam, "Adam", dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-6)),
    (fa.AdamW, "AdamW", dict(lr=1e-2)),
    (fa.AdamW, "AdamW", dict(lr=1e-2, weight_decay=0.3, amsgrad=True)),
    (fa.AdamW, "AdamW", dict(lr=1e-2, weight_decay=0.3, maximize=True, amsgrad=True)),
]
IDS = [f"{t}-" + "-".join(f"{k}{v}" for k, v in h.items()) for _, t, h in CASES]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,tname,h", CASES, ids=IDS)
def test_matches_torch_over_100_steps(cls, tname, h, dtype, launch_mode):
    rng = np.random.default_rng(0)
    shapes = [(7, 3), (50,), (1,)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ours = [x.copy() for x in init]
    theirs = [torch.tensor(x.copy(), requires_grad=True) for x in init]
    opt = cls(ours, **h)
    topt = getattr(torch.optim, tname)(theirs, **h)
    steps = 100
    for t in range(steps):
        grads = [(rng.standard_normal(s) * (1 + (t % 5))).astype(dtype) for s in shapes]
        opt.step(grads)
        for tp, g in zip(theirs, grads):
            tp.grad = torch.from_numpy(g.copy())
        topt.step()
    for i, (a, tp) in enumerate(zip(ours, theirs)):
        b = tp.detach().numpy()
        st, tst = opt.state[i], topt.state[tp]
        if dtype == np.float64:
            # Relative 1e-12 of the array's scale: torch evaluates the same formula in a
            # different order (lerp, addcdiv), a few ulp per step.
            for got, want in [(a, b), (st["exp_avg"], tst["exp_avg"].numpy()),
                              (st["exp_avg_sq"], tst["exp_avg_sq"].numpy())]:
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
        else:
            # Both float32 trajectories round p every step: a few ulp of |p| per step.
            tol = 4 * steps * np.finfo(np.float32).eps * np.maximum(np.abs(b), 1e-2)
            np.testing.assert_array_less(np.abs(a - b), tol)
        if h.get("amsgrad"):
            np.testing.assert_allclose(st["max_exp_avg_sq"], tst["max_exp_avg_sq"].numpy(),
                                       rtol=1e-5 if dtype == np.float32 else 1e-12)
        assert st["step"] == int(tst["step"])
