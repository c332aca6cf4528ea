"""Optimizer objects: Adam, AdamW and Adamax over lists of arrays or torch-style param
groups.

The optimizer owns the moments, in one aligned state block per parameter dtype (rows
m, v[, vmax][, parameter average]), and steps every parameter of a dtype in a single
kernel launch through a chunk plan of data addresses (see ``kernels/common.py``). The
update formulas are documented once, in :func:`fastadam.adam_step` and
:func:`fastadam.adamax_step`.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from . import _checks as C
from . import config
from .flat import aligned_zeros, forbidden_ranges, make_plan, merge_contiguous
from .kernels import adam as _adam_kernels
from .kernels import adamax as _adamax_kernels
from .kernels import common as K
from .kernels.common import HAVE_ARRAY_DATA_OFFSET

_NO_RANGES = np.zeros((0, 2), dtype=np.int64)
# From this many gradients on, step() checks them in compiled code (one call, ~ns per
# array) rather than in Python (~0.25 us per array).
_COMPILED_CHECK_FROM = 8


class ParamGroup(dict):
    """A param group: a plain dict (torch convention) that notes its own edits, so that
    ``step`` re-validates hyperparameters only after a write instead of re-reading every
    key on every step."""

    __slots__ = ("dirty",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dirty = True

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.dirty = True

    def __delitem__(self, key):
        super().__delitem__(key)
        self.dirty = True

    def __ior__(self, other):
        self.update(other)
        return self

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self.dirty = True

    def setdefault(self, key, default=None):
        self.dirty = True
        return super().setdefault(key, default)

    def pop(self, *args):
        self.dirty = True
        return super().pop(*args)

    def popitem(self):
        self.dirty = True
        return super().popitem()

    def clear(self):
        super().clear()
        self.dirty = True

    def __reduce_ex__(self, protocol):
        return (ParamGroup, (dict(self),))


class _Bucket:
    """All parameters of one dtype: their state block, gradient buffer and scratch."""

    def __init__(self, dtype, members, n_groups, vmax, average):
        self.dtype = dtype
        self.members = members              # [(flat index, group index, param array)]
        sizes = [p.size for _, _, p in members]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.size = int(self.offsets[-1])
        self.has_vmax, self.has_avg = bool(vmax), bool(average)
        self.state = aligned_zeros(self.size, dtype, rows=2 + self.has_vmax + self.has_avg)
        self.grad_flat = aligned_zeros(self.size, dtype)
        self.grad_views = [self.grad_flat[o:o + p.size].reshape(p.shape)
                           for o, (_, _, p) in zip(self.offsets, members)]
        self.sc = np.zeros((n_groups, K.N_SCALARS), dtype=dtype)
        self.groups = sorted({g for _, g, _ in members})
        self.launches = []

    def rows(self):
        """State row index of each buffer: "m", "v", and "vmax" / "avg" when present."""
        r = {"m": K.M_ROW, "v": K.V_ROW}
        if self.has_vmax:
            r["vmax"] = K.VMAX_ROW
        if self.has_avg:
            r["avg"] = self.state.shape[0] - 1
        return r

    def add_vmax(self):
        """Insert a zero max_exp_avg_sq row (a group turned amsgrad on); the average, if
        any, stays last."""
        new = aligned_zeros(self.size, self.dtype, rows=self.state.shape[0] + 1)
        new[:2] = self.state[:2]
        if self.has_avg:
            new[-1] = self.state[-1]
        self.state = new
        self.has_vmax = True


class _Launch:
    """One kernel launch: the chunks of the groups that share a kernel flag set."""

    def __init__(self, bucket, kernels, group_ids, n_params):
        rows = [i for i, (_, g, _) in enumerate(bucket.members) if g in group_ids]
        self.param_index = [bucket.members[i][0] for i in rows]
        # True when this launch covers every parameter in order: grads map 1:1 to rows.
        self.all_rows = self.param_index == list(range(n_params))
        params = [bucket.members[i][2] for i in rows]
        self.size = sum(p.size for p in params)
        self.plan = make_plan(params, bucket.offsets[rows], [bucket.members[i][1] for i in rows])
        self.blocks = K.split_blocks(self.plan[:, K.LENGTH])
        g_addr = [bucket.grad_views[i].ctypes.data for i in rows]
        self.flat_plan = merge_contiguous(self.plan, g_addr, bucket.dtype.itemsize)
        self.flat_blocks = K.split_blocks(self.flat_plan[:, K.LENGTH])
        self.kernels = kernels
        self._entry = [None, None]

    def tables(self, g_refs):
        """(plan, blocks) for this step: the per-array plan holding this step's gradient
        references, or (g_refs None) the merged plan over the preallocated opt.grads."""
        if g_refs is None:
            return self.flat_plan, self.flat_blocks
        self.plan[:, K.G_REF] = g_refs if self.all_rows else g_refs[self.param_index]
        return self.plan, self.blocks

    def run(self, parallel, *args):
        """Call the table kernel. After the first call, the compiled entry point of the
        signature is called directly, skipping numba's type dispatch (~0.4 us): the
        arguments are the optimizer's own arrays, whose types never change."""
        entry = self._entry[parallel]
        if entry is not None:
            return entry(*args)
        kernel = self.kernels[3 if parallel else 2]
        out = kernel(*args)
        cres = kernel.overloads.get(tuple(numba.typeof(a) for a in args))
        if cres is not None:
            self._entry[parallel] = cres.entry_point
        return out


