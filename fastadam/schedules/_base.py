"""The scheduler base class and argument checks shared by the schedules."""
from __future__ import annotations

import math
import numbers

from ..optim import Optimizer



# ---------------------------------------------------------------------------- checks
def _check_optimizer(optimizer):
    from ..distributed import ShardedOptimizer    # no MPI import: mpi4py loads lazily
    if not isinstance(optimizer, (Optimizer, ShardedOptimizer)):
        raise TypeError("optimizer must be a fastadam optimizer (fastadam.Adam, AdamW, ...), "
                        f"got {type(optimizer).__name__}")
    return optimizer


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value}")
    return int(value)


def _check_real(name, value, lo=None, hi=None, lo_open=False, hi_open=False):
    """A finite real number in the interval given by lo/hi (open or closed ends)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    x = float(value)
    ok = math.isfinite(x)
    if ok and lo is not None:
        ok = x > lo if lo_open else x >= lo
    if ok and hi is not None:
        ok = x < hi if hi_open else x <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ValueError(f"{name} must be finite and in {left}{lo_s}, {hi_s}{right}, got {value}")
    return x


def _per_group(name, value, optimizer, check):
    """One value per param group: a scalar is broadcast, a list/tuple must match."""
    n = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} must have one entry per param group ({n}), "
                             f"got {len(value)}")
        return [check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [check(name, value)] * n


# ---------------------------------------------------------------------------- base
class LRScheduler:
    """Base class. Subclasses define ``_factor(e)`` (closed form: lr_e = base_lr *
    factor(e)) and may override ``_chain(lr, base_lr, e)`` (the chainable step from
    epoch e-1 to e) and ``_initial_chain``.

    Attributes (as in torch): ``optimizer``, ``base_lrs``, ``last_epoch`` (-1 before the
    constructor's initial step, so 0 after construction), ``get_last_lr()``.
    """

    def __init__(self, optimizer, last_epoch=-1):
        _check_optimizer(optimizer)
        last_epoch = _check_int("last_epoch", last_epoch, -1)
        if last_epoch == -1:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
        else:
            for i, g in enumerate(optimizer.param_groups):
                if "initial_lr" not in g:
                    raise ValueError(f"last_epoch={last_epoch} resumes a schedule, but "
                                     f"optimizer.param_groups[{i}] has no 'initial_lr'; "
                                     "load the optimizer's state_dict first or use "
                                     "last_epoch=-1")
        self.optimizer = optimizer
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    # -- formulas (subclasses)
    def _factor(self, e):
        """lr_e / base_lr, or None when the schedule has no closed form."""
        raise NotImplementedError

    def _chain(self, lr, base_lr, e):
        """lr at epoch e given the group's lr at epoch e-1 (e >= 1)."""
        f0, f1 = self._factor(e - 1), self._factor(e)
        return lr if f1 == f0 else lr * (f1 / f0)

    def _initial_chain(self, lr, base_lr):
        """lr set by the constructor's step to epoch 0: the group's lr times factor(0)
        when starting (it is base_lr, or the previous scheduler's value when chaining),
        unchanged when resuming."""
        if self.last_epoch == 0:
            f = self._factor(0)
            return lr if f == 1.0 else lr * f
        return lr

    # -- public
    def _initial_step(self):
        self._step_count = 0
        self._initial = True
        try:
            self.step()
        finally:
            self._initial = False

    def get_lr(self):
        """The learning rates for epoch ``last_epoch``, one per param group (chainable:
        computed from the groups' current lr)."""
        groups = self.optimizer.param_groups
        if self._initial:
            return [self._initial_chain(float(g["lr"]), b) for g, b in zip(groups, self.base_lrs)]
        return [self._chain(float(g["lr"]), b, self.last_epoch)
                for g, b in zip(groups, self.base_lrs)]

    def _closed_form_lr(self):
        return [b * self._factor(self.last_epoch) for b in self.base_lrs]

    def step(self, epoch=None):
        """Advance one epoch (or, deprecated in torch, jump to ``epoch`` using the closed
        form) and write the new lr into every param group."""
        previous = self.last_epoch
        if epoch is None:
            self.last_epoch += 1
        else:
            self.last_epoch = _check_int("epoch", epoch, 0)
        try:
            if epoch is None:
                values = self.get_lr()
            else:
                values = self._closed_form_lr()
            values = [float(v) for v in values]
        except BaseException:
            self.last_epoch = previous
            raise
        self._step_count += 1
        for g, v in zip(self.optimizer.param_groups, values):
            g["lr"] = v
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self):
        """The learning rates the last step set, one per param group."""
        return list(self._last_lr)

    def state_dict(self):
        """A plain dict of the scheduler's state (everything but the optimizer)."""
        return {k: (list(v) if isinstance(v, list) else v)
                for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        """Restore :meth:`state_dict` of a scheduler of the same class."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = {"last_epoch", "base_lrs"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}; it is not a scheduler's "
                             "state_dict")
        if len(state_dict["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"state_dict['base_lrs'] has {len(state_dict['base_lrs'])} "
                             f"entries, the optimizer has {len(self.optimizer.param_groups)} "
                             "param groups")
        self.__dict__.update({k: (list(v) if isinstance(v, list) else v)
                              for k, v in state_dict.items()})

    def __repr__(self):
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self._last_lr})"


# ---------------------------------------------------------------------------- schedules
