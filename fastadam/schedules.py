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
from __future__ import annotations

import math
import numbers
import types
from bisect import bisect_right

from .optimizer import Optimizer

__all__ = ["LRScheduler", "LambdaLR", "StepLR", "ExponentialLR", "CosineAnnealingLR",
           "LinearLR", "OneCycleLR", "SequentialLR", "InverseSqrtLR"]


# ---------------------------------------------------------------------------- checks
def _check_optimizer(optimizer):
    from .distributed import ShardedOptimizer     # no MPI import: mpi4py loads lazily
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
class LambdaLR(LRScheduler):
    """``lr_e = initial_lr * lr_lambda(e)``; ``lr_lambda`` is a function of the epoch or
    a list of them, one per param group. Not chainable (as in torch)."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        _check_optimizer(optimizer)
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"lr_lambda must have one function per param group ({n}), "
                                 f"got {len(lr_lambda)}")
            fns = list(lr_lambda)
        else:
            fns = [lr_lambda] * n
        for i, f in enumerate(fns):
            if not callable(f):
                where = f"lr_lambda[{i}]" if isinstance(lr_lambda, (list, tuple)) else "lr_lambda"
                raise TypeError(f"{where} must be callable, got {type(f).__name__}")
        self.lr_lambdas = fns
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return self._closed_form_lr()

    def _closed_form_lr(self):
        out = []
        for i, (f, b) in enumerate(zip(self.lr_lambdas, self.base_lrs)):
            x = f(self.last_epoch)
            if isinstance(x, bool) or not isinstance(x, numbers.Real):
                raise TypeError(f"lr_lambda[{i}]({self.last_epoch}) must return a real "
                                f"number, got {type(x).__name__}")
            if not (0.0 <= b * x < math.inf):
                raise ValueError(f"lr_lambda[{i}]({self.last_epoch}) = {x} gives an invalid "
                                 f"learning rate {b * x} for param_groups[{i}] (must be "
                                 "finite and >= 0)")
            out.append(b * x)
        return out

    def state_dict(self):
        """Functions are not saved; callable objects' ``__dict__`` are (torch rule)."""
        d = {k: v for k, v in super().state_dict().items() if k != "lr_lambdas"}
        d["lr_lambdas"] = [None if isinstance(f, types.FunctionType) else dict(f.__dict__)
                           for f in self.lr_lambdas]
        return d

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        saved = state_dict.pop("lr_lambdas", [None] * len(self.lr_lambdas))
        super().load_state_dict(state_dict)
        for f, s in zip(self.lr_lambdas, saved):
            if s is not None:
                f.__dict__.update(s)


class StepLR(LRScheduler):
    """``lr_e = initial_lr * gamma ** (e // step_size)``."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = _check_int("step_size", step_size, 1)
        self.gamma = _check_real("gamma", gamma, lo=0.0, lo_open=True)
        super().__init__(optimizer, last_epoch)

    def _factor(self, e):
        return self.gamma ** (e // self.step_size)

    def _chain(self, lr, base_lr, e):
        return lr * self.gamma if e % self.step_size == 0 else lr


class ExponentialLR(LRScheduler):
    """``lr_e = initial_lr * gamma ** e``."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = _check_real("gamma", gamma, lo=0.0, lo_open=True)
        super().__init__(optimizer, last_epoch)

    def _factor(self, e):
        return self.gamma ** e

    def _chain(self, lr, base_lr, e):
        return lr * self.gamma


class CosineAnnealingLR(LRScheduler):
    """``lr_e = eta_min + (initial_lr - eta_min) * (1 + cos(pi * e / T_max)) / 2``
    (SGDR without restarts). Past ``T_max`` the cosine continues, rising again to
    initial_lr at 2*T_max, as torch's does."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max = _check_int("T_max", T_max, 1)
        self.eta_min = _check_real("eta_min", eta_min, lo=0.0)
        super().__init__(optimizer, last_epoch)

    def _factor(self, e):   # only used for the epoch-0 step: cos(0) = 1
        return 1.0

    def _closed_form_lr(self):
        c = (1.0 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2.0
        return [self.eta_min + (b - self.eta_min) * c for b in self.base_lrs]

    def _chain(self, lr, base_lr, e):
        T = self.T_max
        before = 1.0 + math.cos(math.pi * (e - 1) / T)
        if (e - 1 - T) % (2 * T) == 0:
            # previous epoch was at the minimum (before == 0): take the closed-form increment
            return lr + (base_lr - self.eta_min) * (1.0 - math.cos(math.pi / T)) / 2.0
        now = 1.0 + math.cos(math.pi * e / T)
        return self.eta_min + (lr - self.eta_min) * (now / before)


class LinearLR(LRScheduler):
    """Linear warm-up (or decay) of the factor from ``start_factor`` to ``end_factor``
    over ``total_iters`` epochs, then constant:
    ``lr_e = initial_lr * (start + (end - start) * min(e, total_iters) / total_iters)``."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5,
                 last_epoch=-1):
        self.start_factor = _check_real("start_factor", start_factor, lo=0.0, hi=1.0,
                                        lo_open=True)
        self.end_factor = _check_real("end_factor", end_factor, lo=0.0, hi=1.0)
        self.total_iters = _check_int("total_iters", total_iters, 1)
        super().__init__(optimizer, last_epoch)

    def _factor(self, e):
        s, d = self.start_factor, self.end_factor - self.start_factor
        return s + d * min(e, self.total_iters) / self.total_iters

    def _chain(self, lr, base_lr, e):
        if e > self.total_iters:
            return lr
        s, d = self.start_factor, self.end_factor - self.start_factor
        # factor(e) / factor(e-1), written so that it is exactly 1 when d == 0
        return lr * (1.0 + d / (self.total_iters * s + (e - 1) * d))