class Optimizer:
    """Base class: param groups, state, step, state_dict, save/load.

    Subclasses set ``_algorithm``, ``_kernels`` (a kernels module), ``_decoupled``,
    ``_hparams`` (group hyperparameter -> checker) and ``_state_names`` (state_dict key
    of the state rows m, v, vmax)."""

    _algorithm = "adam"
    _kernels = _adam_kernels
    _decoupled = False
    _state_names = {"m": "exp_avg", "v": "exp_avg_sq", "vmax": "max_exp_avg_sq",
                    "avg": "param_avg"}
    _hparams = {
        "lr": C.check_lr, "betas": C.check_betas, "eps": C.check_eps,
        "weight_decay": C.check_weight_decay,
        "amsgrad": lambda v, name: C.check_bool(name, v),
        "maximize": lambda v, name: C.check_bool(name, v),
        "bias_correction": lambda v, name: C.check_bool(name, v),
        "eps_mode": C.check_eps_mode,
        "max_grad_norm": C.check_max_grad_norm,
    }

    def __init__(self, params, *, average=None, nonfinite="propagate", **defaults):
        self._average = C.check_average(average)
        self.nonfinite = C.check_nonfinite(nonfinite)
        self.defaults = self._check_hparams(defaults, where="")
        groups = self._normalize_groups(params)
        self.param_groups = []
        for i, g in enumerate(groups):
            full = dict(self.defaults)
            full.update(g)
            full.update(self._check_hparams(full, where=f"param_groups[{i}]"))
            self.param_groups.append(ParamGroup(full))
        #: Steps skipped because a gradient was not finite (nonfinite="skip").
        self.skipped_steps = 0
        #: Global gradient norm of each group at the last step, where it was computed
        #: (max_grad_norm set or nonfinite != "propagate"); else None.
        self.last_grad_norms = [None] * len(self.param_groups)
        self._build([None] * len(self._params), [0] * len(self.param_groups))

    # ------------------------------------------------------------------ validation
    def _check_hparams(self, h, where):
        out = {}
        for key, check in self._hparams.items():
            name = f"{where}[{key!r}]" if where else key
            if key not in h:
                raise ValueError(f"{where or 'defaults'} is missing {key!r}")
            out[key] = check(h[key], name)
        return out

    def _normalize_groups(self, params):
        if isinstance(params, np.ndarray):
            raise TypeError("params must be a list of arrays or of param-group dicts, "
                            "not a single array; wrap it: [param]")
        try:
            params = list(params)
        except TypeError:
            raise TypeError("params must be a list of arrays or of param-group dicts, got "
                            f"{type(params).__name__}") from None
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if all(isinstance(p, dict) for p in params):
            groups = [dict(g) for g in params]
        elif any(isinstance(p, dict) for p in params):
            raise TypeError("params must be all arrays or all param-group dicts, not a mix")
        else:
            groups = [{"params": params}]
        all_params, names = [], []
        for gi, g in enumerate(groups):
            if "params" not in g:
                raise ValueError(f"param_groups[{gi}] has no 'params' entry")
            ps = g["params"]
            ps = [ps] if isinstance(ps, np.ndarray) else list(ps)
            if not ps:
                raise ValueError(f"param_groups[{gi}]['params'] is empty")
            for pi, p in enumerate(ps):
                names.append(f"param_groups[{gi}]['params'][{pi}]")
                C.check_array(names[-1], p, writable=True)
            for k in {"foreach", "fused", "capturable", "differentiable"} & set(g):
                del g[k]   # torch backend switches: meaningless here, accepted for drop-in use
            g["params"] = ps
            all_params.extend(ps)
        C.check_no_overlap(list(zip(names, all_params)))
        self._params = all_params
        return groups

    # ------------------------------------------------------------------ layout
    def _build(self, saved_state, steps):
        """Lay out buckets (one per dtype) and copy ``saved_state[i]`` (dict or None)."""
        self._group_of = []
        for gi, g in enumerate(self.param_groups):
            self._group_of.extend([gi] * len(g["params"]))
        by_dtype = {}
        for i, p in enumerate(self._params):
            by_dtype.setdefault(p.dtype, []).append((i, self._group_of[i], p))
        need_vmax = any(g.get("amsgrad") for g in self.param_groups)
        self._buckets = [_Bucket(dt, mem, len(self.param_groups), need_vmax,
                                 self._average is not None)
                         for dt, mem in by_dtype.items()]
        self._where = [None] * len(self._params)   # param index -> (bucket, row)
        self.grads = [None] * len(self._params)
        for b in self._buckets:
            for r, (i, _, _) in enumerate(b.members):
                self._where[i] = (b, r)
                self.grads[i] = b.grad_views[r]
        # What an acceptable gradient object looks like, for K.first_unlike.
        self._expect = np.array([(id(np.ndarray), id(p.dtype), p.ndim, 0) for p in self._params],
                                dtype=np.int64).reshape(-1, 4)
        self._expect[:, 3] = np.cumsum([0] + [p.ndim for p in self._params])[:-1]
        self._expect_dims = np.array([d for p in self._params for d in p.shape], dtype=np.int64)
        self._steps = np.array(steps, dtype=np.int64)        # per group, bumped by kernels
        self._hyper = np.zeros((len(self.param_groups), K.N_HYPER))
        self._norm_sq = np.zeros(len(self.param_groups))
        self._groups_seen = None
        self._group_params = [g["params"] for g in self.param_groups]
        self._refresh_layout()
        for i, st in enumerate(saved_state):
            if st:
                self._write_param_state(i, st)

    def _refresh_layout(self):
        self._forbid = forbidden_ranges(self._params + [b.state for b in self._buckets])
        self._groups_seen = None                        # re-read groups at next step
        self._launch_keys = None                        # and rebuild the launches

    def _param_state_views(self, i):
        b, r = self._where[i]
        lo, hi = b.offsets[r], b.offsets[r + 1]
        shape = self._params[i].shape
        return {self._state_names[k]: b.state[row, lo:hi].reshape(shape)
                for k, row in b.rows().items()}

    def _write_param_state(self, i, st):
        b, _ = self._where[i]
        if self._state_names["vmax"] in st and not b.has_vmax:
            b.add_vmax()
            self._refresh_layout()
        views = self._param_state_views(i)
        for k, arr in st.items():
            if k in views:
                views[k][...] = arr

    # ------------------------------------------------------------------ per step
    def _groups_changed(self):
        groups = self.param_groups
        if groups is not self._groups_seen or len(groups) != len(self._group_params):
            return True
        for g in groups:
            if type(g) is not ParamGroup or g.dirty:
                return True
        return False

    def _refresh_groups(self):
        """Validate edited param groups and rebuild the launches when kernel flags
        changed. Raises before anything is modified."""
        groups = self.param_groups
        if not isinstance(groups, list) or len(groups) != len(self._group_params):
            raise ValueError("param_groups must stay a list of the optimizer's "
                             f"{len(self._group_params)} groups (use add_param_group)")
        normalised = []
        for gi, g in enumerate(groups):
            if not isinstance(g, dict):
                raise TypeError(f"param_groups[{gi}] must be a dict, got {type(g).__name__}")
            if g.get("params") is not self._group_params[gi]:
                raise ValueError(f"param_groups[{gi}]['params'] was replaced; parameters "
                                 "are fixed at construction (use add_param_group)")
            normalised.append(self._check_hparams(g, where=f"param_groups[{gi}]"))
        avg = 0.0 if self._average is None else self._average
        for gi, (g, values) in enumerate(zip(groups, normalised)):   # all valid: adopt them
            if type(g) is not ParamGroup:
                g = groups[gi] = ParamGroup(g)
            g.update(values)
            g.dirty = False
            self._hyper[gi] = K.hyper_row(
                lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"],
                weight_decay=g["weight_decay"], bias_correction=g.get("bias_correction", True),
                eps_mode=g.get("eps_mode", "paper"), maximize=g["maximize"], average=avg)
        if any(g.get("amsgrad") for g in groups) and not all(b.has_vmax for b in self._buckets):
            for b in self._buckets:
                if not b.has_vmax:
                    b.add_vmax()            # a new state block: new ranges, new launches
            self._forbid = forbidden_ranges(self._params + [b.state for b in self._buckets])
            self._launch_keys = None
        self._clipping = [g["max_grad_norm"] is not None for g in groups]
        self._any_clipping = any(self._clipping)
        # a norm pass before the update: clipping or a non-finite policy
        self._checked_pass = self._any_clipping or self.nonfinite != "propagate"
        self._hyper[:, K.H_CLIP_COEF] = 1.0
        self._groups_seen = groups
        keys = [self._kernel_key(g) for g in groups]
        if keys == self._launch_keys:
            return        # only scalars changed (a schedule editing lr): launches stay
        self._launch_keys = keys
        for b in self._buckets:
            by_key = {}
            for gi in b.groups:
                by_key.setdefault(keys[gi], set()).add(gi)
            b.launches = [_Launch(b, self._kernels.make_kernels(*key), gids, len(self._params))
                          for key, gids in by_key.items()]
        self._launches = [(b, L) for b in self._buckets for L in b.launches]

    def _kernel_key(self, g):
        wd_mode = K.WD_NONE
        if g["weight_decay"] != 0.0:
            wd_mode = K.WD_DECOUPLED if self._decoupled else K.WD_L2
        scale = g["maximize"] or g["max_grad_norm"] is not None
        return (wd_mode, bool(g.get("amsgrad", False)), scale, self._average is not None)

    def _check_grads(self, grads):
        """Validate ``grads``; return their references for the kernels (array object
        addresses, or data addresses without the compiled layout)."""
        if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
            raise TypeError("grads must be a list of arrays, one per parameter, got "
                            f"{type(grads).__name__}")
        params = self._params
        n = len(params)
        if len(grads) != n:
            raise ValueError(f"grads has {len(grads)} arrays, expected {n} "
                             "(one per parameter, in param_groups order)")
        if not HAVE_ARRAY_DATA_OFFSET:
            self._check_grads_python(grads, 0)
            return np.array([g.ctypes.data for g in grads], dtype=np.int64)
        refs = np.fromiter(map(id, grads), np.int64, n)
        if n >= _COMPILED_CHECK_FROM:
            first = K.first_unlike(refs, self._expect, self._expect_dims)
            if first >= 0:
                self._check_grads_python(grads, first)
        else:
            self._check_grads_python(grads, 0)
        return refs

    def _check_grads_python(self, grads, start):
        nd = np.ndarray
        params = self._params
        for i in range(start, len(params)):
            g, p = grads[i], params[i]
            if not (type(g) is nd and g.dtype is p.dtype and g.shape == p.shape
                    and g.flags.c_contiguous):
                C.check_array(f"grads[{i}]", g, writable=False, dtype=p.dtype, shape=p.shape)

    def step(self, grads=None):
        """One optimisation step for every parameter.

        ``grads``: a list of arrays, one per parameter in param_groups order, each of its
        parameter's shape and dtype and C-contiguous; or None to use ``self.grads`` (the
        preallocated gradient views, filled in place by the caller). Parameters change in
        place. Raises TypeError/ValueError, changing nothing, on bad input.

        With ``nonfinite="skip"`` a step whose gradients hold NaN or inf changes nothing
        (parameters, moments and step count stay bit-identical) and counts in
        ``skipped_steps``; with ``"raise"`` it raises ValueError instead. Groups with
        ``max_grad_norm`` scale their gradients by min(1, max_grad_norm / (norm + 1e-6))
        (torch.nn.utils.clip_grad_norm_ over the group) inside the update."""
        if self._groups_changed():
            self._refresh_groups()
        launches = self._launches
        forbid = _NO_RANGES
        g_refs = None
        if grads is not None:
            g_refs = self._check_grads(grads)
            if len(launches) == 1 and not self._checked_pass:
                forbid = self._forbid      # checked inside the one launch, before writes
            else:
                self._check_aliasing(g_refs)
        obj = g_refs is not None and HAVE_ARRAY_DATA_OFFSET
        if self._checked_pass and not self._grad_norms(grads, g_refs, obj):
            return
        hyper, steps = self._hyper, self._steps
        last = launches[-1][1]
        for b, L in launches:
            plan, blocks = L.tables(g_refs)
            if config.use_parallel(L.size):
                with config.launch_lock():
                    bad = L.run(True, plan, obj, blocks, forbid, b.state, hyper, steps,
                                b.sc, L is last)
            else:
                bad = L.run(False, plan, obj, blocks, forbid, b.state, hyper, steps, b.sc,
                            L is last)
            if bad >= 0:
                raise ValueError(f"grads[{L.param_index[bad]}] shares memory with a "
                                 "parameter or the optimizer's state; pass a separate "
                                 "gradient array")

    def _grad_norms(self, grads, g_refs, obj):
        """Per-group gradient norms (one read of the gradients, float64 sums in a fixed
        order), the non-finite policy, and this step's clipping factors (H_CLIP_COEF).
        Returns False when the step is to be skipped."""
        sq = self._norm_sq
        sq[:] = 0.0
        for b, L in self._launches:
            plan, blocks = L.tables(g_refs)
            if config.use_parallel(L.size):
                with config.launch_lock():
                    K.grad_sumsq_parallel(plan, obj, blocks, b.state[0], sq)
            else:
                K.grad_sumsq_serial(plan, obj, blocks, b.state[0], sq)
        norms = [math.sqrt(x) for x in sq.tolist()]      # NaN and inf stay as they are
        bad_groups = [gi for gi, n in enumerate(norms) if not math.isfinite(n)]
        if bad_groups:
            # inf can also be float64 overflow of finite gradients: look at the values.
            arrays = grads if grads is not None else self.grads
            members = {gi: [i for i in range(len(arrays)) if self._group_of[i] == gi]
                       for gi in bad_groups}
            bad = [i for gi in bad_groups for i in members[gi]
                   if not np.isfinite(arrays[i]).all()]
            self.last_grad_norms = norms
            if bad and self.nonfinite == "skip":
                self.skipped_steps += 1
                return False
            if bad and self.nonfinite == "raise":
                raise ValueError(f"grads[{min(bad)}] contains NaN or inf; nothing was "
                                 "updated (nonfinite='raise')")
            for gi in bad_groups:        # finite but overflowing: rescale by the max
                if not any(i in bad for i in members[gi]):
                    amax = max(float(np.abs(arrays[i]).max(initial=0.0)) for i in members[gi])
                    s = sum(float(np.sum(np.square(arrays[i] / amax))) for i in members[gi])
                    norms[gi] = amax * math.sqrt(s)
        self.last_grad_norms = norms
        for gi, g in enumerate(self.param_groups):
            if self._clipping[gi]:
                n = norms[gi]
                coef = g["max_grad_norm"] / (n + 1e-6) if n == n else 1.0
                self._hyper[gi, K.H_CLIP_COEF] = min(1.0, coef)
        return True

    def _check_aliasing(self, g_refs):
        for b, L in self._launches:
            plan, _ = L.tables(g_refs)
            bad = K.first_alias(plan, HAVE_ARRAY_DATA_OFFSET, self._forbid, b.dtype.itemsize)
            if bad >= 0:
                raise ValueError(f"grads[{L.param_index[bad]}] shares memory with a "
                                 "parameter or the optimizer's state; pass a separate "
                                 "gradient array")

    # ------------------------------------------------------------------ copy / pickle
    def __getstate__(self):
        # The plans hold raw data addresses: never copy them. A copy (copy.deepcopy,
        # pickle) is rebuilt from the parameters and the state_dict.
        return {"param_groups": self.param_groups, "defaults": self.defaults,
                "average": self._average, "nonfinite": self.nonfinite,
                "state_dict": self.state_dict()}

    def __setstate__(self, st):
        self._average = st["average"]
        self.nonfinite = st["nonfinite"]
        self.defaults = st["defaults"]
        groups = self._normalize_groups(st["param_groups"])
        self.param_groups = [ParamGroup(g) for g in groups]
        self.skipped_steps = 0
        self.last_grad_norms = [None] * len(groups)
        self._build([None] * len(self._params), [0] * len(groups))
        self.load_state_dict(st["state_dict"])

    def __copy__(self):
        raise TypeError("a shallow copy of an optimizer would share its state buffers; "
                        "use copy.deepcopy(opt) (copies parameters and state) or build a new "
                        "optimizer and load_state_dict(opt.state_dict())")

    @property
    def grad_buffers(self):
        """The flat gradient buffers behind ``self.grads``, one per parameter dtype (in
        order of first appearance): one array to scale, clip or zero at once."""
        return [b.grad_flat for b in self._buckets]

    def zero_grad(self):
        """Set the preallocated gradients ``self.grads`` to zero."""
        for b in self._buckets:
            b.grad_flat.fill(0)

    def averaged_params(self):
        """Temporal averages of the parameters (paper section 7.2), bias-corrected:
        pbar / (1 - average**t), as new arrays of the parameters' shapes and dtypes. Before
        the first step, copies of the parameters. Needs ``average=beta``."""
        if self._average is None:
            raise ValueError("averaged_params() needs the optimizer built with "
                             "average=beta (e.g. average=0.999)")
        out = []
        for i, p in enumerate(self._params):
            t = int(self._steps[self._group_of[i]])
            if t == 0:
                out.append(p.copy())
                continue
            avg = self._param_state_views(i)["param_avg"]
            out.append((avg / (1.0 - self._average ** t)).astype(p.dtype))
        return out

    # ------------------------------------------------------------------ state
    @property
    def state(self):
        """{param index: {"step", moment buffers...}} as views of the live state (read
        them; write through load_state_dict)."""
        out = {}
        for i in range(len(self._params)):
            st = {"step": int(self._steps[self._group_of[i]])}
            st.update(self._param_state_views(i))
            out[i] = st
        return out

    def state_dict(self):
        """A plain dict of numbers, strings and numpy arrays (copies), torch layout:
        {"state": {i: {...}}, "param_groups": [{hyperparameters..., "params": [i, ...]}]},
        plus "algorithm", "average", "skipped_steps"."""
        state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                 for i, s in self.state.items()}
        vmax = self._state_names["vmax"]
        for i, st in state.items():   # amsgrad switched on since the last step: the buffer
            if self.param_groups[self._group_of[i]].get("amsgrad") and vmax not in st:
                st[vmax] = np.zeros_like(self._params[i])   # starts at zero, as step would
        groups, k = [], 0
        for g in self.param_groups:
            d = {key: (tuple(val) if key == "betas" else val)
                 for key, val in g.items() if key != "params"}
            d["params"] = list(range(k, k + len(g["params"])))
            k += len(g["params"])
            groups.append(d)
        return {"algorithm": self._algorithm, "state": state, "param_groups": groups,
                "average": self._average, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict):
        """Restore a state_dict() of an optimizer over parameters of the same shapes and
        dtypes. Everything is checked before anything is written."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"state_dict has no {key!r} entry")
        alg = state_dict.get("algorithm", self._algorithm)
        if alg != self._algorithm:
            raise ValueError(f"state_dict is from a {alg!r} optimizer, not {self._algorithm!r}")
        if "average" in state_dict and state_dict["average"] != self._average:
            raise ValueError(f"state_dict has average={state_dict['average']!r}, this "
                             f"optimizer average={self._average!r}")
        skipped = state_dict.get("skipped_steps", 0)
        if isinstance(skipped, (bool, np.bool_)) or not isinstance(skipped, (int, np.integer)) \
                or skipped < 0:
            raise ValueError(f"state_dict['skipped_steps'] must be an int >= 0, got {skipped!r}")
        groups, state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            raise ValueError("state_dict['param_groups'] must have "
                             f"{len(self.param_groups)} groups, got "
                             f"{len(groups) if isinstance(groups, (list, tuple)) else groups!r}")
        if not isinstance(state, dict):
            raise TypeError("state_dict['state'] must be a dict")
        new_groups, k = [], 0
        for gi, (g, mine) in enumerate(zip(groups, self.param_groups)):
            if not isinstance(g, dict):
                raise TypeError(f"state_dict['param_groups'][{gi}] must be a dict")
            n = len(mine["params"])
            if list(g.get("params", [])) != list(range(k, k + n)):
                raise ValueError(f"state_dict['param_groups'][{gi}]['params'] must be "
                                 f"{list(range(k, k + n))} (parameter counts differ)")
            merged = {key: val for key, val in mine.items() if key != "params"}
            merged.update({key: val for key, val in g.items() if key != "params"})
            merged.update(self._check_hparams(merged,
                                              where=f"state_dict['param_groups'][{gi}]"))
            new_groups.append(merged)
            k += n
        names = self._state_names
        required = [names["m"], names["v"]] + ([names["avg"]] if self._average else [])
        new_steps = [None] * len(self.param_groups)
        new_state = [None] * len(self._params)
        for i, p in enumerate(self._params):
            gi = self._group_of[i]
            st = state.get(i, state.get(str(i)))
            where = f"state_dict['state'][{i}]"
            if st is None:
                st = {"step": 0}
            if not isinstance(st, dict):
                raise TypeError(f"{where} must be a dict")
            step = st.get("step", 0)
            if isinstance(step, np.ndarray) and step.shape == ():
                step = step.item()
            if isinstance(step, float) and step.is_integer():
                step = int(step)
            if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) \
                    or not 0 <= step < C.MAX_STEP:
                raise ValueError(f"{where}['step'] must be an int >= 0 and < 2**63 - 1, "
                                 f"got {step!r}")
            if new_steps[gi] is None:
                new_steps[gi] = int(step)
            elif new_steps[gi] != step:
                raise ValueError(f"{where}['step'] is {step} but other parameters of "
                                 f"param_groups[{gi}] are at step {new_steps[gi]}")
            arrays = {}
            for key in names.values():
                if key not in st:
                    continue
                a = st[key]
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{where}[{key!r}] must be a numpy.ndarray, got "
                                    f"{type(a).__name__}")
                if a.dtype != p.dtype:
                    raise TypeError(f"{where}[{key!r}] must have dtype {p.dtype}, got {a.dtype}")
                if a.shape != p.shape:
                    raise ValueError(f"{where}[{key!r}] must have shape {p.shape}, got {a.shape}")
                arrays[key] = a
            missing = [key for key in required if key not in arrays]
            if step > 0 and missing:
                raise ValueError(f"{where} has step {step} but lacks {'/'.join(missing)}")
            if step > 0 and new_groups[gi].get("amsgrad") and names["vmax"] not in arrays:
                raise ValueError(f"{where} lacks {names['vmax']}, needed with amsgrad=True")
            full = {key: np.zeros_like(p) for key in required}
            full.update(arrays)
            new_state[i] = full
        # ---- everything valid: write.
        for gi, g in enumerate(new_groups):
            self.param_groups[gi].update(g)
        for i, st in enumerate(new_state):
            self._write_param_state(i, st)
            views = self._param_state_views(i)
            if names["vmax"] in views and names["vmax"] not in st:
                views[names["vmax"]][...] = 0
        self._steps[:] = [s or 0 for s in new_steps]
        self.skipped_steps = int(skipped)

    def add_param_group(self, param_group):
        """Add a param-group dict (torch semantics): its parameters start at step 0."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        sd = self.state_dict()
        old_params, old_groups = list(self._params), list(self.param_groups)
        gi = len(old_groups)
        g = dict(param_group)
        if g.get("params") is None:
            raise ValueError("param_group has no 'params' entry")
        full = dict(self.defaults)
        full.update(g)
        full.update(self._check_hparams(full, where=f"param_groups[{gi}]"))
        self._normalize_groups([dict(x) for x in old_groups] + [full])  # validates; sets _params
        full["params"] = self._params[len(old_params):]
        self.param_groups = old_groups + [ParamGroup(full)]
        self.last_grad_norms = self.last_grad_norms + [None]
        saved = [{k: v for k, v in sd["state"][i].items() if k != "step"}
                 for i in range(len(old_params))] + [None] * len(full["params"])
        self._build(saved, list(self._steps) + [0])

    def save(self, path):
        """Write the state to ``path`` (.npz, no pickle, checksummed) atomically: a
        temporary file in the same folder is fsynced, then renamed over ``path``. The file
        format lives in :mod:`fastadam.checkpoint`."""
        from . import checkpoint
        checkpoint.save(self, path)

    def load(self, path):
        """Restore a checkpoint written by :meth:`save`. The file is verified (format,
        algorithm, checksum) and the state checked fully before anything is written; on
        error (ValueError/TypeError) the optimizer is unchanged."""
        from . import checkpoint
        checkpoint.load(self, path)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"



