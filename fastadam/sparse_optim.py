"""The SparseAdam optimizer object (= torch.optim.SparseAdam): param groups, state_dict in
PyTorch's layout, checkpoints, the ``nonfinite`` policy. The semantics, the functional
form and the launch are in :mod:`fastadam.sparse`, the kernels in ``kernels/sparse.py``.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _checks as C
from .kernels import registry
from .kernels import sparse_checks as _SC
from .optim.groups import Validator, groups_repr, normalize_params, validate_groups
from .optim.state import check_header, check_state_array, dict_groups, loaded_groups
from .sparse import (_as_rows, _check_indices, _check_param, _check_values, count_nonfinite,
                     launch, step_scalars)


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
                hit = _SC.span_hit(self._spans, a)
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
        return {"algorithm": self._algorithm, "state": state,
                "param_groups": dict_groups(self.param_groups),
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
                arrays.append(check_state_array(where, key, st[key], p))
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

    __repr__ = groups_repr


def _step_scalars(step, h, dtype):
    beta1, beta2 = h["betas"]
    return step_scalars(step, h["lr"], beta1, beta2, h["eps"], h["maximize"], dtype)
