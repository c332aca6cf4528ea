"""Argument checks shared by the estimators: hyperparameters and sample weights.

Every check raises TypeError (wrong type) or ValueError (out of range) naming the
argument, before anything is fitted."""
from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils.validation import check_array

ACTIVATIONS = ("identity", "logistic", "tanh", "relu")

STATE_DTYPES = ("float32", "bfloat16", "int8")


def check_sample_weight(sample_weight, n_samples, dtype, allow_zero_sum=False):
    """1-D float array of n_samples non-negative finite weights with a positive sum, or
    None. ``allow_zero_sum``: one rank's share of data-parallel weights, whose pooled sum
    is checked by the caller."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Number):
        sample_weight = np.full(n_samples, sample_weight, dtype=dtype)
    sw = check_array(sample_weight, ensure_2d=False, dtype=dtype, order="C",
                     input_name="sample_weight")
    if sw.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D, got shape {sw.shape}")
    if sw.shape[0] != n_samples:
        raise ValueError(f"sample_weight.shape == {sw.shape}, expected ({n_samples},) "
                         "(one weight per sample)")
    if np.any(sw < 0):
        raise ValueError("sample_weight must be non-negative")
    if not allow_zero_sum and not sw.sum() > 0:
        raise ValueError("sample_weight must not be all zero: the weights must have a "
                         "positive sum")
    return sw


def check_positive_int(name, value, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_real(name, value, lo, hi, lo_closed=True, hi_closed=True):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    ok_lo = value >= lo if lo_closed else value > lo
    ok_hi = value <= hi if hi_closed else value < hi
    if not (ok_lo and ok_hi):
        interval = (("[" if lo_closed else "(") + f"{lo}, {hi}" + ("]" if hi_closed else ")"))
        raise ValueError(f"{name} must be in {interval}, got {value}")


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_hyperparams(est, incremental):
    """Check the hyperparameters every estimator shares (and the network layout of the
    MLPs, or ``fit_intercept`` of the linear models)."""
    check_real("alpha", est.alpha, 0, np.inf)
    check_real("learning_rate_init", est.learning_rate_init, 0, np.inf, lo_closed=False)
    check_real("beta_1", est.beta_1, 0, 1, hi_closed=False)
    check_real("beta_2", est.beta_2, 0, 1, hi_closed=False)
    check_real("epsilon", est.epsilon, 0, np.inf, lo_closed=False)
    if not (isinstance(est.batch_size, str) and est.batch_size == "auto"):
        check_positive_int("batch_size", est.batch_size)
    check_positive_int("max_iter", est.max_iter)
    check_real("tol", est.tol, 0, np.inf)
    check_positive_int("n_iter_no_change", est.n_iter_no_change)
    check_real("validation_fraction", est.validation_fraction, 0, 1,
                lo_closed=False, hi_closed=False)
    for name in ("early_stopping", "shuffle", "warm_start"):
        check_bool(name, getattr(est, name))
    if not isinstance(est.verbose, (bool, np.bool_, numbers.Integral)):
        raise TypeError(f"verbose must be a bool or an int, got {type(est.verbose).__name__}")
    if est._linear:
        check_bool("fit_intercept", est.fit_intercept)
    else:
        sizes = est.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        for i, s in enumerate(sizes):
            if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral) or s <= 0:
                raise ValueError(f"hidden_layer_sizes must contain positive ints, got "
                                 f"{est.hidden_layer_sizes!r} (entry {i}: {s!r})")
        if est.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got "
                             f"{est.activation!r}")
    sdt = getattr(est, "state_dtype", None)
    if sdt is not None and (not isinstance(sdt, str) or sdt not in STATE_DTYPES):
        raise ValueError(f"state_dtype must be None or one of {STATE_DTYPES}, got {sdt!r}")
    if est.early_stopping and incremental:
        raise ValueError("partial_fit does not support early_stopping=True")


def lowp_state_dtype(est):
    """The estimator's low-precision ``state_dtype`` ("bfloat16" or "int8"), else None."""
    sdt = getattr(est, "state_dtype", None)
    return sdt if sdt in ("bfloat16", "int8") else None


def check_state_dtype_combination(est):
    """A low-precision ``state_dtype`` with what cannot serve it (ValueError naming both):
    ``comm`` (the sharded optimizer keeps float32/float64 moments) and
    ``sparse_updates="lazy"`` (the lazy first layer keeps full-precision moments)."""
    sdt = lowp_state_dtype(est)
    if sdt is None:
        return
    if getattr(est, "comm", None) is not None:
        raise ValueError(f"state_dtype={sdt!r} cannot be combined with comm (a "
                         "data-parallel fit shards float32 Adam state); use "
                         "state_dtype=None or 'float32' with comm")
    if est.sparse_updates == "lazy":
        raise ValueError(f"state_dtype={sdt!r} cannot be combined with "
                         "sparse_updates='lazy' (the lazy first layer's moments are "
                         "not low-precision); use sparse_updates='dense' or 'auto' "
                         "(dense with a low-precision state_dtype)")


def check_state_dtype_continuation(est, first, incremental):
    """Before anything changes: a fitted model continued (partial_fit, warm_start) with a
    ``state_dtype`` must have float32 weights, and a partial_fit that keeps the optimizer
    cannot switch a lazily updated model to low-precision state."""
    sdt = getattr(est, "state_dtype", None)
    if first or sdt is None:
        return
    if est._flat.dtype != np.float32:
        raise ValueError(f"state_dtype={sdt!r} needs float32 weights, but this estimator "
                         f"was fitted with {est._flat.dtype} weights (float64 X and "
                         "state_dtype=None); refit it from scratch (warm_start=False) or "
                         "keep state_dtype=None")
    keeps = incremental and getattr(est, "_optimizer_comm", None) is getattr(est, "comm", None)
    if keeps and lowp_state_dtype(est) is not None and getattr(est, "_lazy", False):
        raise ValueError(f"state_dtype={sdt!r} cannot be combined with the lazy sparse "
                         "updates this model was fitted with (sparse_updates); refit it, "
                         "or continue it with warm_start=True, to train it with dense "
                         "steps")
