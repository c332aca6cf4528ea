"""state_dict / load_state_dict / add_param_group: the optimizer's state as plain dicts of
numbers and NumPy arrays in PyTorch's layout, checked whole before anything is written."""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _checks as C
from .groups import ParamGroup


def _int(value, where, lo, hi, what):
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or not lo <= value < hi:
        raise ValueError(f"{where} must be an int >= {lo} and < {what}, got {value!r}")
    return int(value)


def dict_groups(param_groups):
    """``param_groups`` as a state_dict holds them: each group's options (``betas`` as a
    tuple) and ``params`` as the indices of its parameters, counted across groups."""
    groups, k = [], 0
    for g in param_groups:
        d = {key: (tuple(val) if key == "betas" else val)
             for key, val in g.items() if key != "params"}
        d["params"] = list(range(k, k + len(g["params"])))
        k += len(g["params"])
        groups.append(d)
    return groups


def check_header(state_dict, algorithm, average=None):
    """The checks every load of a state_dict starts with (a dict with "state" and
    "param_groups", of ``algorithm``, with ``average`` when the dict names one); returns
    its ``skipped_steps``. Raises TypeError/ValueError."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"state_dict has no {key!r} entry")
    alg_name = state_dict.get("algorithm", algorithm)
    if alg_name != algorithm:
        raise ValueError(f"state_dict is from a {alg_name!r} optimizer, not {algorithm!r}")
    if state_dict.get("average", average) != average:
        raise ValueError(f"state_dict has average={state_dict['average']!r}, this "
                         f"optimizer average={average!r}")
    skipped = state_dict.get("skipped_steps", 0)
    if isinstance(skipped, (bool, np.bool_)) or not isinstance(skipped, numbers.Integral) \
            or skipped < 0:
        raise ValueError(f"state_dict['skipped_steps'] must be an int >= 0, got {skipped!r}")
    return int(skipped)


def loaded_groups(opt, state_dict, check=None, validate=None, keys=None):
    """The param groups of ``state_dict`` merged over ``opt``'s and validated by
    ``validate(merged, where=...)`` (``opt._validate`` by default; each also by
    ``check(merged, where)`` when given); ``keys``: the saved keys taken (all but
    "params" by default). Raises, writing nothing."""
    validate = opt._validate if validate is None else validate
    groups, state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(groups, (list, tuple)) or len(groups) != len(opt.param_groups):
        raise ValueError("state_dict['param_groups'] must have "
                         f"{len(opt.param_groups)} groups, got "
                         f"{len(groups) if isinstance(groups, (list, tuple)) else groups!r}")
    if not isinstance(state, dict):
        raise TypeError("state_dict['state'] must be a dict")
    new_groups, k = [], 0
    for gi, (g, mine) in enumerate(zip(groups, opt.param_groups)):
        if not isinstance(g, dict):
            raise TypeError(f"state_dict['param_groups'][{gi}] must be a dict")
        n = len(mine["params"])
        if list(g.get("params", [])) != list(range(k, k + n)):
            raise ValueError(f"state_dict['param_groups'][{gi}]['params'] must be "
                             f"{list(range(k, k + n))} (parameter counts differ)")
        merged = {key: val for key, val in mine.items() if key != "params"}
        merged.update({key: val for key, val in g.items()
                       if key != "params" and (keys is None or key in keys)})
        where = f"state_dict['param_groups'][{gi}]"
        merged.update(validate(merged, where=where))
        if check is not None:
            check(merged, where)
        new_groups.append(merged)
        k += n
    return new_groups


def check_state_array(where, key, a, want, note=""):
    """A loaded state entry ``state[key]`` must be an ndarray with ``want``'s dtype and
    shape (``note`` is added to the dtype message); returns it."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{where}[{key!r}] must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != want.dtype:
        raise TypeError(f"{where}[{key!r}] must have dtype {want.dtype}{note}, got {a.dtype}")
    if a.shape != want.shape:
        raise ValueError(f"{where}[{key!r}] must have shape {want.shape}, got {a.shape}")
    return a


