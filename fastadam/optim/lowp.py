"""Low-precision optimizer state (``state_dtype="bfloat16"|"int8"`` on Adam, AdamW and
NAdam, ``"bfloat16"`` on Adamax and RAdam; float32, bfloat16 or float16 parameters).

When ``state_dtype`` is set (and differs from the parameters' float32), the optimizer
keeps one state dict per parameter, built by :func:`fastadam.lowp.init_lowp_state`, and
steps each parameter with :func:`fastadam.lowp.adam_step_lowp` (Adamax:
:func:`fastadam.lowp_adamax.adamax_step_lowp`, NAdam / RAdam: the kernels of
:mod:`fastadam.lowp_nr`; one fused launch per
parameter: a model flattened with :func:`fastadam.flatten` is one launch). Everything
the optimizer does before it launches is shared with the float32 path: group validation
(and param_groups edits), gradient checks, aliasing checks, gradient norms for clipping
and the non-finite policy. The float32 path does not see this module: ``opt._lowp`` is
None there. The per-parameter checks of the functional step run once and their launches
are kept (:meth:`LowpState.prepare`); each step checks the gradients, step counts and
writability only (docs/low_precision.md, "Per-step overhead").

State dict layout (``state_dict()["state_dtype"]`` and ``["state_layout"]`` name it);
every array is 1-D over the flattened parameter:

* bfloat16: ``exp_avg``/``exp_avg_sq`` (Adamax: ``exp_avg``/``exp_inf``) uint16 (the
  bfloat16 bit patterns); NAdam's entries also carry the group's ``mu_product`` (float,
  as in the float32 state_dict; the optimizer keeps it per group, float64);
* int8: ``exp_avg`` int8 codes of m, ``exp_avg_sq`` uint8 codes of sqrt(v),
  ``exp_avg_absmax``/``exp_avg_sq_absmax`` float32 per-block scales.
"""
from __future__ import annotations

import numpy as np

from .. import _checks as C
from ..kernels.lowp import sr_key
from ..kernels.memory import G_DATA
from ..kernels.nr_lowp import NAMES as _NR
from ..kernels.nr_lowp import advance_group
from ..kernels.spec import H_CLIP
from ..lowp import (NO_INT8, _is_16bit, _u16, check_precision_choice, check_rounding_seed,
                    init_lowp_state, launch, prepare_adam_lowp)
from ..lowp_adamax import prepare_adamax_lowp
from ..lowp_nr import prepare_nr_lowp
from .guard import grad_norms
from .lowp_state import (LAYOUTS, LowpStateDict, check_layout, layout_name,  # noqa: F401
                         state_dtype_of)

STATE_DTYPES = ("float32", "bfloat16", "int8")
#: Algorithms whose update the low-precision kernels compute, with their state dtypes.
LOWP_ALGORITHMS = ("adam", "adamw", "adamax", "nadam", "radam")
_LOWP_STATE = {"adam": ("bfloat16", "int8"), "adamw": ("bfloat16", "int8"),
               "adamax": ("bfloat16",), "nadam": ("bfloat16", "int8"),
               "radam": ("bfloat16",)}
_NO_REFS = np.zeros(0, dtype=np.int64)


def check_state_dtype(state_dtype, algorithm, average):
    """The normalised state_dtype (None, "float32", "bfloat16", "int8"), or ValueError
    naming the argument. Raises before anything is built."""
    if state_dtype is None:
        return None
    if not isinstance(state_dtype, str) or state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be None or one of {STATE_DTYPES}, got "
                         f"{state_dtype!r}")
    if state_dtype != "float32":
        if algorithm not in LOWP_ALGORITHMS:
            raise ValueError(f"state_dtype={state_dtype!r} is available for "
                             f"{LOWP_ALGORITHMS}, not {algorithm!r}: the low-precision "
                             "kernels compute Adam's, AdaMax's, NAdam's and RAdam's updates only; use "
                             "state_dtype=None or 'float32' here, or fa.Adam / fa.AdamW")
        if state_dtype not in _LOWP_STATE[algorithm]:
            raise ValueError(f"state_dtype={state_dtype!r} is not available for "
                             f"{algorithm!r} ({NO_INT8[algorithm]}); use "
                             f"state_dtype in {(None, 'float32') + _LOWP_STATE[algorithm]}")
        if average is not None:
            raise ValueError(f"state_dtype={state_dtype!r} cannot be combined with "
                             f"average={average!r} (temporal averaging is not in the "
                             "low-precision kernels)")
    return state_dtype