def read_checkpoint(path):
    """The state_dict stored in a checkpoint file written by Optimizer.save (verified;
    see :func:`fastadam.checkpoint.read_checkpoint`)."""
    from . import checkpoint
    return checkpoint.read_checkpoint(path)


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2014, Algorithm 1), the same algorithm as torch.optim.Adam.

    ``weight_decay`` is L2: ``g + weight_decay * p`` enters the moments. For decoupled
    weight decay use :class:`AdamW`. ``eps_mode="paper"`` (default, = PyTorch) or
    ``"hat"`` (= TensorFlow/Keras, scikit-learn); see :func:`fastadam.adam_step` for the
    exact formula. ``bias_correction=False`` drops the 1 - beta**t factors.

    Options beyond torch: ``max_grad_norm`` (per group: clip the group's global gradient
    norm inside the update, as ``clip_grad_norm_`` would), ``average=beta`` (temporal
    averaging of the parameters, paper section 7.2, see :meth:`averaged_params`),
    ``nonfinite`` ("propagate", the default: NaN/inf flow into the state as in torch and
    cost nothing; "skip": such a step changes nothing and is counted in
    ``skipped_steps``; "raise": ValueError, nothing changed. "skip" and "raise" read the
    gradients once more per step to check them, fused with the clipping norm).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, bias_correction=True, eps_mode="paper",
                 max_grad_norm=None, average=None, nonfinite="propagate"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, bias_correction=bias_correction,
                         eps_mode=eps_mode, max_grad_norm=max_grad_norm, average=average,
                         nonfinite=nonfinite)


