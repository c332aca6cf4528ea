"""The optimizer object: param groups, state buffers, the step, copy and pickle.

An optimizer is an algorithm of the registry (``kernels/registry.py``) plus this one class:
nothing here knows an algorithm by name. It owns the state in one aligned block per
parameter dtype and steps every parameter of a dtype in one kernel launch per kernel key
through a chunk plan of data addresses.
"""
from __future__ import annotations

import threading

import numpy as np

from .. import _checks as C
from .. import config
from ..flat import forbidden_ranges
from ..kernels import registry
from ..kernels.spec import (H_ALG, H_AVERAGE, H_CLIP, H_LR, H_SIGN, H_WEIGHT_DECAY,
                            N_GROUP_SCALARS, N_HYPER, wd_mode)
from ..kernels.memory import G_DATA, G_INDEXED, G_OBJECTS
from ..kernels.unsafe import HAVE_OBJECT_GRADS
from ..lowp_layout import _is_16bit
from .groups import (TORCH_SWITCHES, ParamGroup, Validator, groups_repr, normalize_params,
                     validate_groups)
from .guard import grad_norms
from .lowp import LowpState, check_lowp_options, check_state_dtype, make_lowp
from .plan import Bucket, Launch
from .grads import GradChecksMixin
from .state import StateDictMixin

_NO_RANGES = np.zeros((0, 2), dtype=np.int64)
_NO_REFS = np.zeros(0, dtype=np.int64)
_NO_EXPECT = np.zeros((0, 4), dtype=np.int64)
_NO_DIMS = np.zeros(0, dtype=np.int64)


