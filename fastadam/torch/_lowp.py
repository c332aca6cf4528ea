"""bfloat16 and float16 parameters for ``fastadam.torch.Adam`` / ``AdamW`` (and
``NAdam`` / ``RAdam``: :class:`LowpInnerNR`) through :mod:`fastadam.lowp`.

Each 16-bit parameter gets float32 moments and, by default, float32 master weights
(``init_lowp_state(state_dtype="float32", master_weights=True)``): the master copy is
stepped exactly as float32 Adam would and the 16-bit parameter receives its value rounded
to nearest in the same pass, so small updates are not lost to the parameter's rounding.
The options :data:`OPTIONS` (``opt.set_low_precision(...)``) choose another way (``fastadam.lowp``'s): Kahan
``compensation`` (a buffer of the parameter's dtype), ``rounding="stochastic"`` with a
``seed``, or plain round to nearest (``master_weights=False``). The steps equal
``fastadam.Adam`` / ``AdamW`` on the same NumPy arrays with ``state_dtype="float32"`` and
the same options bit for bit (tested).

:class:`LowpInner` offers the part of the fastadam optimizer interface the front end uses
(``param_groups``, ``state``, ``load_state_dict``, ``step``), so the front end's layout
(cells of (group, step count), blocks, hyperparameter pushes) treats it like
``fastadam.Adam``. It steps all its tensors in one fused launch per kernel layout
(:class:`fastadam.lowp_multi.MultiStep`; one launch when the groups share the parameter
dtype, precision options, weight-decay kind and ``maximize``).
"""
from __future__ import annotations

import numpy as np

from .. import lowp
from ..lowp_multi import MultiStep
from ..optim.groups import ParamGroup

MOMENTS = ("exp_avg", "exp_avg_sq")
#: The options of 16-bit parameters (``set_low_precision``; the inner groups carry them),
#: with their defaults (master_weights=None: True unless compensation or stochastic
#: rounding is asked for).
OPTIONS = {"master_weights": None, "compensation": False, "rounding": "nearest", "seed": 0}


def resolve_options(g, where):
    """The 16-bit options in ``g`` (a dict with any of :data:`OPTIONS`) checked and
    resolved: {master_weights (bool), compensation, rounding, seed}. ValueError/TypeError
    naming ``where`` and the argument."""
    out = {}
    for key in ("master_weights", "compensation"):
        v = g.get(key, OPTIONS[key])
        if not (v is None and key == "master_weights") and not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{where}: {key} must be a bool"
                            + (" or None" if key == "master_weights" else "")
                            + f", got {v!r}")
        out[key] = v if v is None else bool(v)
    rounding = g.get("rounding", OPTIONS["rounding"])
    seed = lowp.check_rounding_seed(rounding, g.get("seed", OPTIONS["seed"]), f"{where}: ")
    out.update(rounding=rounding, seed=seed)
    if out["master_weights"] is None:
        out["master_weights"] = not (out["compensation"] or rounding == "stochastic")
    lowp.check_precision_choice(out["master_weights"], out["compensation"], rounding,
                                f"{where}: ")
    return out


def precision_key(opts):
    """The extra state entry of a 16-bit parameter under ``opts``: "master",
    "compensation" or None."""
    return "master" if opts["master_weights"] else (
        "compensation" if opts["compensation"] else None)


class LowpOptions:
    """``set_low_precision`` of the torch front end's optimizers (a mixin: the state of
    the choice is ``_lowp_options``, read at each rebuild)."""

    _lowp_options = None        # set_low_precision's arguments; None: master weights

    def set_low_precision(self, *, master_weights=None, compensation=False,
                          rounding="nearest", seed=0):
        """How bfloat16 and float16 parameters keep their precision (Adam, AdamW, NAdam
        and RAdam;
        float32 and float64 parameters are not affected): float32 master weights (the
        default; ``master_weights=None`` means True unless one of the others is asked
        for), ``compensation=True`` (Kahan, a buffer of the parameter's dtype),
        ``rounding="stochastic"`` with ``seed`` (reproducible for any thread count), or
        ``master_weights=False`` alone: round to nearest. Applies from the next step:
        the new mode's buffer starts from the parameter (master) or at zero
        (compensation), the old one leaves ``state``. Kept by ``copy.deepcopy`` and
        pickling, not by ``state_dict()`` (torch's format: call it again on a new
        optimizer before loading). Returns the optimizer. ValueError/TypeError naming
        the argument on bad values, nothing changed."""
        if not self._spec.lowp:
            raise TypeError(f"{type(self).__name__} has no bfloat16/float16 parameters "
                            "(Adam, AdamW, NAdam and RAdam only)")
        opts = dict(master_weights=master_weights, compensation=compensation,
                    rounding=rounding, seed=seed)
        resolve_options(opts, "set_low_precision")          # raises before any change
        self._lowp_options = opts
        self._layout = None
        return self

    def _lowp_resolved(self):
        return resolve_options(self._lowp_options or {}, "set_low_precision")