class AdamW(Optimizer):
    r"""AdamW (Loshchilov & Hutter): Adam with decoupled weight decay,
    ``p = p * (1 - lr * weight_decay)`` before the Adam update; = torch.optim.AdamW.
    Options as :class:`Adam`."""

    _decoupled = True
    _algorithm = "adamw"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, bias_correction=True, eps_mode="paper",
                 max_grad_norm=None, average=None, nonfinite="propagate"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, bias_correction=bias_correction,
                         eps_mode=eps_mode, max_grad_norm=max_grad_norm, average=average,
                         nonfinite=nonfinite)


class Adamax(Optimizer):
    r"""AdaMax (Kingma & Ba, section 7.1), the same algorithm as torch.optim.Adamax:
    u = max(b2 * u, |g| + eps); p -= lr / (1 - b1**t) * m / u. ``weight_decay`` is L2.
    State keys: ``exp_avg``, ``exp_inf``. Options ``max_grad_norm``, ``average``,
    ``nonfinite`` as :class:`Adam`; see :func:`fastadam.adamax_step`."""

    _algorithm = "adamax"
    _kernels = _adamax_kernels
    _state_names = {"m": "exp_avg", "v": "exp_inf", "vmax": "max_exp_inf",
                    "avg": "param_avg"}
    _hparams = {k: v for k, v in Optimizer._hparams.items()
                if k not in ("amsgrad", "bias_correction", "eps_mode")}

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 maximize=False, max_grad_norm=None, average=None, nonfinite="propagate"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         maximize=maximize, max_grad_norm=max_grad_norm, average=average,
                         nonfinite=nonfinite)
