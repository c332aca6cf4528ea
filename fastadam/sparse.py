"""Sparse (lazy) Adam: steps only the rows a gradient touches, = torch.optim.SparseAdam.

:func:`sparse_adam_step` is the functional form on caller-owned buffers;
:class:`SparseAdam` the optimizer object (param groups, state_dict in PyTorch's layout,
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
import numbers

import numba
import numpy as np

from . import _checks as C
from . import config
from .kernels import registry
from .kernels import sparse as _K
from .optim.groups import Validator, normalize_params, validate_groups
from .optim.state import check_header, loaded_groups

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
            j = _K.first_bad_index(indices, n_rows)
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
        j = _K.first_bad_index(idx, n_rows)
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
    return int(_K.count_nonfinite(values.reshape(-1).view(utype), mask))


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
    bad = _K.functional_overlap(p2, m2, v2, vals2, idx)
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


# ----------------------------------------------------------------------------- object
def _bool(v, name):
    return C.check_bool(name, v)


class SparseAdam:
    """SparseAdam (= ``torch.optim.SparseAdam``): Adam on the rows a gradient touches.

    ``params``: a list of arrays (1-D, or 2-D embedding tables, C-contiguous float32 /
    float64) or of param-group dicts (``{"params": [...], "lr": ...}``). ``step(grads)``
    takes one entry per parameter (in group order): an ``(indices, values)`` pair, or
    ``None`` for no gradient this step. A parameter's step count (bias correction)
    advances whenever it gets a pair, even an empty one, as in PyTorch; see
    :func:`fastadam.sparse_adam_step` for the update.

    ``nonfinite``: ``"propagate"`` (default: NaN/inf flow into the touched rows, as in
    PyTorch, no extra cost), ``"skip"`` (a step whose values hold NaN/inf changes nothing
    and is counted in ``skipped_steps``) or ``"raise"`` (ValueError, nothing changed).

    ``state_dict()`` uses PyTorch's layout with numpy arrays: ``{"state": {i: {"step",
    "exp_avg", "exp_avg_sq"}}, "param_groups": [{"lr", "betas", "eps", "maximize",
    "params": [i, ...]}]}`` (state only for parameters that have had a gradient), plus
    ``"algorithm"`` and ``"skipped_steps"``. ``save(path)`` / ``load(path)`` write and
    read atomic, checksummed checkpoints.
    """

    algorithm = _algorithm = "sparse_adam"
    _spec = registry.get("sparse_adam")
    _state_names = _spec.state
    _validate = Validator(_spec)
    _hparams = {o.name: o.check for o in _validate.options}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False, *,
                 nonfinite="propagate"):
        self.nonfinite = C.check_nonfinite(nonfinite)
        self.defaults = self._check_hparams(
            {"lr": lr, "betas": betas, "eps": eps, "maximize": maximize}, where="")
        groups = self._normalize_groups(params, [])
        self.param_groups = []
        for gi, g in enumerate(groups):
            full = dict(self.defaults)
            full.update(g)
            full.update(self._check_hparams(full, where=f"param_groups[{gi}]"))
            self.param_groups.append(full)
        self._params = [p for g in self.param_groups for p in g["params"]]
        self._group_params = [g["params"] for g in self.param_groups]
        self._steps = [0] * len(self._params)
        self._m = [np.zeros_like(p) for p in self._params]
        self._v = [np.zeros_like(p) for p in self._params]
        self._owned_spans()
        #: Steps skipped because a gradient value was not finite (nonfinite="skip").
        self.skipped_steps = 0

    # ------------------------------------------------------------------ validation
    def _check_hparams(self, h, where):
        # The registry's validator: the options sparse_adam serves, and a refusal of other
        # algorithms' options (weight_decay, amsgrad, ...) a group may carry.
        return self._validate(h, where)

    @staticmethod
    def _normalize_groups(params, existing):
        """Validated copies of the param-group dicts; ``existing``: parameters already
        held (new ones must not share memory with them)."""
        return normalize_params(params, _check_param, existing)

    def _owned_spans(self):
        """Sorted byte ranges of the parameters and moments, which no gradient may
        overlap, with their names (checked per step in compiled code)."""
        spans = []
        for i, (p, m, v) in enumerate(zip(self._params, self._m, self._v)):
            for what, a in ((f"parameter {i}", p), (f"exp_avg of parameter {i}", m),
                            (f"exp_avg_sq of parameter {i}", v)):
                if a.nbytes:
                    lo, hi = C.data_range(a)
                    spans.append((lo, hi, what))
        spans.sort()
        self._spans = np.array([s[:2] for s in spans], dtype=np.int64).reshape(-1, 2)
        self._span_names = [s[2] for s in spans]

    def _checked_groups(self):
        """Hyperparameters of every group, validated (groups may be edited between
        steps, as in torch). Raises before anything is modified."""
        return validate_groups(self.param_groups, self._group_params,      # cached checks
                               lambda g, where: self._check_hparams(g, where=where))

    def _checked_grads(self, grads):
        """[(i, idx, vals) for parameters with a gradient], all validated."""
        n = len(self._params)
        if isinstance(grads, (np.ndarray, dict)) or not isinstance(grads, (list, tuple)):
            raise TypeError("grads must be a list with one (indices, values) pair or None "
                            f"per parameter, got {type(grads).__name__}")
        if len(grads) != n:
            raise ValueError(f"grads must have one entry per parameter ({n}), got "
                             f"{len(grads)}")
        out = []
        for i, (p, gr) in enumerate(zip(self._params, grads)):
            if gr is None:
                continue
            if not isinstance(gr, (tuple, list)) or len(gr) != 2:
                raise TypeError(f"grads[{i}] must be an (indices, values) pair or None, "
                                f"got {type(gr).__name__}")
            idx = _check_indices(f"grads[{i}] indices", gr[0], p.shape[0])
            vals = _check_values(f"grads[{i}] values", gr[1], p, idx.shape[0])
            for what, a in (("values", vals), ("indices", idx)):
                hit = _K.span_hit(self._spans, a)
                if hit >= 0:
                    raise ValueError(f"grads[{i}] {what} share memory with "
                                     f"{self._span_names[hit]}; a gradient must be a "
                                     "separate array")
            out.append((i, idx, vals))
        return out

    # ------------------------------------------------------------------ step
    def step(self, grads):
        """One step. ``grads``: one ``(indices, values)`` pair or ``None`` per parameter.
        Everything is validated before anything is written."""
        hyper = self._checked_groups()
        work = self._checked_grads(grads)
        for i, _, _ in work:
            if self._steps[i] >= C.MAX_STEP:
                raise ValueError(f"parameter {i} is at the largest step count 2**63 - 1")
        if self.nonfinite != "propagate":
            for i, _, vals in work:
                bad = count_nonfinite(vals)
                if bad:
                    if self.nonfinite == "raise":
                        raise ValueError(f"grads[{i}] values hold {bad} non-finite "
                                         "entries (NaN/inf); nothing was changed "
                                         "(nonfinite='raise')")
                    self.skipped_steps += 1
                    return
        for g, h in zip(self.param_groups, hyper):    # all valid: adopt normalised values
            if h is not g:
                g.update(h)
        group_of = self._group_of
        for i, idx, vals in work:
            self._steps[i] += 1
            if idx.shape[0] == 0:
                continue
            h = hyper[group_of[i]]
            p = self._params[i]
            sc = _step_scalars(self._steps[i], h, p.dtype)
            launch(_as_rows(p), idx, _as_rows(vals), _as_rows(self._m[i]),
                   _as_rows(self._v[i]), sc)

    @property
    def _group_of(self):
        """Group index of each parameter."""
        return [gi for gi, ps in enumerate(self._group_params) for _ in ps]

    # ------------------------------------------------------------------ state
    @property
    def state(self):
        """{param index: {"step", "exp_avg", "exp_avg_sq"}}: the live state (views; write
        through load_state_dict), for parameters that have had a gradient."""
        return {i: {"step": self._steps[i], "exp_avg": self._m[i], "exp_avg_sq": self._v[i]}
                for i in range(len(self._params)) if self._steps[i] > 0}

    def param_state(self, i):
        """``(step, exp_avg, exp_avg_sq)`` of parameter ``i``: its step count and live
        views of its moments, also before its first step (zeros then)."""
        return self._steps[i], self._m[i], self._v[i]

    def state_dict(self):
        """PyTorch's layout with numpy arrays (copies); see the class docstring."""
        state = {i: {"step": s["step"], "exp_avg": s["exp_avg"].copy(),
                     "exp_avg_sq": s["exp_avg_sq"].copy()} for i, s in self.state.items()}
        groups, k = [], 0
        for g in self.param_groups:
            d = {key: (tuple(val) if key == "betas" else val)
                 for key, val in g.items() if key != "params"}
            d["params"] = list(range(k, k + len(g["params"])))
            k += len(g["params"])
            groups.append(d)
        return {"algorithm": self._algorithm, "state": state, "param_groups": groups,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()`` (ours, or torch.optim.SparseAdam's with its tensors
        converted to numpy arrays) of an optimizer over parameters of the same shapes and
        dtypes. Everything is checked before anything is written."""
        skipped = check_header(state_dict, self._algorithm)
        new_groups = loaded_groups(self, state_dict, validate=self._check_hparams,
                                   keys=self._hparams)
        state = state_dict["state"]
        for key in state:
            if not (isinstance(key, (numbers.Integral, str)) and str(key).isdigit()
                    and int(key) < len(self._params)) or isinstance(key, bool):
                raise ValueError(f"state_dict['state'] has an entry {key!r} for no parameter "
                                 f"(this optimizer has {len(self._params)})")
        new_state = []
        for i, p in enumerate(self._params):
            st = state.get(i, state.get(str(i)))
            where = f"state_dict['state'][{i}]"
            if st is None:
                new_state.append((0, None, None))
                continue
            if not isinstance(st, dict):
                raise TypeError(f"{where} must be a dict")
            step = st.get("step", 0)
            if isinstance(step, np.ndarray) and step.shape == ():
                step = step.item()
            if isinstance(step, float) and step.is_integer():
                step = int(step)
            if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral) \
                    or not 0 <= step < C.MAX_STEP:
                raise ValueError(f"{where}['step'] must be an int >= 0 and < 2**63 - 1, "
                                 f"got {step!r}")
            arrays = []
            for key in self._state_names:
                if key not in st:
                    if step > 0:
                        raise ValueError(f"{where} has step {step} but lacks {key!r}")
                    arrays.append(None)
                    continue
                a = st[key]
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{where}[{key!r}] must be a numpy.ndarray, got "
                                    f"{type(a).__name__}")
                if a.dtype != p.dtype:
                    raise TypeError(f"{where}[{key!r}] must have dtype {p.dtype}, got {a.dtype}")
                if a.shape != p.shape:
                    raise ValueError(f"{where}[{key!r}] must have shape {p.shape}, got {a.shape}")
                arrays.append(a)
            new_state.append((int(step), arrays[0], arrays[1]))
        # ---- everything valid: write.
        for gi, g in enumerate(new_groups):
            self.param_groups[gi].update(g)
        for i, (step, m, v) in enumerate(new_state):
            self._steps[i] = step
            self._m[i][...] = 0 if m is None else m
            self._v[i][...] = 0 if v is None else v
        self.skipped_steps = int(skipped)

    def add_param_group(self, param_group):
        """Add a param-group dict (torch semantics): its parameters start at step 0 with
        zero moments."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        gi = len(self.param_groups)
        g = dict(param_group)
        if g.get("params") is None:
            raise ValueError("param_group has no 'params' entry")
        (g,) = self._normalize_groups([g], self._params)
        full = dict(self.defaults)
        full.update(g)
        full.update(self._check_hparams(full, where=f"param_groups[{gi}]"))
        self.param_groups.append(full)
        self._group_params.append(full["params"])
        self._params.extend(full["params"])
        self._steps.extend([0] * len(full["params"]))
        self._m.extend(np.zeros_like(p) for p in full["params"])
        self._v.extend(np.zeros_like(p) for p in full["params"])
        self._owned_spans()

    def save(self, path):
        """Write the state to ``path`` atomically (no pickle, checksummed); the file
        format is :mod:`fastadam.checkpoint`'s."""
        from . import checkpoint
        checkpoint.save(self, path)

    def load(self, path):
        """Restore a checkpoint written by :meth:`save` (verified; on error the optimizer
        is unchanged)."""
        from . import checkpoint
        checkpoint.load(self, path)

    def __copy__(self):
        raise TypeError("a shallow copy of an optimizer would share its state buffers; "
                        "use copy.deepcopy(opt)")

    def __getstate__(self):
        st = dict(self.__dict__)
        del st["_spans"], st["_span_names"]         # memory addresses: rebuilt on load
        return st

    def __setstate__(self, st):
        self.__dict__.update(st)
        self._owned_spans()

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"


def _step_scalars(step, h, dtype):
    beta1, beta2 = h["betas"]
    return step_scalars(step, h["lr"], beta1, beta2, h["eps"], h["maximize"], dtype)
