"""Optimizer objects: Adam and AdamW over lists of arrays or torch-style param groups.

The optimizer owns the moments, in one aligned state block per parameter dtype (rows
m, v[, vmax]), and steps every parameter of a dtype in a single kernel launch through a
chunk plan of data addresses (see ``kernels/adam.py``). The update formula and its
eps modes are documented once, in :func:`fastadam.adam_step`.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
import zlib

import numpy as np

from . import _checks as C
from . import config
from .flat import aligned_zeros, forbidden_ranges, make_plan, merge_contiguous
from .kernels import adam as K
from .kernels._pointers import HAVE_ARRAY_DATA_OFFSET

CHECKPOINT_FORMAT = 1
_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class _Bucket:
    """All parameters of one dtype: their state block, plans and scalars table."""

    def __init__(self, dtype, members, n_groups, amsgrad_rows):
        self.dtype = dtype
        self.members = members              # [(flat index, group index, param array)]
        sizes = [p.size for _, _, p in members]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.size = int(self.offsets[-1])
        self.state = aligned_zeros(self.size, dtype, rows=2 + amsgrad_rows)
        self.grad_flat = aligned_zeros(self.size, dtype)
        self.grad_views = [self.grad_flat[o:o + p.size].reshape(p.shape)
                           for o, (_, _, p) in zip(self.offsets, members)]
        self.sc = np.zeros((n_groups, K.N_SCALARS), dtype=dtype)
        self.launches = None                # built for the current group flag sets

    def has_vmax(self):
        return self.state.shape[0] > 2

    def add_vmax(self):
        """Allocate the max_exp_avg_sq row (zeros) when a group turns amsgrad on."""
        new = aligned_zeros(self.size, self.dtype, rows=3)
        new[:2] = self.state
        self.state = new


class _Launch:
    """One kernel launch: the chunks of the groups that share a kernel flag set."""

    def __init__(self, bucket, key, group_ids, n_params):
        self.key = key
        rows = [i for i, (_, g, _) in enumerate(bucket.members) if g in group_ids]
        self.rows = np.array(rows, dtype=np.int64)
        self.param_index = [bucket.members[i][0] for i in rows]
        params = [bucket.members[i][2] for i in rows]
        self.size = sum(p.size for p in params)
        # True when this launch covers every parameter in order: grads map 1:1 to rows.
        self.all_rows = self.param_index == list(range(n_params))
        self.plan = make_plan(params, bucket.offsets[self.rows],
                              [bucket.members[i][1] for i in rows])
        self.blocks = K.split_blocks(self.plan[:, K.LENGTH])
        g_addr = [bucket.grad_views[i].ctypes.data for i in rows]
        self.flat_plan = merge_contiguous(self.plan, g_addr, bucket.dtype.itemsize)
        self.flat_blocks = K.split_blocks(self.flat_plan[:, K.LENGTH])
        self.kernels = K.make_kernels(*key)


class Optimizer:
    """Base class: param groups, state, step, state_dict, save/load.

    Subclasses set ``_defaults`` (hyperparameter defaults), ``_decoupled`` and
    ``_algorithm``."""

    _defaults: dict = {}
    _decoupled = False
    _algorithm = "adam"
    _hparams = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
                "bias_correction", "eps_mode")

    def __init__(self, params, **defaults):
        self.defaults = self._check_hparams(defaults, where="")
        groups = self._normalize_groups(params)
        self.param_groups = []
        for i, g in enumerate(groups):
            full = dict(self.defaults)
            full.update(g)
            full.update(self._check_hparams(full, where=f"param_groups[{i}]"))
            self.param_groups.append(full)
        self._build([None] * len(self._params), [0] * len(self.param_groups))

    # ------------------------------------------------------------------ validation
    def _check_hparams(self, h, where):
        def name(k):
            return f"{where}[{k!r}]" if where else k
        out = {
            "lr": C.check_lr(h["lr"], name("lr")),
            "betas": C.check_betas(h["betas"], name("betas")),
            "eps": C.check_eps(h["eps"], name("eps")),
            "weight_decay": C.check_weight_decay(h["weight_decay"], name("weight_decay")),
            "amsgrad": C.check_bool(name("amsgrad"), h["amsgrad"]),
            "maximize": C.check_bool(name("maximize"), h["maximize"]),
            "bias_correction": C.check_bool(name("bias_correction"), h["bias_correction"]),
            "eps_mode": C.check_eps_mode(h["eps_mode"], name("eps_mode")),
        }
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
        self._params = []
        for gi, g in enumerate(groups):
            if "params" not in g:
                raise ValueError(f"param_groups[{gi}] has no 'params' entry")
            ps = g["params"]
            ps = [ps] if isinstance(ps, np.ndarray) else list(ps)
            if not ps:
                raise ValueError(f"param_groups[{gi}]['params'] is empty")
            for pi, p in enumerate(ps):
                C.check_array(f"param_groups[{gi}]['params'][{pi}]", p, writable=True)
            unknown = set(g) - set(self.defaults) - {"params"}
            for k in unknown & {"foreach", "fused", "capturable", "differentiable"}:
                del g[k]   # torch backend switches: meaningless here, accepted for drop-in use
            g["params"] = ps
            self._params.extend(ps)
        names = {}
        k = 0
        for gi, g in enumerate(groups):
            for pi, p in enumerate(g["params"]):
                names[k] = f"param_groups[{gi}]['params'][{pi}]"
                k += 1
        C.check_no_overlap([(names[i], p) for i, p in enumerate(self._params)])
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
        any_amsgrad = any(g["amsgrad"] for g in self.param_groups)
        self._buckets = [_Bucket(dt, mem, len(self.param_groups), int(any_amsgrad))
                         for dt, mem in by_dtype.items()]
        self._where = [None] * len(self._params)   # param index -> (bucket, row)
        for b in self._buckets:
            for r, (i, _, _) in enumerate(b.members):
                self._where[i] = (b, r)
        self.grads = [None] * len(self._params)
        for b in self._buckets:
            for r, (i, _, _) in enumerate(b.members):
                self.grads[i] = b.grad_views[r]
        self._forbid = forbidden_ranges(self._params + [b.state for b in self._buckets])
        self._steps = np.array(steps, dtype=np.int64)        # per group, updated by kernels
        self._hyper = np.zeros((len(self.param_groups), K.N_HYPER))
        self._snap = [None] * len(self.param_groups)
        self._group_params = [g["params"] for g in self.param_groups]
        for i, st in enumerate(saved_state):
            if st:
                self._write_param_state(i, st)

    def _param_state_views(self, i):
        b, r = self._where[i]
        lo, hi = b.offsets[r], b.offsets[r + 1]
        shape = self._params[i].shape
        out = {"exp_avg": b.state[0, lo:hi].reshape(shape),
               "exp_avg_sq": b.state[1, lo:hi].reshape(shape)}
        if b.has_vmax():
            out["max_exp_avg_sq"] = b.state[K.VMAX_ROW, lo:hi].reshape(shape)
        return out

    def _write_param_state(self, i, st):
        b, _ = self._where[i]
        if "max_exp_avg_sq" in st and not b.has_vmax():
            b.add_vmax()
            self._forbid = forbidden_ranges(self._params + [x.state for x in self._buckets])
        views = self._param_state_views(i)
        for k, arr in st.items():
            if k in views:
                views[k][...] = arr

    # ------------------------------------------------------------------ per step
    def _refresh_groups(self):
        """Validate edited param groups (cheaply detected) and rebuild launch sets when
        their kernel flags changed. Raises before anything is modified."""
        changed = False
        groups = self.param_groups
        for gi, g in enumerate(groups):
            try:
                snap = (g["lr"], tuple(g["betas"]), g["eps"], g["weight_decay"],
                        g["amsgrad"], g["maximize"], g["bias_correction"], g["eps_mode"])
            except (KeyError, TypeError) as e:
                raise ValueError(f"param_groups[{gi}] is missing or has a malformed "
                                 f"hyperparameter: {e}") from None
            if snap != self._snap[gi]:
                if g.get("params") is not self._group_params[gi]:
                    raise ValueError(f"param_groups[{gi}]['params'] was replaced; parameters "
                                     "are fixed at construction (use add_param_group)")
                self._check_hparams(g, where=f"param_groups[{gi}]")
                changed = True
        if not changed:
            return
        for gi, g in enumerate(groups):   # all valid: adopt normalised values
            g.update(self._check_hparams(g, where=f"param_groups[{gi}]"))
            self._snap[gi] = (g["lr"], tuple(g["betas"]), g["eps"], g["weight_decay"],
                              g["amsgrad"], g["maximize"], g["bias_correction"], g["eps_mode"])
            self._hyper[gi] = K.hyper_row(
                lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"],
                weight_decay=g["weight_decay"], bias_correction=g["bias_correction"],
                eps_mode=g["eps_mode"], grad_scale=-1.0 if g["maximize"] else 1.0)
        need_vmax = any(g["amsgrad"] for g in groups)
        for b in self._buckets:
            if need_vmax and not b.has_vmax():
                b.add_vmax()
            b.launches = None
        self._forbid = forbidden_ranges(self._params + [b.state for b in self._buckets])
        self._keys = [self._kernel_key(g) for g in groups]
        for b in self._buckets:
            keys = {}
            for gi in {g for _, g, _ in b.members}:
                keys.setdefault(self._keys[gi], set()).add(gi)
            b.launches = [_Launch(b, key, gids, len(self._params)) for key, gids in keys.items()]
        self._launches = [(b, L) for b in self._buckets for L in b.launches]

    def _kernel_key(self, g):
        wd_mode = K.WD_NONE
        if g["weight_decay"] != 0.0:
            wd_mode = K.WD_DECOUPLED if self._decoupled else K.WD_L2
        return K.kernel_key(weight_decay_mode=wd_mode, amsgrad=g["amsgrad"],
                            scale_grad=g["maximize"], average=False)

    def _check_grads(self, grads):
        if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
            raise TypeError("grads must be a list of arrays, one per parameter, got "
                            f"{type(grads).__name__}")
        params = self._params
        if len(grads) != len(params):
            raise ValueError(f"grads has {len(grads)} arrays, expected {len(params)} "
                             "(one per parameter, in param_groups order)")
        nd = np.ndarray
        for i, (g, p) in enumerate(zip(grads, params)):
            if not (type(g) is nd and g.dtype is p.dtype and g.shape == p.shape
                    and g.flags.c_contiguous):
                C.check_array(f"grads[{i}]", g, writable=False, dtype=p.dtype, shape=p.shape)

    def step(self, grads=None):
        """One optimisation step for every parameter.

        ``grads``: a list of arrays, one per parameter in param_groups order, each of its
        parameter's shape and dtype and C-contiguous; or None to use ``self.grads`` (the
        preallocated gradient views, filled in place by the caller). Parameters change in
        place. Raises TypeError/ValueError, changing nothing, on bad input."""
        self._refresh_groups()
        user = grads is not None
        if user:
            self._check_grads(grads)
            if HAVE_ARRAY_DATA_OFFSET:
                g_refs = np.fromiter(map(id, grads), np.int64, len(grads))
            else:
                g_refs = np.array([g.ctypes.data for g in grads], dtype=np.int64)
        launches = self._launches
        forbid = _NO_RANGES
        if user:
            if len(launches) == 1:
                forbid = self._forbid      # checked inside the one launch, before writes
            else:
                self._check_aliasing(g_refs)
        obj = user and HAVE_ARRAY_DATA_OFFSET
        hyper, steps = self._hyper, self._steps
        last = launches[-1]
        for b, L in launches:
            if user:
                plan, blocks = L.plan, L.blocks
                plan[:, K.G_REF] = g_refs if L.all_rows else g_refs[L.param_index]
            else:
                plan, blocks = L.flat_plan, L.flat_blocks
            bump = L is last[1]
            if config.use_parallel(L.size):
                with config.launch_lock():
                    bad = L.kernels[3](plan, obj, blocks, forbid, b.state, hyper, steps,
                                       b.sc, bump)
            else:
                bad = L.kernels[2](plan, obj, blocks, forbid, b.state, hyper, steps, b.sc, bump)
            if bad >= 0:
                raise ValueError(f"grads[{L.param_index[bad]}] shares memory with a "
                                 "parameter or the optimizer's state; pass a separate "
                                 "gradient array")

    def _check_aliasing(self, g_refs):
        obj = HAVE_ARRAY_DATA_OFFSET
        for b in self._buckets:
            for L in b.launches:
                plan = L.plan
                plan[:, K.G_REF] = g_refs if L.all_rows else g_refs[L.param_index]
                bad = K.first_alias(plan, obj, self._forbid, b.dtype.itemsize)
                if bad >= 0:
                    i = L.param_index[bad]
                    raise ValueError(f"grads[{i}] shares memory with a parameter or the "
                                     "optimizer's state; pass a separate gradient array")

    def zero_grad(self):
        """Set the preallocated gradients ``self.grads`` to zero."""
        for b in self._buckets:
            b.grad_flat.fill(0)

    # ------------------------------------------------------------------ state
    @property
    def state(self):
        """{param index: {"step", "exp_avg", "exp_avg_sq"[, "max_exp_avg_sq"]}} as views
        of the live state (read them; write through load_state_dict)."""
        out = {}
        for i in range(len(self._params)):
            st = {"step": int(self._steps[self._group_of[i]])}
            st.update(self._param_state_views(i))
            out[i] = st
        return out

    def state_dict(self):
        """A plain dict of numbers, strings and numpy arrays (copies), torch layout:
        {"state": {i: {...}}, "param_groups": [{hyperparameters..., "params": [i, ...]}]}."""
        state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                 for i, s in self.state.items()}
        groups, k = [], 0
        for g in self.param_groups:
            d = {key: (tuple(val) if key == "betas" else val)
                 for key, val in g.items() if key != "params"}
            d["params"] = list(range(k, k + len(g["params"])))
            k += len(g["params"])
            groups.append(d)
        return {"algorithm": self._algorithm, "state": state, "param_groups": groups}

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
                    or step < 0:
                raise ValueError(f"{where}['step'] must be an int >= 0, got {step!r}")
            if new_steps[gi] is None:
                new_steps[gi] = int(step)
            elif new_steps[gi] != step:
                raise ValueError(f"{where}['step'] is {step} but other parameters of "
                                 f"param_groups[{gi}] are at step {new_steps[gi]}")
            arrays = {}
            for key in _STATE_KEYS:
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
            if step > 0 and not {"exp_avg", "exp_avg_sq"} <= set(arrays):
                raise ValueError(f"{where} has step {step} but lacks exp_avg/exp_avg_sq")
            if step > 0 and new_groups[gi]["amsgrad"] and "max_exp_avg_sq" not in arrays:
                raise ValueError(f"{where} lacks max_exp_avg_sq, needed with amsgrad=True")
            zeros = {key: np.zeros_like(p) for key in ("exp_avg", "exp_avg_sq")}
            zeros.update(arrays)
            new_state[i] = zeros
        # ---- everything valid: write.
        for gi, g in enumerate(new_groups):
            self.param_groups[gi].update(g)
        for i, st in enumerate(new_state):
            self._write_param_state(i, st)
            if "max_exp_avg_sq" not in st:
                views = self._param_state_views(i)
                if "max_exp_avg_sq" in views:
                    views["max_exp_avg_sq"][...] = 0
        self._steps[:] = [s or 0 for s in new_steps]
        self._snap = [None] * len(self.param_groups)

    def add_param_group(self, param_group):
        """Add a param-group dict (torch semantics): its parameters start at step 0."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        sd = self.state_dict()
        old_params, old_groups = list(self._params), list(self.param_groups)
        gi = len(old_groups)
        g = dict(param_group)
        ps = g.get("params")
        if ps is None:
            raise ValueError("param_group has no 'params' entry")
        ps = [ps] if isinstance(ps, np.ndarray) else list(ps)
        g["params"] = ps
        full = dict(self.defaults)
        full.update(g)
        full.update(self._check_hparams(full, where=f"param_groups[{gi}]"))
        groups = [dict(x) for x in old_groups] + [full]
        self._normalize_groups(groups)   # validates arrays and overlap; sets _params
        self.param_groups = old_groups + [full]
        saved = [{k: v for k, v in sd["state"][i].items() if k != "step"}
                 for i in range(len(old_params))] + [None] * len(ps)
        self._build(saved, list(self._steps) + [0])

    # ------------------------------------------------------------------ files
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


_NO_RANGES = np.zeros((0, 2), dtype=np.int64)


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2014, Algorithm 1), the same algorithm as torch.optim.Adam.

    ``weight_decay`` is L2: ``g + weight_decay * p`` enters the moments. For decoupled
    weight decay use :class:`AdamW`. ``eps_mode="paper"`` (default, = PyTorch) or
    ``"hat"`` (= TensorFlow/Keras, scikit-learn); see :func:`fastadam.adam_step` for the
    exact formula. ``bias_correction=False`` drops the 1 - beta**t factors.
    """

    _defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                     amsgrad=False, maximize=False, bias_correction=True, eps_mode="paper")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, bias_correction=True, eps_mode="paper"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, bias_correction=bias_correction,
                         eps_mode=eps_mode)


class AdamW(Optimizer):
    r"""AdamW (Loshchilov & Hutter): Adam with decoupled weight decay,
    ``p = p * (1 - lr * weight_decay)`` before the Adam update; = torch.optim.AdamW."""

    _decoupled = True
    _algorithm = "adamw"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, bias_correction=True, eps_mode="paper"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, bias_correction=bias_correction,
                         eps_mode=eps_mode)