class LowpInner:
    """Adam (``decoupled=False``) or AdamW over bfloat16 / float16 NumPy views, one state
    per parameter, one step count per group; each group carries its :data:`OPTIONS`."""

    def __init__(self, groups, decoupled):
        self._decoupled = bool(decoupled)
        self.param_groups, self._params, self._group_of, self._opts = [], [], [], []
        for gi, g in enumerate(groups):
            if g.get("amsgrad"):
                raise ValueError(f"param_groups[{gi}]: amsgrad=True is not supported for "
                                 "bfloat16 or float16 parameters (fastadam.lowp has "
                                 "no AMSGrad)")
            d = ParamGroup(g)            # notes the front end's hyperparameter pushes
            d["params"] = list(g["params"])
            self.param_groups.append(d)
            self._opts.append(resolve_options(g, f"param_groups[{gi}]"))
            for p in d["params"]:
                self._params.append(p)
                self._group_of.append(gi)
        # the kernel rows, rebuilt when a group is edited (_group_rows): hyperparameters
        # (groups x N_HYPER), each group's next step number and stochastic-rounding key
        ng = len(self.param_groups)
        self._h, self._t, self._keys = None, np.ones(ng, np.int64), np.zeros(ng, np.int64)
        self._t_max = 1
        self._sr = [(gi, o["seed"]) for gi, o in enumerate(self._opts)
                    if o["rounding"] == "stochastic"]
        self._multi, self._modes, self._rows = None, None, {}
        self._state = []
        for p, gi in zip(self._params, self._group_of):
            o = self._opts[gi]
            self._state.append(lowp.init_lowp_state(
                p.reshape(-1), state_dtype="float32", master_weights=o["master_weights"],
                compensation=o["compensation"]))

    @property
    def state(self):
        """{index: {key: live array of the parameter's shape}} (moments and master float32,
        compensation of the parameter's dtype)."""
        return {j: {k: a.reshape(p.shape) for k, a in st.items()}
                for j, (p, st) in enumerate(zip(self._params, self._state))}

    def load_state_dict(self, sd):
        """``sd["state"][j]``: {"step", and any of exp_avg / exp_avg_sq / master /
        compensation as arrays of the parameter's shape}; a missing master starts from
        the parameter, a missing compensation at zero."""
        for j, st in sd["state"].items():
            gi = self._group_of[j]
            self._t[gi] = int(st.get("step", 0)) + 1
            self._t_max = int(self._t.max())
            mine = self._state[j]
            for k, a in mine.items():
                if k in st:
                    a[...] = np.asarray(st[k]).astype(a.dtype).reshape(-1)
                elif k == "master":
                    a[...] = self._params[j].reshape(-1).astype(np.float32)
                else:
                    a[...] = 0

    def _check_grads(self, grads):
        """ValueError naming the gradient whose shape, dtype or memory order is not its
        parameter's."""
        for j, (p, g) in enumerate(zip(self._params, grads)):
            if g.shape != p.shape or g.dtype != p.dtype or not g.flags.c_contiguous:
                raise ValueError(f"gradient {j} has shape {g.shape} and dtype {g.dtype}"
                                 f"{'' if g.flags.c_contiguous else ' (not C-contiguous)'}, "
                                 f"its parameter {p.shape} and {p.dtype}")

    def step(self, grads):
        """One step of every parameter (``grads[j]`` the gradient of parameter j, a NumPy
        array of its dtype and shape): one fused launch per kernel layout
        (:class:`fastadam.lowp_multi.MultiStep`). Raises ValueError, changing nothing, on
        a gradient of the wrong shape, dtype or memory order, or bad hyperparameters."""
        self._check_grads(grads)
        h, t, keys = self._group_rows()
        if self._multi is None:
            flat = [p.reshape(-1) for p in self._params]
            pmodes = [lowp.pmode_of(lowp._param_kind(p.dtype), st, self._opts[gi]["rounding"])
                      for p, st, gi in zip(flat, self._state, self._group_of)]
            self._multi = MultiStep(flat, self._state, self._group_of, pmodes,
                                    [m[0] for m in self._modes], [m[1] for m in self._modes])
        self._multi.step(grads, h, t, keys)
        np.add(t, 1, out=t)
        self._t_max += 1

    def _group_rows(self):
        """The kernel rows of this step: (h, t, keys), arrays kept from step to step and
        rebuilt only after an edit of ``param_groups`` (a hyperparameter push of the front
        end, an lr scheduler's write: taken at the next step). Each group's
        hyperparameters are checked as ``lowp.adam_step_lowp`` checks them; ValueError,
        changing nothing, on bad values (until they are fixed)."""
        groups = self.param_groups
        if self._h is None or not all(type(g) is ParamGroup and not g.dirty for g in groups):
            self._build_rows(groups)
        if self._t_max > lowp.C.MAX_STEP:
            lowp.C.check_step(self._t_max)
        t, keys = self._t, self._keys
        for gi, seed in self._sr:
            keys[gi] = lowp.sr_key(seed, int(t[gi]))
        return self._h, t, keys

    def _vals(self, h):
        """The hyperparameters of group ``h`` that make its kernel row (a tuple)."""
        return (h["lr"], tuple(h["betas"]), h["eps"], h["weight_decay"], bool(h["maximize"]))

    def _row(self, vals):
        """(hyperparameter row, (wd_mode, maximize)) of ``_vals``, checked."""
        from ..functional import _ADAM
        _, lr, betas, eps, wd = lowp._check_hyper(1, *vals[:4])
        row = _ADAM.setup(lr, betas, eps, wd, self._decoupled, False, vals[4], True,
                          "paper").h.copy()
        return row, (lowp.wd_mode(wd, self._decoupled), vals[4])

    def _build_rows(self, groups):
        """Check every group's hyperparameters and (re)write ``self._h`` (in place when the
        group count is the same); a group's row is computed again only when its values
        changed. Rebuilds the launches when a group's (wd_mode, maximize) changed."""
        got = []
        for gi, h in enumerate(groups):
            vals = self._vals(h)
            old = self._rows.get(gi)
            if old is None or old[0] != vals:
                old = (vals, *self._row(vals))
            got.append(old)
        # ---- every group valid: write
        self._rows = dict(enumerate(got))
        rows = [r for _, r, _ in got]
        if self._h is None or self._h.shape[0] != len(rows):
            self._h = np.array(rows, np.float64)
        else:
            self._h[...] = rows
        modes = [m for _, _, m in got]
        if modes != self._modes:
            self._modes, self._multi = modes, None
        for g in groups:
            if type(g) is ParamGroup:
                g.dirty = False


