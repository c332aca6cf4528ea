"""Sparse (lazy) Adam: steps only the rows a gradient touches, = torch.optim.SparseAdam.

:func:`sparse_adam_step` is the functional form on caller-owned buffers;
the optimizer object :class:`SparseAdam` (``sparse_optim.py``: param groups, state_dict in PyTorch's layout,
checkpoints, the ``nonfinite`` policy). The kernels are in ``kernels/sparse.py``.

Semantics (those of ``torch.optim.SparseAdam``): a gradient is a set of rows
``indices`` (k,) with one value row each, ``values`` (k,) for a 1-D parameter or
(k, dim) for a 2-D one. Duplicate indices are summed first (PyTorch coalesces). Only
the touched rows of the parameter and of both moments change; with g a touched row's
summed gradient (negated if ``maximize``) and t the parameter's step count::

    exp_avg    = exp_avg    + (g     - exp_avg)    * (1 - beta1)
    exp_avg_sq = exp_avg_sq + (g * g - exp_avg_sq) * (1 - beta2)
    param      = param - lr * sqrt(1 - beta2**t) / (1 - beta1**t)
                             * exp_avg / (sqrt(exp_avg_sq) + eps)

``eps`` is added to the un-corrected sqrt(exp_avg_sq): the paper's "epsilon hat" form
(``eps_mode="hat"`` of :func:`fastadam.adam_step`), not ``torch.optim.Adam``'s. Rows a
step does not touch keep their moments (no decay), but the step count t, used for bias
correction, advances with every step that gives the parameter a gradient, touched or not.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from . import _checks as C
from . import config
from .kernels import sparse as _K
from .kernels import sparse_checks as _SC

_INT_KINDS = "iu"
_I64, _I32 = np.dtype(np.int64), np.dtype(np.int32)
_FLOATS = C.FLOAT_DTYPES
_INF = float("inf")
_NAMES5 = ("param", "exp_avg", "exp_avg_sq", "values", "indices")
_EXP_MASK = {np.dtype(np.float32): (np.uint32, np.uint32(0x7F800000)),
             np.dtype(np.float64): (np.uint64, np.uint64(0x7FF0000000000000))}


# ----------------------------------------------------------------------------- checks
def _check_param(name, p):
    if type(p) is np.ndarray and p.dtype in _FLOATS and 1 <= p.ndim <= 2:
        f = p.flags
        if f.c_contiguous and f.writeable:
            return p
    C.check_array(name, p, writable=True)
    if p.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (n,) or 2-D (n_rows, dim), got shape {p.shape}")
    return p


def _check_indices(name, indices, n_rows, bounds=True):
    """``indices`` as a 1-D C-contiguous int64 or int32 array, every entry in
    [0, n_rows) (unless ``bounds`` is False: the caller's kernel launch checks them).
    Never writes; copies only when the dtype or layout needs it."""
    if type(indices) is np.ndarray and (indices.dtype is _I64 or indices.dtype is _I32) \
            and indices.ndim == 1 and indices.flags.c_contiguous:
        if bounds and indices.shape[0]:
            j = _SC.first_bad_index(indices, n_rows)
            if j >= 0:
                _bad_index(name, indices, j, n_rows)
        return indices
    if not isinstance(indices, np.ndarray):
        if isinstance(indices, (list, tuple)):
            indices = np.asarray(indices) if len(indices) else np.zeros(0, np.int64)
        else:
            raise TypeError(f"{name} must be a 1-D integer numpy.ndarray, got "
                            f"{type(indices).__name__}")
    if indices.dtype.kind not in _INT_KINDS:
        raise TypeError(f"{name} must have an integer dtype, got {indices.dtype}")
    if indices.ndim != 1:
        raise ValueError(f"{name} must be 1-D (k,), got shape {indices.shape}")
    idx = indices
    if idx.dtype != np.int64 and idx.dtype != np.int32:
        if idx.size and (idx.dtype.kind == "u" and idx.max() > np.iinfo(np.int64).max):
            j = int(np.argmax(idx > np.iinfo(np.int64).max))
            raise ValueError(f"{name}[{j}] = {idx[j]} is out of range for a parameter "
                             f"with {n_rows} rows")
        idx = idx.astype(np.int64)
    if not idx.flags.c_contiguous:
        idx = np.ascontiguousarray(idx)
    if bounds and idx.size:
        j = _SC.first_bad_index(idx, n_rows)
        if j >= 0:
            _bad_index(name, indices, j, n_rows)
    return idx


def _bad_index(name, indices, j, n_rows):
    raise ValueError(f"{name}[{j}] = {indices[j]} is out of range for a parameter "
                     f"with {n_rows} rows (indices must be in [0, {n_rows}))")


def _check_values(name, values, param, k):
    if type(values) is np.ndarray and values.dtype is param.dtype \
            and values.shape[:1] == (k,) and values.shape[1:] == param.shape[1:] \
            and values.flags.c_contiguous:
        return values
    if not isinstance(values, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(values).__name__}")
    if values.dtype != param.dtype:
        raise TypeError(f"{name} must have dtype {param.dtype} (like its parameter), got "
                        f"{values.dtype}")
    shape = (k,) + param.shape[1:]
    if values.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (one "
                         f"{'value' if param.ndim == 1 else 'row'} per index), got "
                         f"{values.shape}")
    if not values.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; pass np.ascontiguousarray({name})")
    return values


def _as_rows(a):
    """2-D (rows, dim) view of a C-contiguous 1-D (dim 1) or 2-D array."""
    return a if a.ndim == 2 else a.reshape(a.shape[0], 1)


def count_nonfinite(values):
    """Number of NaN/inf entries of a float32/float64 array (read once, vectorised)."""
    utype, mask = _EXP_MASK[values.dtype]
    if values.size == 0:
        return 0
    return int(_SC.count_nonfinite(values.reshape(-1).view(utype), mask))


# ----------------------------------------------------------------------------- launch
def step_scalars(step, lr, beta1, beta2, eps, maximize, dtype):
    """The kernel's scalars for step ``step``, computed in float64 exactly as
    torch.optim.SparseAdam does, then rounded once to ``dtype``."""
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    # one array construction (the order of kernels/sparse.py's OMB1 ... GSIGN)
    return np.array((1 - beta1, 1 - beta2, eps, -step_size, -1.0 if maximize else 1.0),
                    dtype)


def _partition_bits(k):
    """log2 of the number of hash buckets of the parallel kernel: about 8 occurrences
    each (the granularity of the work split between threads), 2 to 2**14 buckets. Any
    value gives the same result."""
    return min(14, max(1, (k // 8).bit_length() - 1))


def launch(p2, idx, vals2, m2, v2, sc):
    """Run the serial or parallel kernel on validated 2-D views (k >= 1). The kernel
    checks the bounds of ``idx`` before writing anything: returns -1, or the position
    of the first index outside [0, n_rows) (nothing changed)."""
    k = idx.shape[0]
    if config.use_parallel(k * p2.shape[1]) and k >= 2:
        with config.launch_lock():
            return _K.sparse_adam_parallel(p2, idx, vals2, m2, v2, sc, _partition_bits(k),
                                           numba.get_num_threads())
    return _K.sparse_adam_serial(p2, idx, vals2, m2, v2, sc)


# ----------------------------------------------------------------------------- functional
def sparse_adam_step(param, indices, values, exp_avg, exp_avg_sq, *, step, lr=1e-3,
                     betas=(0.9, 0.999), eps=1e-8, maximize=False):
    r"""One SparseAdam step (= ``torch.optim.SparseAdam``) in place on the rows
    ``indices`` of ``param``, ``exp_avg`` and ``exp_avg_sq``.

    ``param``: 1-D ``(n,)`` or 2-D ``(n_rows, dim)`` (an embedding table), C-contiguous
    float32/float64; the moments alike. ``indices``: integer array ``(k,)`` of rows in
    ``[0, n_rows)``, duplicates allowed (their values are summed, in the order given).
    ``values``: ``(k,)`` or ``(k, dim)``, the parameter's dtype. ``step`` (>= 1): the
    parameter's step count, for bias correction. Per touched row, with g its summed
    gradient (negated if ``maximize``)::

        exp_avg    += (g     - exp_avg)    * (1 - beta1)
        exp_avg_sq += (g * g - exp_avg_sq) * (1 - beta2)
        param      -= lr * sqrt(1 - beta2**step) / (1 - beta1**step)
                         * exp_avg / (sqrt(exp_avg_sq) + eps)

    Rows not in ``indices`` are not read or written. Bad input (indices out of range,
    non-integer or not 1-D; values of the wrong shape or dtype; buffers not C-contiguous,
    read-only or sharing memory) raises TypeError/ValueError naming the argument, with
    nothing changed. NaN/inf in ``values`` propagate as in PyTorch (the optimizer object
    has a ``nonfinite`` policy).
    """
    step, lr, beta1, beta2, eps = _check_hyper(step, lr, betas, eps)
    if maximize is not True and maximize is not False:
        maximize = C.check_bool("maximize", maximize)
    _check_param("param", param)
    dt, shape = param.dtype, param.shape
    for name, a in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if not (type(a) is np.ndarray and a.dtype is dt and a.shape == shape
                and a.flags.c_contiguous and a.flags.writeable):
            C.check_array(name, a, writable=True, dtype=dt, shape=shape)
    idx = _check_indices("indices", indices, shape[0], bounds=False)   # bounds: launch
    vals = _check_values("values", values, param, idx.shape[0])
    p2, m2, v2, vals2 = _as_rows(param), _as_rows(exp_avg), _as_rows(exp_avg_sq), _as_rows(vals)
    bad = _SC.functional_overlap(p2, m2, v2, vals2, idx)
    if bad >= 0:
        raise ValueError(f"{_NAMES5[bad // 5]} and {_NAMES5[bad % 5]} share memory; the "
                         "parameter, its moments and the gradient must be separate arrays")
    if idx.shape[0] == 0:
        return
    bad = launch(p2, idx, vals2, m2, v2,
                 step_scalars(step, lr, beta1, beta2, eps, maximize, dt))
    if bad >= 0:
        _bad_index("indices", indices, bad, shape[0])


def _check_hyper(step, lr, betas, eps):
    # Fast acceptance of the common cases; the checkers in _checks produce the messages.
    if not (type(step) is int and 1 <= step <= C.MAX_STEP):
        step = C.check_step(step)
    if not (type(lr) is float and 0.0 <= lr < _INF):
        lr = C.check_lr(lr)
    if not (type(betas) is tuple and len(betas) == 2 and type(betas[0]) is float
            and type(betas[1]) is float and 0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        betas = C.check_betas(betas)
    if not (type(eps) is float and 0.0 <= eps < _INF):
        eps = C.check_eps(eps)
    return step, lr, betas[0], betas[1], eps


# The optimizer object lives in sparse_optim.py; exported here too (fastadam.sparse.SparseAdam).
from .sparse_optim import SparseAdam  # noqa: E402,F401