def param_entry(state, i, gi, steps):
    """``state_dict["state"]`` entry of parameter i (keys i or "i"; missing: a fresh
    parameter) of group gi, checked: a dict whose "step" agrees with the other parameters
    of its group (``steps[gi]``, set by the first). Returns (entry, where, step)."""
    where = f"state_dict['state'][{i}]"
    st = state.get(i, state.get(str(i)))
    if st is None:
        st = {"step": 0}
    if not isinstance(st, dict):
        raise TypeError(f"{where} must be a dict")
    step = _int(st.get("step", 0), f"{where}['step']", 0, C.MAX_STEP, "2**63 - 1")
    if steps[gi] is None:
        steps[gi] = step
    elif steps[gi] != step:
        raise ValueError(f"{where}['step'] is {step} but other parameters of "
                         f"param_groups[{gi}] are at step {steps[gi]}")
    return st, where, step


class StateDictMixin:
    """The state methods of :class:`~fastadam.optim.base.Optimizer`."""

    # ------------------------------------------------------------------ state views
    # (each parameter's state rows inside the optimizer's buckets)
    def _state_rows(self, b):
        """[(state_dict name, row index)] of bucket ``b``'s rows."""
        rows = [(name, r) for r, name in enumerate(self._alg.state[:b.n_rows])]
        if b.has_avg:
            rows.append(("param_avg", b.state.shape[0] - 1))
        return rows

    def _param_state_views(self, i):
        b, r = self._where[i]
        lo, hi = b.offsets[r], b.offsets[r + 1]
        shape = self._params[i].shape
        return {name: b.state[row, lo:hi].reshape(shape) for name, row in self._state_rows(b)}

    def _write_param_state(self, i, st):
        b, _ = self._where[i]
        names = self._alg.state
        need = max((names.index(k) + 1 for k in st if k in names), default=0)
        if b.ensure_rows(need):
            self._refresh_layout()
        views = self._param_state_views(i)
        for k, arr in st.items():
            if k in views:
                views[k][...] = arr

    @property
    def group_scalars(self):
        """{name: read-only live view, one value per param group} of the scalars an
        algorithm carries per group rather than per parameter (NAdam's ``mu_product``);
        empty for the others."""
        live = self._gscal.view()
        live.flags.writeable = False
        return {n: live[:, j] for j, (n, _) in enumerate(self._alg.group_scalars)}

    @property
    def state(self):
        """{param index: {"step", state buffers..., group scalars...}} as views of the
        live state (read them; write through load_state_dict). With a low-precision
        ``state_dtype`` the buffers are 1-D (bfloat16 arrays, or int8/uint8 codes and
        float32 absmax scales)."""
        if self._lowp is not None:
            return self._lowp.live_state(self)
        out = {}
        names = [n for n, _ in self._alg.group_scalars]
        for i in range(len(self._params)):
            gi = self._group_of[i]
            st = {"step": int(self._steps[gi])}
            st.update(self._param_state_views(i))
            for j, n in enumerate(names):
                st[n] = float(self._gscal[gi, j])
            out[i] = st
        return out

    def state_bytes(self):
        """Bytes of optimizer state per parameter element (moments, codes and scales,
        AMSGrad's max, the average; not the parameters or the gradient buffers)."""
        if self._lowp is not None:
            return self._lowp.state_bytes(self)
        n = sum(p.size for p in self._params)
        return sum(b.state.nbytes for b in self._buckets) / max(n, 1)

    def state_dict(self):
        """A plain dict of numbers, strings and numpy arrays (copies), torch layout:
        {"state": {i: {...}}, "param_groups": [{hyperparameters..., "params": [i, ...]}]},
        plus "algorithm", "average", "skipped_steps". With a low-precision
        ``state_dtype``, also "state_dtype" and "state_layout", and the state arrays are
        1-D: bfloat16 as uint16 bits, int8 codes, float32 scales (see
        :mod:`fastadam.optim.lowp`)."""
        with self._lock:
            if self._lowp is not None:
                return self._lowp.state_dict(self)
            alg = self._alg
            state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                     for i, s in self.state.items()}
            rows = []
            for gi, g in enumerate(self.param_groups):
                try:     # an edit since the last step may have switched a row on
                    rows.append(alg.n_state(self._validate(g, where=f"param_groups[{gi}]")))
                except (TypeError, ValueError):   # an invalid pending edit: as stepped
                    rows.append(0)
            for i, st in state.items():
                for name in alg.state[:rows[self._group_of[i]]]:
                    if name not in st:
                        st[name] = np.zeros_like(self._params[i])  # as step would start it
            return {"algorithm": self.algorithm, "state": state,
                    "param_groups": dict_groups(self.param_groups),
                    "average": self._average, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict):
        """Restore a state_dict() of an optimizer of the same algorithm over parameters of
        the same shapes and dtypes. Everything is checked before anything is written."""
        with self._lock:
            self._load_state_dict(state_dict)

    def _load_state_dict(self, state_dict):
        if self._lowp is not None:
            return self._lowp.load_state_dict(self, state_dict)
        if isinstance(state_dict, dict) and "state_dtype" in state_dict:
            from .lowp_state import check_layout
            check_layout(state_dict, self.state_dtype)
        skipped = check_header(state_dict, self.algorithm, self._average)
        state = state_dict["state"]
        new_groups = loaded_groups(self, state_dict)
        alg = self._alg
        avg = ["param_avg"] if self._average else []
        gnames = [n for n, _ in alg.group_scalars]
        new_steps = [None] * len(self.param_groups)
        new_gscal = self._gscal.copy()
        seen_gscal = [False] * len(self.param_groups)
        new_state = [None] * len(self._params)
        for i, p in enumerate(self._params):
            gi = self._group_of[i]
            st, where, step = param_entry(state, i, gi, new_steps)
            arrays = {}
            for key in list(alg.state) + avg:
                if key not in st:
                    continue
                arrays[key] = check_state_array(where, key, st[key], p)
            required = list(alg.state[:alg.n_state(new_groups[gi])]) + avg
            missing = [key for key in required if key not in arrays]
            if step > 0 and missing:
                raise ValueError(f"{where} has step {step} but lacks {'/'.join(missing)}")
            for j, name in enumerate(gnames):
                if name in st and not seen_gscal[gi]:
                    v = st[name]
                    if isinstance(v, np.ndarray) and v.shape in ((), (1,)):
                        v = v.item()
                    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.floating)) \
                            or not math.isfinite(v):
                        raise ValueError(f"{where}[{name!r}] must be a finite number, got {v!r}")
                    new_gscal[gi, j] = float(v)
                elif name not in st and step > 0:
                    raise ValueError(f"{where} has step {step} but lacks {name!r}")
            seen_gscal[gi] = True
            full = {key: np.zeros_like(p) for key in required}
            full.update(arrays)
            new_state[i] = full
        for gi, s in enumerate(new_steps):       # a group whose params all start over
            if s == 0:
                for j, (_, init) in enumerate(alg.group_scalars):
                    new_gscal[gi, j] = init
        # ---- everything valid: write.
        for gi, g in enumerate(new_groups):
            self.param_groups[gi].update(g)
        for i, st in enumerate(new_state):
            self._write_param_state(i, st)
            views = self._param_state_views(i)
            for name, view in views.items():
                if name not in st:
                    view[...] = 0
        self._steps[:] = [s or 0 for s in new_steps]
        self._gscal[:] = new_gscal
        self.skipped_steps = int(skipped)

    def add_param_group(self, param_group):
        """Add a param-group dict (torch semantics): its parameters start at step 0."""
        with self._lock:
            self._add_param_group(param_group)

    def _add_param_group(self, param_group):
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        if self._groups_changed():
            self._refresh_groups()           # an invalid pending edit raises here, as in step
        old_params, old_groups = list(self._params), list(self.param_groups)
        saved = [{k: v.copy() for k, v in self._param_state_views(i).items()}
                 for i in range(len(old_params))]
        gi = len(old_groups)
        g = dict(param_group)
        if g.get("params") is None:
            raise ValueError("param_group has no 'params' entry")
        full = dict(self.defaults)
        full.update(g)
        full.update(self._validate(full, where=f"param_groups[{gi}]"))
        self._normalize_groups([dict(x) for x in old_groups] + [full])  # validates; sets _params
        full["params"] = self._params[len(old_params):]
        self.param_groups = old_groups + [ParamGroup(full)]
        self.last_grad_norms = self.last_grad_norms + [None]
        self._build(saved + [None] * len(full["params"]), list(self._steps) + [0],
                    self._gscal.copy())

    def save(self, path):
        """Write the state to ``path`` (.npz, no pickle, checksummed) atomically: a
        temporary file in the same folder is fsynced, then renamed over ``path``. The file
        format lives in :mod:`fastadam.checkpoint`."""
        from .. import checkpoint
        checkpoint.save(self, path)

    def load(self, path):
        """Restore a checkpoint written by :meth:`save`. The file is verified (format,
        algorithm, checksum) and the state checked fully before anything is written; on
        error (ValueError/TypeError) the optimizer is unchanged."""
        from .. import checkpoint
        checkpoint.load(self, path)
