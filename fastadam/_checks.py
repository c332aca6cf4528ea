"""Validation shared by the functional and object APIs. Every failure is a TypeError or
ValueError that names the argument and says what was expected; nothing here writes."""
from __future__ import annotations

import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
EPS_MODES = ("paper", "hat")
MAX_STEP = 2**63 - 1   # step counters are int64 in the kernels


def data_range(a):
    """[start, stop) byte range spanned by array ``a``'s data."""
    start = a.ctypes.data
    return start, start + a.nbytes


def _number(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_lr(lr, name="lr"):
    x = _number(name, lr)
    if not (0.0 <= x < math.inf):
        raise ValueError(f"Invalid learning rate: {lr} ({name} must be finite and >= 0)")
    return x


def check_eps(eps, name="eps"):
    x = _number(name, eps)
    if not (0.0 <= x < math.inf):
        raise ValueError(f"Invalid epsilon value: {eps} ({name} must be finite and >= 0)")
    return x


def check_weight_decay(wd, name="weight_decay"):
    x = _number(name, wd)
    if not (0.0 <= x < math.inf):
        raise ValueError(f"Invalid weight_decay value: {wd} ({name} must be finite and >= 0)")
    return x


def check_betas(betas, name="betas"):
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise TypeError(f"{name} must be a pair (beta1, beta2), got {betas!r}")
    out = []
    for i, b in enumerate(betas):
        x = _number(f"{name}[{i}]", b)
        if not (0.0 <= x < 1.0):
            raise ValueError(f"Invalid beta parameter at index {i}: {b} "
                             f"({name}[{i}] must be in [0, 1))")
        out.append(x)
    return tuple(out)


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_eps_mode(mode, name="eps_mode"):
    if mode not in EPS_MODES:
        raise ValueError(f"{name} must be one of {EPS_MODES}, got {mode!r}")
    return mode


def check_step(step, name="step"):
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(step).__name__}")
    if not 1 <= step <= MAX_STEP:
        raise ValueError(f"{name} must be between 1 (the first step) and 2**63 - 1, got {step}")
    return int(step)


def check_array(name, a, *, writable, dtype=None, shape=None, one_d=False):
    """An ndarray of float32/float64 (or exactly ``dtype``), C-contiguous, of ``shape``."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if dtype is None:
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}; "
                            f"convert it with {name}.astype(np.float32)")
    elif a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (like its parameter), got {a.dtype}; "
                        f"convert it with {name}.astype(np.{dtype})")
    if one_d and a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; pass np.ascontiguousarray({name})")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it must be writable to be updated in place")
    return a


def check_no_overlap(named_arrays):
    """ValueError naming the first two arrays whose memory overlaps."""
    spans = sorted((data_range(a) + (name,) for name, a in named_arrays if a.nbytes),
                   key=lambda s: s[0])
    for (lo1, hi1, n1), (lo2, hi2, n2) in zip(spans, spans[1:]):
        if lo2 < hi1:
            raise ValueError(f"{n1} and {n2} share memory; every parameter, gradient and "
                             "state buffer must be a separate array")


def check_max_grad_norm(value, name="max_grad_norm"):
    """None (no clipping) or a finite number > 0."""
    if value is None:
        return None
    x = _number(name, value)
    if not (0.0 < x < math.inf):
        raise ValueError(f"Invalid max_grad_norm: {value} ({name} must be None or "
                         "finite and > 0)")
    return x


def check_average(value, name="average"):
    """None (no temporal averaging) or a decay in (0, 1)."""
    if value is None:
        return None
    x = _number(name, value)
    if not (0.0 < x < 1.0):
        raise ValueError(f"Invalid average: {value} ({name} must be None or in (0, 1))")
    return x


NONFINITE_MODES = ("propagate", "skip", "raise")


def check_nonfinite(mode, name="nonfinite"):
    if mode not in NONFINITE_MODES:
        raise ValueError(f"{name} must be one of {NONFINITE_MODES}, got {mode!r}")
    return mode


def check_nonnegative(value, name, what=None):
    """A finite real number >= 0 (torch's message style: "Invalid <what> value")."""
    x = _number(name, value)
    if not (0.0 <= x < math.inf):
        raise ValueError(f"Invalid {what or name} value: {value} ({name} must be finite "
                         "and >= 0)")
    return x
