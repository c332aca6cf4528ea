"""Closed-form multiplicative schedules: LambdaLR, StepLR, ExponentialLR,
CosineAnnealingLR, LinearLR and InverseSqrtLR (the paper's alpha/sqrt(t))."""
from __future__ import annotations

import math
import numbers
import types

from ._base import LRScheduler, _check_int, _check_optimizer, _check_real


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