class Optimizer(StateDictMixin, GradChecksMixin):
    """Base class of the optimizer objects. A subclass names its algorithm
    (``algorithm = "adam"``) and gives the constructor torch's signature; everything else
    comes from the registry entry."""

    algorithm = "adam"

    def __init__(self, params, *, average=None, nonfinite="propagate", state_dtype=None,
                 lowp_options=None, **defaults):
        self._alg = registry.get(self.algorithm)
        self._validate = Validator(self._alg)
        self._lock = threading.Lock()
        self._average = C.check_average(average)
        self.nonfinite = C.check_nonfinite(nonfinite)
        #: "float32" / "bfloat16" / "int8", or None: the parameters' dtype.
        self.state_dtype = check_state_dtype(state_dtype, self.algorithm, self._average)
        self._lowp = None            # low-precision state (optim/lowp.py), set below
        lowp_options = check_lowp_options(lowp_options)
        for k in TORCH_SWITCHES & set(defaults):
            del defaults[k]
        self.defaults = self._validate(self._validate.defaults(defaults), where="")
        unknown = set(defaults) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected option(s) "
                            f"{sorted(unknown)}")
        groups = self._normalize_groups(params, init=True)
        self._lowp = make_lowp(self.state_dtype, lowp_options, self._params, self.algorithm,
                               self._average)
        self._check_param_dtypes(groups, self._params)
        self.param_groups = []
        for i, g in enumerate(groups):
            full = dict(self.defaults)
            full.update(g)
            full.update(self._validate(full, where=f"param_groups[{i}]"))
            self.param_groups.append(ParamGroup(full))
        #: Steps skipped because a gradient was not finite (nonfinite="skip").
        self.skipped_steps = 0
        #: Global gradient norm of each group at the last step, where it was computed
        #: (max_grad_norm set or nonfinite != "propagate"); else None.
        self.last_grad_norms = [None] * len(self.param_groups)
        self._build([None] * len(self._params), [0] * len(self.param_groups), None)

    # ------------------------------------------------------------------ construction
    def _normalize_groups(self, params, init=False):
        def check(name, p):
            # bfloat16 and float16 parameters go to the low-precision path (optim/lowp.py)
            lowp_dtype = (init or self._lowp is not None) and _is_16bit(p.dtype)
            C.check_array(name, p, writable=True, dtype=p.dtype if lowp_dtype else None)
        groups = normalize_params(params, check)
        all_params = [p for g in groups for p in g["params"]]
        if not init:
            self._check_param_dtypes(groups, all_params)
        self._params = all_params
        return groups

    def _check_param_dtypes(self, groups, all_params):
        if self._lowp is not None:
            self._lowp.check_groups(groups, self.defaults,
                                    lambda gi, pi: f"param_groups[{gi}]['params'][{pi}]")
        elif self.state_dtype == "float32" and any(p.dtype != np.float32 for p in all_params):
            raise TypeError("state_dtype='float32' needs float32 (or bfloat16) parameters; "
                            "use state_dtype=None for the parameters' own dtype")

    def _build(self, saved_state, steps, group_scalars):
        """Lay out buckets (one per dtype) and copy ``saved_state[i]`` (dict or None)."""
        alg = self._alg
        self._group_of = []
        for gi, g in enumerate(self.param_groups):
            self._group_of.extend([gi] * len(g["params"]))
        by_dtype = {}
        for i, p in enumerate(self._params):
            by_dtype.setdefault(p.dtype, []).append((i, self._group_of[i], p))
        n_rows = 0 if self._lowp else max(alg.n_state(g) for g in self.param_groups)
        self._buckets = [Bucket(dt, mem, len(self.param_groups), n_rows,
                                self._average is not None)
                         for dt, mem in by_dtype.items()]
        self._where = [None] * len(self._params)   # param index -> (bucket, row)
        self.grads = [None] * len(self._params)
        for b in self._buckets:
            for r, (i, _, _) in enumerate(b.members):
                self._where[i] = (b, r)
                self.grads[i] = b.grad_views[r]
        # What an acceptable gradient object looks like, for first_unlike.
        self._expect = np.array([(id(np.ndarray), id(p.dtype), p.ndim, 0) for p in self._params],
                                dtype=np.int64).reshape(-1, 4)
        self._expect[:, 3] = np.cumsum([0] + [p.ndim for p in self._params])[:-1]
        self._expect_dims = np.array([d for p in self._params for d in p.shape], dtype=np.int64)
        self._seq = np.array([0, id(list)], dtype=np.int64)   # a step's gradient list
        self._steps = np.array(steps, dtype=np.int64)        # per group, bumped by kernels
        self._hyper = np.zeros((len(self.param_groups), N_HYPER))
        self._gscal = np.zeros((len(self.param_groups), N_GROUP_SCALARS))
        for j, (_, init) in enumerate(alg.group_scalars):
            self._gscal[:, j] = init
        if group_scalars is not None:
            self._gscal[:len(group_scalars)] = group_scalars
        self._norm_sq = np.zeros(len(self.param_groups))
        self._group_params = [g["params"] for g in self.param_groups]
        if self._lowp is not None:
            self._lowp.build(self)
        self._refresh_layout()
        for i, st in enumerate(saved_state):
            if st:
                self._write_param_state(i, st)

    def _refresh_layout(self):
        lowp = self._lowp.arrays() if self._lowp is not None else []
        self._forbid = forbidden_ranges(self._params + [b.state for b in self._buckets] + lowp)
        self._groups_seen = None                        # re-read groups at next step
        self._fast = None                               # and choose step's path again
        self._launch_keys = None                        # and rebuild the launches
        for _, L in getattr(self, "_launches", ()):     # whose frames address old arrays
            L.frames.clear()

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
        """Validate edited param groups and rebuild the launches when kernel keys changed.
        Raises before anything is modified: an invalid edit makes every step raise the
        same error until it is undone."""
        groups = self.param_groups
        normalised = validate_groups(groups, self._group_params,
                                     lambda g, where: self._validate(g, where=where))
        alg = self._alg
        avg = 0.0 if self._average is None else self._average
        for gi, (g, values) in enumerate(zip(groups, normalised)):   # all valid: adopt them
            if type(g) is not ParamGroup:
                g = groups[gi] = ParamGroup(g)
            g.update(values)
            g.dirty = False
            h = self._hyper[gi]
            h[H_LR] = values["lr"]
            h[H_WEIGHT_DECAY] = values["weight_decay"]
            h[H_SIGN] = -1.0 if values["maximize"] else 1.0
            h[H_CLIP] = 1.0
            h[H_AVERAGE] = avg
            own = alg.hyper(values)
            h[H_ALG:H_ALG + len(own)] = own
        n_rows = 0 if self._lowp else max(alg.n_state(g) for g in groups)
        grew = [b.ensure_rows(n_rows) for b in self._buckets]
        if any(grew):                         # a new state block: new ranges, new launches
            self._forbid = forbidden_ranges(self._params + [b.state for b in self._buckets])
            self._launch_keys = None
        self._clipping = [g["max_grad_norm"] is not None for g in groups]
        # a norm pass before the update: clipping or a non-finite policy
        self._checked_pass = any(self._clipping) or self.nonfinite != "propagate"
        self._groups_seen = groups
        keys = [self._kernel_key(g) for g in groups]
        if keys == self._launch_keys:
            self._set_fast()
            return        # only scalars changed (a schedule editing lr): launches stay
        self._launch_keys = keys
        for b in self._buckets:
            by_key = {}
            for gi in b.groups:
                by_key.setdefault(keys[gi], set()).add(gi)
            b.launches = [Launch(b, key, gids, len(self._params))
                          for key, gids in by_key.items()]
        self._launches = [(b, L) for b in self._buckets for L in b.launches]
        for _, L in self._launches:     # the two common serial launches (see _step)
            L.set_frame(G_DATA, L.flat_plan, _NO_REFS, _NO_RANGES, _NO_EXPECT, _NO_DIMS,
                        self._hyper, self._steps, self._gscal)
            L.set_frame(G_OBJECTS, L.plan, self._seq, self._forbid, self._expect,
                        self._expect_dims, self._hyper, self._steps, self._gscal)
        self._set_fast()

    def _set_fast(self):
        """The (bucket, launch) that ``step`` may run directly (no norm pass, one launch,
        float32/float64 state), or None. Cleared with the frames (_refresh_layout)."""
        ok = self._lowp is None and not self._checked_pass and len(self._launches) == 1
        self._fast = self._launches[0] if ok else None

    def _kernel_key(self, g):
        alg = self._alg
        wd = wd_mode(g["weight_decay"], g["weight_decay"] != 0.0 and alg.decoupled(g))
        scale = g["maximize"] or g["max_grad_norm"] is not None
        return (alg.id, alg.variant(g), alg.n_state(g), wd, scale,
                self._average is not None)

    def step(self, grads=None):
        """One optimisation step for every parameter.

        ``grads``: a list of arrays, one per parameter in param_groups order, each of its
        parameter's shape and dtype and C-contiguous; or None to use ``self.grads`` (the
        preallocated gradient views, filled in place by the caller). Parameters change in
        place. Raises TypeError/ValueError, changing nothing, on bad input.

        Thread-safe: concurrent calls on one optimizer run one after another.

        With ``nonfinite="skip"`` a step whose gradients hold NaN or inf changes nothing
        (parameters, moments and step count stay bit-identical) and counts in
        ``skipped_steps``; with ``"raise"`` it raises ValueError instead. Groups with
        ``max_grad_norm`` scale their gradients by min(1, max_grad_norm / (norm + 1e-6))
        (torch.nn.utils.clip_grad_norm_ over the group) inside the update."""
        with self._lock:
            fast = self._fast
            if (fast is not None and fast[1].size < config.PARALLEL_THRESHOLD
                    and not self._groups_changed()):
                # The plain optimizer's small step: _step's own choice for one serial
                # launch through its frame, without _step's general path. Any result but
                # -1 wrote nothing: _step then runs the step again and reports it.
                b, L = fast
                fn = L.framed.fn
                if grads is None:
                    frame = L.frames.get(G_DATA)
                    mode = G_DATA
                elif ((type(grads) is list or type(grads) is tuple) and HAVE_OBJECT_GRADS
                      and len(grads) == len(self._params)):
                    self._seq[0] = id(grads)
                    frame = L.frames.get(G_OBJECTS)
                    mode = G_OBJECTS
                else:
                    frame = None
                if (frame is not None and fn is not None
                        and fn(frame[0], b.state, b.sc, mode, True) == -1):
                    return
            self._step(grads)

    def _step(self, grads, grefs=None):
        """The step (``step`` holds the lock). ``grefs``, with ``grads`` None: the
        gradients' data addresses, already checked (see _step_refs)."""
        if self._lowp is not None:
            return self._lowp.step(self, grads)
        if self._groups_changed():
            self._refresh_groups()
        launches = self._launches
        forbid, expect, dims = _NO_RANGES, _NO_EXPECT, _NO_DIMS
        # framed: the tables are those of the launches' frames (set in _refresh_groups)
        if grefs is None and grads is None:
            grefs, g_mode, framed = _NO_REFS, G_DATA, True
        else:
            if grefs is None:
                grads, grefs, g_mode, checked = self._grad_refs(grads)
            else:
                g_mode, checked = G_INDEXED, True
            framed = False
            if len(launches) == 1 and not self._checked_pass:
                # one launch checks the gradients and their overlap before it writes
                forbid = self._forbid
                if not checked:
                    expect, dims, framed = self._expect, self._expect_dims, True
            else:
                grefs, g_mode = self._checked_refs(grads, grefs, g_mode, checked)
        if self._checked_pass and not grad_norms(self, grads, grefs, g_mode):
            return
        bad = self._launch(launches, grefs, g_mode, forbid, expect, dims, framed)
        if bad <= -10:      # a gradient the compiled check did not accept (one launch,
            # nothing written): checked in Python, which raises or accepts it
            grefs = self._data_refs(grads, -10 - bad)
            self._launch(launches, grefs, G_INDEXED, forbid, _NO_EXPECT, _NO_DIMS)

    def _step_refs(self, grefs):
        """One step with the gradients given by their data addresses (``grefs``: int64, one
        per parameter in param_groups order), each already checked by the caller to hold
        its parameter's dtype and size, C-contiguous (the torch front end: a tensor's
        ``data_ptr()`` costs less than a NumPy view of it). Returns False, doing nothing,
        when this optimizer needs the gradients as arrays (low-precision layouts, gradient
        clipping, the non-finite policy)."""
        with self._lock:
            if self._lowp is None and self._groups_changed():
                self._refresh_groups()
            if self._lowp is not None or self._checked_pass:
                return False
            self._step(None, grefs)
            return True

    def _launch(self, launches, grefs, g_mode, forbid, expect, dims, framed=False):
        """Run the launches; returns -1, or the code of a first launch that wrote nothing
        because a gradient failed the compiled check (<= -10). ``framed``: the tables are
        those of the launches' frames for ``g_mode`` (see Launch.set_frame)."""
        last = launches[-1][1]
        for b, L in launches:
            serial = L.size < config.PARALLEL_THRESHOLD or not config.use_parallel(L.size)
            frame = L.frames.get(g_mode) if framed and serial else None
            if frame is not None:
                fn = L.framed                   # its compiled entry point once resolved
                bad = (fn.fn or fn)(frame[0], b.state, b.sc, g_mode, L is last)
            else:
                if g_mode == G_DATA:
                    plan, blocks = L.flat_plan, L.flat_blocks
                else:
                    plan, blocks = L.plan, L.blocks
                args = (plan, grefs, g_mode, blocks, forbid, expect, dims, b.state,
                        self._hyper, self._steps, self._gscal, b.sc, L is last)
                if serial:
                    fn = L.serial
                    bad = (fn.fn or fn)(*args)
                else:
                    with config.launch_lock():
                        bad = L.parallel(*args)
            if bad <= -10:
                return bad
            if bad >= 0:
                self._alias_error(L, bad)
        return -1

    # ------------------------------------------------------------------ conveniences
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

    # ------------------------------------------------------------------ copy / pickle
    def __getstate__(self):
        # The plans hold raw data addresses: never copy them. A copy (copy.deepcopy,
        # pickle) is rebuilt from the parameters and the state_dict.
        return {"param_groups": self.param_groups, "defaults": self.defaults,
                "average": self._average, "nonfinite": self.nonfinite,
                "state_dtype": self.state_dtype,
                "lowp": self._lowp.options if self._lowp is not None else None,
                "state_dict": self.state_dict()}

    def __setstate__(self, st):
        self._alg = registry.get(self.algorithm)
        self._validate = Validator(self._alg)
        self._lock = threading.Lock()
        self._average = st["average"]
        self.nonfinite = st["nonfinite"]
        self.defaults = st["defaults"]
        self.state_dtype = st.get("state_dtype")
        lp = st.get("lowp")
        self._lowp = LowpState(lp["state_dtype"], lp) if lp is not None else None
        groups = self._normalize_groups(st["param_groups"])
        self.param_groups = [ParamGroup(g) for g in groups]
        self.skipped_steps = 0
        self.last_grad_norms = [None] * len(groups)
        self._build([None] * len(self._params), [0] * len(groups), None)
        self.load_state_dict(st["state_dict"])

    def __copy__(self):
        raise TypeError("a shallow copy of an optimizer would share its state buffers; "
                        "use copy.deepcopy(opt) (copies parameters and state) or build a new "
                        "optimizer and load_state_dict(opt.state_dict())")

    __repr__ = groups_repr
