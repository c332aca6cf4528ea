"""Schedules with phases: OneCycleLR (with momentum cycling) and SequentialLR."""
from __future__ import annotations

import math
from bisect import bisect_right

from ._base import LRScheduler, _check_int, _check_optimizer, _check_real, _per_group


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