class LowpInnerNR(LowpInner):
    """NAdam or RAdam (``algorithm``) over bfloat16 / float16 NumPy views: LowpInner's
    state, options and rows, stepped by one fused launch per parameter
    (kernels/nr_lowp.py); NAdam's ``mu_product`` is a group scalar
    (``group_scalars``), advanced once per group after its launches, as fastadam.NAdam
    does."""

    def __init__(self, groups, algorithm):
        from ..kernels.spec import N_GROUP_SCALARS
        self._alg = algorithm
        super().__init__(groups, decoupled=False)
        self._gs = np.zeros((len(self.param_groups), N_GROUP_SCALARS))
        self._gs[:, 0] = 1.0

    @property
    def group_scalars(self):
        return {"mu_product": self._gs[:, 0]} if self._alg == "nadam" else {}

    def load_state_dict(self, sd):
        """LowpInner's, and NAdam's ``mu_product`` (a float per parameter entry: its
        group's value)."""
        super().load_state_dict(sd)
        if self._alg == "nadam":
            for j, st in sd["state"].items():
                if "mu_product" in st:
                    self._gs[self._group_of[j], 0] = float(st["mu_product"])

    def _vals(self, h):
        extra = (float(h["momentum_decay"]),) if self._alg == "nadam" else ()
        return (h["lr"], tuple(h["betas"]), h["eps"], h["weight_decay"], bool(h["maximize"]),
                bool(h.get("decoupled_weight_decay", False))) + extra

    def _row(self, vals):
        from .. import functional as F
        _, lr, betas, eps, wd = lowp._check_hyper(1, *vals[:4])
        maximize, decoupled = vals[4], vals[5]
        if self._alg == "nadam":
            h = F._NADAM.setup(lr, betas, eps, wd, vals[6], decoupled, maximize).h
        else:
            h = F._RADAM.setup(lr, betas, eps, wd, decoupled, maximize).h
        return h.copy(), (lowp.wd_mode(wd, decoupled), maximize)

    def step(self, grads):
        """One step of every parameter (as LowpInner.step), one launch per parameter."""
        from ..kernels import nr_lowp as K
        from ..kernels.adam_lowp import STATE_F32
        self._check_grads(grads)
        h, t, keys = self._group_rows()
        if self._multi is None:          # here: the per-parameter launches
            self._multi = []
            for p, st, gi in zip(self._params, self._state, self._group_of):
                flat = p.reshape(-1)
                kind = lowp._param_kind(flat.dtype)
                pmode = lowp.pmode_of(kind, st, self._opts[gi]["rounding"])
                w, c = lowp._precision_arrays(st)
                kernels = K.build(self._alg, kind, STATE_F32, pmode, *self._modes[gi])
                self._multi.append((kernels, flat.shape[0], lowp._u16(flat),
                                    (st["exp_avg"], st["exp_avg_sq"], w, c, lowp._EMPTY32,
                                     lowp._EMPTY32)))
        for j, (kernels, n, pb, tail) in enumerate(self._multi):
            gi = self._group_of[j]
            lowp.launch(kernels, n, pb, lowp._u16(grads[j].reshape(-1)), *tail, h[gi],
                        int(t[gi]), int(keys[gi]), self._gs[gi])
        for gi in range(len(self.param_groups)):
            K.advance_group(self._alg, h[gi], int(t[gi]), self._gs[gi])
        np.add(t, 1, out=t)
        self._t_max += 1