_DEFAULT_OPTIONS = {"master_weights": False, "compensation": False, "rounding": "nearest",
                    "seed": 0}


def check_lowp_options(options):
    """master_weights / compensation / rounding / seed (for 16-bit parameters), checked
    and normalised."""
    out = dict(_DEFAULT_OPTIONS)
    out.update(options or {})
    out["master_weights"] = C.check_bool("master_weights", out["master_weights"])
    out["compensation"] = C.check_bool("compensation", out["compensation"])
    out["seed"] = check_rounding_seed(out["rounding"], out["seed"])
    check_precision_choice(out["master_weights"], out["compensation"], out["rounding"])
    return out


def make_lowp(state_dtype, options, params, algorithm, average):
    """The LowpState of an optimizer over ``params`` (validated), or None for the
    ordinary path (float32/float64 parameters with their own dtype's state)."""
    bf = [_is_16bit(p.dtype) for p in params]
    if any(bf) and any(p.dtype != params[0].dtype for p in params):
        i = next(i for i, p in enumerate(params) if p.dtype != params[0].dtype)
        raise TypeError(f"parameter {i} has dtype {params[i].dtype} but parameter 0 "
                        f"{params[0].dtype}: an optimizer over bfloat16 or float16 "
                        "parameters needs all of them of one dtype (mixed float32/bfloat16/"
                        "float16 is not supported)")
    if not any(bf):
        for name in ("master_weights", "compensation"):
            if options[name]:
                raise ValueError(f"{name}=True needs bfloat16 or float16 parameters (float32 "
                                 "parameters are stepped exactly already)")
        if options["rounding"] != "nearest":
            raise ValueError("rounding='stochastic' needs bfloat16 or float16 parameters "
                             "(float32 parameters are not rounded)")
        if state_dtype in (None, "float32"):
            return None
        return LowpState(state_dtype, options)
    if algorithm not in LOWP_ALGORITHMS:
        raise TypeError(f"{params[0].dtype} parameters are supported by "
                        f"{LOWP_ALGORITHMS}, not {algorithm!r}")
    if average is not None:
        raise ValueError(f"{params[0].dtype} parameters cannot be combined with "
                         f"average={average!r}")
    return LowpState(state_dtype or "bfloat16", options)


