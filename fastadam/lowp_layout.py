"""The low-precision layout decisions, in one place: which parameter dtypes are 16-bit
(bfloat16 from ml_dtypes, float16), the kernels' parameter kind, state kind and
parameter precision mode of a layout (its weight-decay mode: kernels/spec.py
``wd_mode``), and the checks of the precision options (``rounding``/``seed``, one way to
keep a 16-bit parameter's precision). The functional
steps (lowp.py, lowp_adamax.py, lowp_nr.py), the optimizers (optim/lowp.py,
torch/_lowp.py) and the multi-array launch (lowp_multi.py) call these; fastadam.lowp
re-exports them."""
from __future__ import annotations

import numbers

import numpy as np

from .kernels import adam_lowp as A

ROUNDINGS = ("nearest", "stochastic")


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover - ml_dtypes is installed with the extra
        raise ImportError("bfloat16 arrays need the ml_dtypes package: "
                          "pip install 'fastadam[lowp]'") from exc
    return np.dtype(ml_dtypes.bfloat16)


def _is_bf16(dt):
    return dt.name == "bfloat16" and dt.itemsize == 2


def _is_16bit(dt):
    """A 16-bit floating point parameter dtype: bfloat16 (ml_dtypes) or float16."""
    return dt == np.float16 or _is_bf16(dt)


def _param_kind(dt):
    return A.PARAM_F16 if dt == np.float16 else A.PARAM_BF16 if _is_bf16(dt) else A.PARAM_F32


def state_kind(dt):
    """The kernels' state kind (adam_lowp.STATE_*) of state whose ``exp_avg`` has dtype
    ``dt``, or None when ``dt`` is no state dtype."""
    if dt == np.float32:
        return A.STATE_F32
    if _is_bf16(dt):
        return A.STATE_BF16
    return A.STATE_Q8 if dt == np.int8 else None


def pmode_of(param_kind, state, rounding):
    """The parameter's precision mode (adam_lowp.PMODE_*) for a validated ``state`` (its
    "master" or "compensation" entry, else ``rounding``); float32 parameters are not
    rounded."""
    if param_kind == A.PARAM_F32:
        return A.PMODE_NEAREST
    if "master" in state:
        return A.PMODE_MASTER
    if "compensation" in state:
        return A.PMODE_KAHAN
    return A.PMODE_STOCHASTIC if rounding == "stochastic" else A.PMODE_NEAREST


def check_rounding_seed(rounding, seed, where=""):
    """``rounding`` and ``seed`` checked: the seed as an int. ValueError/TypeError naming
    the argument (after ``where``, e.g. "param_groups[0]: ")."""
    if not isinstance(rounding, str) or rounding not in ROUNDINGS:
        raise ValueError(f"{where}rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{where}seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"{where}seed must be in [0, 2**64), got {seed}")
    return int(seed)


def check_precision_choice(master_weights, compensation, rounding, where=""):
    """ValueError unless at most one way to keep a 16-bit parameter's precision is
    chosen (bools ``master_weights``, ``compensation``; ``rounding="stochastic"``)."""
    if master_weights and compensation:
        raise ValueError(f"{where}master_weights=True and compensation=True are two ways to "
                         "keep the same precision; choose one")
    if rounding == "stochastic" and (master_weights or compensation):
        name = "master_weights" if master_weights else "compensation"
        raise ValueError(f"{where}rounding='stochastic' cannot be combined with {name}=True: "
                         "choose one way to keep the parameters' precision")
