"""Learning-rate schedules acting on an optimizer's ``param_groups`` (torch convention).

Names, signatures and trajectories follow ``torch.optim.lr_scheduler``: a scheduler takes
a fastadam optimizer, records ``param_groups[i]["initial_lr"]`` (its ``base_lrs``), sets
``param_groups[i]["lr"]`` for epoch 0 when constructed, and advances one epoch per
:meth:`LRScheduler.step` (call it after ``opt.step()``; an "epoch" is whatever unit you
step it in, often one optimizer step)::

    opt = fa.Adam(params, lr=1e-3)
    sched = fa.schedules.CosineAnnealingLR(opt, T_max=100)
    for _ in range(100):
        opt.step(grads)
        sched.step()

Like torch's, the multiplicative schedules are *chainable*: each step rescales the
group's current ``lr`` by the ratio of the schedule's factor at this epoch and the
previous one, so several schedulers stepped together compose (their factors multiply)
and the trajectory of a lone scheduler equals its closed form
``lr_e = initial_lr * factor(e)``. The closed forms are in each class's docstring.
``step(epoch)`` (deprecated in torch) jumps to ``epoch`` with the closed form.
Resuming with ``last_epoch >= 0`` needs ``initial_lr`` in the groups (load the
optimizer's state_dict first) and leaves the groups' lr as loaded; prefer
``load_state_dict``. Differences from torch: bad arguments raise TypeError/ValueError
naming the argument (torch accepts some, e.g. a negative gamma), and no warning is
issued when the scheduler is stepped before the optimizer.

:class:`InverseSqrtLR` is the paper's alpha/sqrt(t) decay (Kingma & Ba, section 6):
``lr_e = initial_lr / sqrt(1 + e / timescale)``; with ``timescale=1`` and one scheduler
step per optimizer step, optimizer step t (1-based) uses ``alpha / sqrt(t)``.

Nothing here imports torch.
"""
from ._base import LRScheduler
from .composite import OneCycleLR, SequentialLR
from .simple import (CosineAnnealingLR, ExponentialLR, InverseSqrtLR, LambdaLR, LinearLR,
                     StepLR)

__all__ = ["LRScheduler", "LambdaLR", "StepLR", "ExponentialLR", "CosineAnnealingLR",
           "LinearLR", "OneCycleLR", "SequentialLR", "InverseSqrtLR"]