class LowpState(LowpStateDict):
    """The low-precision side of one optimizer: its state_dtype and per-parameter state."""

    def __init__(self, state_dtype, options=None):
        self.state_dtype = state_dtype
        self.options = dict(_DEFAULT_OPTIONS if options is None else options)
        self.options["state_dtype"] = state_dtype
        self.states = []          # per parameter: dict of init_lowp_state
        self.kw = None            # per group: keyword arguments of adam_step_lowp
        self.launches = None      # per parameter: the checked launch (prepare)
        self.layouts = None       # per parameter: its checked arrays (prepare)
        self.bf16 = None          # whether the parameters are 16-bit (bfloat16 or float16)
        self.pdtype = None        # their dtype (set by build)

    # -------------------------------------------------------------- validation
    def check_groups(self, groups, defaults, names_of):
        """Every group an option the kernels serve and float32 parameters. ``groups``:
        group dicts (possibly without the defaults); ``names_of(gi, pi)``: the name of a
        parameter for messages."""
        for gi, g in enumerate(groups):
            full = dict(defaults)
            full.update(g)
            self.check_group(full, f"param_groups[{gi}]")
            for pi, p in enumerate(g["params"]):
                if p.dtype != np.float32 and not _is_16bit(p.dtype):
                    raise TypeError(f"{names_of(gi, pi)} has dtype {p.dtype}; "
                                    f"state_dtype={self.state_dtype!r} needs float32 "
                                    "(or bfloat16 or float16) parameters")
                dt = g["params"][0].dtype
                if p.dtype != dt or (self.pdtype is not None and dt != self.pdtype):
                    raise TypeError(f"{names_of(gi, pi)} has dtype {p.dtype}; the "
                                    "optimizer's parameters must all be float32, all "
                                    "bfloat16 or all float16")

    def check_group(self, g, where):
        if g.get("amsgrad", False):
            raise ValueError(f"{where}: amsgrad=True cannot be served with "
                             f"state_dtype={self.state_dtype!r} (the low-precision kernels "
                             "have no AMSGrad); use state_dtype=None")

    # -------------------------------------------------------------- layout
    def build(self, opt):
        """(Re)build the per-parameter states, keeping those of parameters already here
        (add_param_group)."""
        old = getattr(self, "_by_id", {})
        o = self.options
        self.bf16 = _is_16bit(opt._params[0].dtype)
        self.pdtype = opt._params[0].dtype
        kw = ({"master_weights": o["master_weights"], "compensation": o["compensation"]}
              if self.bf16 else {})
        self.states = [old.get(id(p)) or init_lowp_state(p.reshape(-1),
                                                         state_dtype=self.state_dtype,
                                                         algorithm=opt.algorithm, **kw)
                       for p in opt._params]
        self._by_id = {id(p): st for p, st in zip(opt._params, self.states)}
        self.kw = self.layouts = None

    def arrays(self):
        return [a for st in self.states for a in st.values()]

    def group_kwargs(self, opt):
        alg = opt._alg
        out = []
        for g in opt.param_groups:
            kw = dict(lr=float(g["lr"]), betas=(float(g["betas"][0]), float(g["betas"][1])),
                      eps=float(g["eps"]), weight_decay=float(g["weight_decay"]),
                      maximize=bool(g["maximize"]))
            if opt.algorithm in _NR:
                kw.update(decoupled_weight_decay=bool(alg.decoupled(g)))
                if opt.algorithm == "nadam":
                    kw.update(momentum_decay=float(g["momentum_decay"]))
            elif opt.algorithm != "adamax":           # Adam's options (adam_step_lowp)
                kw.update(decoupled_weight_decay=bool(alg.decoupled(g)),
                          bias_correction=bool(g.get("bias_correction", True)),
                          eps_mode=g.get("eps_mode", "paper"))
            out.append(kw)
            if self.bf16:
                out[-1].update(rounding=self.options["rounding"], seed=self.options["seed"])
        return out

    # -------------------------------------------------------------- step
    def prepare(self, opt):
        """Check every parameter's arrays, state and hyperparameters once (the functional
        step's checks, with the parameter's own gradient buffer) and keep the launches:
        per parameter (group, kernels, n, head, tail, stochastic-rounding seed). Raises
        before anything is written. Kept until the groups change (``self.launches =
        None``: the hyperparameters are checked again, the arrays' checks are kept) or
        the layout or state do (``self.layouts = None`` too: everything again)."""
        prep = prepare_adamax_lowp if opt.algorithm == "adamax" else prepare_adam_lowp
        if opt.algorithm in _NR:
            prep = _nr_prepare(opt.algorithm)
        launches, targets, own, layouts = [], [], [], []
        kept = self.layouts
        for i, p in enumerate(opt._params):
            gi = opt._group_of[i]
            b, r = opt._where[i]
            g = b.grad_views[r].reshape(-1)
            try:
                *launch_, layout = prep(p.reshape(-1), g, self.states[i],
                                        step=int(opt._steps[gi]) + 1,
                                        layout=None if kept is None else kept[i],
                                        **self.kw[gi])
            except (TypeError, ValueError) as exc:      # name the parameter
                raise type(exc)(f"parameter {i} (param_groups[{gi}]): {exc}") from None
            launches.append((gi, *launch_))
            layouts.append(layout)
            targets.append(p)
            targets.extend(self.states[i].values())
            own.append((b.grad_views[r], _u16(g)))
        self.launches, self.targets, self.own_grads = launches, targets, own
        self.layouts = layouts
        self.own_ids = [id(v) for v, _ in own]

    def step(self, opt, grads):
        if opt._groups_changed():
            groups = opt.param_groups
            if isinstance(groups, list):
                for gi, g in enumerate(groups):
                    if isinstance(g, dict):
                        self.check_group(g, f"param_groups[{gi}]")
            opt._refresh_groups()
            self.kw = None            # the launches are rebuilt, the arrays' checks kept
        if self.kw is None:
            self.kw = self.group_kwargs(opt)
            self.launches = None
        if self.launches is None:
            self.prepare(opt)
        # Per step: the gradients (every one: they may be new arrays at each step), the
        # step counts and that nothing was made read-only; then the kept launches.
        if grads is None and list(map(id, opt.grads)) != self.own_ids:
            grads = opt.grads      # entries replaced by the caller: checked as a list
        if grads is None:
            arrays, grefs, g_mode = opt.grads, _NO_REFS, G_DATA
        else:
            grads, grefs, g_mode, checked = opt._grad_refs(grads)
            grefs, g_mode = opt._checked_refs(grads, grefs, g_mode, checked)
            arrays = grads
        if not all(a.flags.writeable for a in self.targets):
            self.launches = self.layouts = None      # the full checks name the array
            self.prepare(opt)
        steps = opt._steps
        counts = steps.tolist()
        if max(counts) >= C.MAX_STEP:
            C.check_step(max(counts) + 1)
        if opt._checked_pass:
            sums = None
            if self.bf16:        # no compiled norm kernel for bfloat16: float64 NumPy sums
                sums = np.zeros(len(opt.param_groups))
                for i, g in enumerate(arrays):
                    sums[opt._group_of[i]] += float(np.sum(np.square(g.astype(np.float64))))
            if not grad_norms(opt, grads, grefs, g_mode, sums):
                return
        clipping = opt._clipping
        nr = opt.algorithm in _NR         # last kernel argument: the group scalars
        for i, (gi, kernels, n, head, tail, sr_seed) in enumerate(self.launches):
            if clipping[gi] and opt._hyper[gi, H_CLIP] != 1.0:
                g = arrays[i]      # bfloat16: the scaled gradient is rounded (nearest)
                g = (g.astype(np.float32) * np.float32(opt._hyper[gi, H_CLIP])).astype(g.dtype)
                g = _u16(g.reshape(-1))
            elif g_mode == G_DATA:
                g = self.own_grads[i][1]
            else:
                g = _u16(arrays[i].reshape(-1))
            step = counts[gi] + 1
            key = 0 if sr_seed is None else sr_key(sr_seed, step)
            if nr:                        # NAdam / RAdam: the group scalars last
                launch(kernels, n, *head, g, *tail, step, key, opt._gscal[gi])
            else:
                launch(kernels, n, *head, g, *tail, step, key)
        if nr:                            # once per group, after all its parameters
            done = set()
            for gi, _, _, _, tail, _ in self.launches:
                if gi not in done:
                    done.add(gi)
                    advance_group(opt.algorithm, tail[-1], counts[gi] + 1, opt._gscal[gi])
        for gi, c in enumerate(counts):
            steps[gi] = c + 1

def _nr_prepare(name):
    """prepare_nr_lowp for one algorithm (the step passes the group scalars after the
    stochastic-rounding key)."""
    def prep(param, grad, state, **kw):
        return prepare_nr_lowp(name, param, grad, state, **kw)
    return prep