class InverseSqrtLR(LRScheduler):
    """The paper's alpha/sqrt(t) decay (section 6):
    ``lr_e = initial_lr / sqrt(1 + e / timescale)``.

    With ``timescale=1`` (default) and one scheduler step per optimizer step, the
    optimizer's t-th step (t = e + 1 >= 1) uses exactly ``alpha / sqrt(t)``. A larger
    ``timescale`` delays the decay (lr halves after 3 * timescale epochs).
    """

    def __init__(self, optimizer, timescale=1.0, last_epoch=-1):
        self.timescale = _check_real("timescale", timescale, lo=0.0, lo_open=True)
        super().__init__(optimizer, last_epoch)

    def _factor(self, e):
        return 1.0 / math.sqrt(1.0 + e / self.timescale)

    def _chain(self, lr, base_lr, e):
        tau = self.timescale
        return lr * math.sqrt((1.0 + (e - 1) / tau) / (1.0 + e / tau))


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin), torch's OneCycleLR: stepped once per batch for
    ``total_steps`` (or ``epochs * steps_per_epoch``) steps.

    Phases (boundaries in steps, p = pct_start, N = total_steps):
    two-phase: initial_lr -> max_lr until p*N - 1, then max_lr -> min_lr until N - 1;
    three_phase: initial_lr -> max_lr until p*N - 1, max_lr -> initial_lr until
    2*p*N - 2, then initial_lr -> min_lr until N - 1. initial_lr = max_lr / div_factor,
    min_lr = initial_lr / final_div_factor. Within a phase of fraction x in [0, 1]:
    ``cos``: end + (start - end) * (1 + cos(pi x)) / 2; ``linear``: start + (end - start) x.
    With ``cycle_momentum`` beta1 (``betas[0]``) follows max_momentum -> base_momentum ->
    max_momentum inversely to the lr. Stepping beyond N raises ValueError. As in torch,
    the value at step N itself extrapolates the last phase (negative with ``linear``), so
    it must not be used for an optimizer step: step the schedule N times at most, after
    each optimizer step.
    """

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True,
                 base_momentum=0.85, max_momentum=0.95, div_factor=25.0,
                 final_div_factor=1e4, three_phase=False, last_epoch=-1):
        _check_optimizer(optimizer)
        if total_steps is not None:
            self.total_steps = _check_int("total_steps", total_steps, 1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (_check_int("epochs", epochs, 1)
                                * _check_int("steps_per_epoch", steps_per_epoch, 1))
        else:
            raise ValueError("OneCycleLR needs total_steps, or epochs and steps_per_epoch")
        pct_start = _check_real("pct_start", pct_start, lo=0.0, hi=1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        if not isinstance(cycle_momentum, bool):
            raise TypeError(f"cycle_momentum must be a bool, got {type(cycle_momentum).__name__}")
        if not isinstance(three_phase, bool):
            raise TypeError(f"three_phase must be a bool, got {type(three_phase).__name__}")
        div_factor = _check_real("div_factor", div_factor, lo=0.0, lo_open=True)
        final_div_factor = _check_real("final_div_factor", final_div_factor, lo=0.0,
                                       lo_open=True)
        pos = lambda name, v: _check_real(name, v, lo=0.0, lo_open=True)  # noqa: E731
        unit = lambda name, v: _check_real(name, v, lo=0.0, hi=1.0, hi_open=True)  # noqa: E731
        max_lrs = _per_group("max_lr", max_lr, optimizer, pos)
        N = self.total_steps
        if three_phase:
            self._phases = [
                (pct_start * N - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (2 * pct_start * N - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                (N - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
        else:
            self._phases = [
                (pct_start * N - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (N - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")]
        self.anneal_strategy = anneal_strategy
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            if "betas" not in optimizer.defaults:
                raise ValueError("cycle_momentum=True needs an optimizer with betas")
            max_ms = _per_group("max_momentum", max_momentum, optimizer, unit)
            base_ms = _per_group("base_momentum", base_momentum, optimizer, unit)
        if last_epoch == -1:
            for g, mx in zip(optimizer.param_groups, max_lrs):
                g["initial_lr"] = mx / div_factor
                g["max_lr"] = mx
                g["min_lr"] = g["initial_lr"] / final_div_factor
            if cycle_momentum:
                for g, mm, bm in zip(optimizer.param_groups, max_ms, base_ms):
                    g["betas"] = (mm, *tuple(g["betas"])[1:])
                    g["max_momentum"] = mm
                    g["base_momentum"] = bm
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start, end, x):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * x) + 1.0)
        return (end - start) * x + start

    def _at(self, g, step):
        """(lr, momentum) of group g at ``step``."""
        start = 0.0
        last = len(self._phases) - 1
        for i, (end, lr0, lr1, m0, m1) in enumerate(self._phases):
            if step <= end or i == last:
                x = (step - start) / (end - start) if end != start else 1.0
                lr = self._anneal(g[lr0], g[lr1], x)
                m = self._anneal(g[m0], g[m1], x) if self.cycle_momentum else None
                return lr, m
            start = end

    def get_lr(self):
        return self._closed_form_lr()

    def _closed_form_lr(self):
        if self.last_epoch > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {self.last_epoch} times, beyond "
                             f"total_steps={self.total_steps}")
        out = []
        for g in self.optimizer.param_groups:
            lr, m = self._at(g, self.last_epoch)
            out.append(lr)
        return out

    def step(self, epoch=None):
        super().step(epoch)
        if self.cycle_momentum:   # only after the lr step succeeded
            for g in self.optimizer.param_groups:
                _, m = self._at(g, self.last_epoch)
                g["betas"] = (m, *tuple(g["betas"])[1:])


class SequentialLR(LRScheduler):
    """Run ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]`` (restarted at
    its epoch 0 from initial_lr), and so on. ``milestones`` are strictly increasing
    positive epochs, one fewer than the schedulers, which must share ``optimizer``."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        _check_optimizer(optimizer)
        if isinstance(schedulers, LRScheduler) or not isinstance(schedulers, (list, tuple)):
            raise TypeError("schedulers must be a list of schedulers, got "
                            f"{type(schedulers).__name__}")
        if not schedulers:
            raise ValueError("schedulers must contain at least one scheduler")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler):
                raise TypeError(f"schedulers[{i}] must be a fastadam scheduler, got "
                                f"{type(s).__name__}")
            if s.optimizer is not optimizer:
                raise ValueError(f"schedulers[{i}] ({type(s).__name__}) acts on another "
                                 "optimizer; all must use the optimizer given to SequentialLR")
        if not isinstance(milestones, (list, tuple)):
            raise TypeError(f"milestones must be a list of ints, got {type(milestones).__name__}")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"milestones must have len(schedulers) - 1 = {len(schedulers) - 1} "
                             f"entries, got {len(milestones)}")
        ms = [_check_int(f"milestones[{i}]", m, 1) for i, m in enumerate(milestones)]
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {list(milestones)}")
        last_epoch = _check_int("last_epoch", last_epoch, -1)
        self.optimizer = optimizer
        self._schedulers = list(schedulers)
        self._milestones = ms
        self.last_epoch = last_epoch + 1
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"]
        for s in self._schedulers:      # undo the constructors' initial steps
            _undo(s)
        first = self._schedulers[bisect_right(ms, 0)]
        first._initial_step()
        self._step_count = 1
        self._last_lr = first.get_last_lr()

    def step(self):
        self.last_epoch += 1
        i = bisect_right(self._milestones, self.last_epoch)
        s = self._schedulers[i]
        if i > 0 and self._milestones[i - 1] == self.last_epoch:
            s.step(0)          # restart the next scheduler from its closed form at 0
        else:
            s.step()
        self._step_count += 1
        self._last_lr = s.get_last_lr()

    def state_dict(self):
        d = {k: v for k, v in super().state_dict().items() if k != "_schedulers"}
        d["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return d

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        subs = state_dict.pop("_schedulers", None)
        if not isinstance(subs, list) or len(subs) != len(self._schedulers):
            raise ValueError(f"state_dict['_schedulers'] must be a list of "
                             f"{len(self._schedulers)} scheduler state_dicts")
        super().load_state_dict(state_dict)
        for s, d in zip(self._schedulers, subs):
            s.load_state_dict(d)


def _undo(s):
    """Step back the leaf schedulers (a nested SequentialLR keeps its own epoch)."""
    if isinstance(s, SequentialLR):
        for sub in s._schedulers:
            _undo(sub)
    else:
        s.last_epoch -= 1
