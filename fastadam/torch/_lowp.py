"""bfloat16 and float16 parameters for ``fastadam.torch.Adam`` / ``AdamW`` through
:mod:`fastadam.lowp`.

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
``fastadam.Adam``. It launches one fused kernel per tensor (the low-precision kernels are
flat, not multi-array).
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import lowp

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
    if not isinstance(rounding, str) or rounding not in lowp.ROUNDINGS:
        raise ValueError(f"{where}: rounding must be one of {lowp.ROUNDINGS}, got "
                         f"{rounding!r}")
    seed = g.get("seed", OPTIONS["seed"])
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{where}: seed must be an int, got {seed!r}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"{where}: seed must be in [0, 2**64), got {seed}")
    out.update(rounding=rounding, seed=int(seed))
    other = out["compensation"] or rounding == "stochastic"
    if out["master_weights"] is None:
        out["master_weights"] = not other
    elif out["master_weights"] and other:
        what = "compensation=True" if out["compensation"] else "rounding='stochastic'"
        raise ValueError(f"{where}: master_weights=True and {what} are two ways to keep a "
                         "16-bit parameter's precision; choose one")
    if out["compensation"] and rounding == "stochastic":
        raise ValueError(f"{where}: compensation=True and rounding='stochastic' are two ways "
                         "to keep a 16-bit parameter's precision; choose one")
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
        """How bfloat16 and float16 parameters keep their precision (Adam and AdamW;
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
                            "(Adam and AdamW only)")
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
            d = dict(g)
            d["params"] = list(g["params"])
            self.param_groups.append(d)
            self._opts.append(resolve_options(g, f"param_groups[{gi}]"))
            for p in d["params"]:
                self._params.append(p)
                self._group_of.append(gi)
        self._steps = [0] * len(self.param_groups)
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
            self._steps[gi] = int(st.get("step", 0))
            mine = self._state[j]
            for k, a in mine.items():
                if k in st:
                    a[...] = np.asarray(st[k]).astype(a.dtype).reshape(-1)
                elif k == "master":
                    a[...] = self._params[j].reshape(-1).astype(np.float32)
                else:
                    a[...] = 0

    def step(self, grads):
        for j, (p, g) in enumerate(zip(self._params, grads)):
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"gradient {j} has shape {g.shape} and dtype {g.dtype}, "
                                 f"its parameter {p.shape} and {p.dtype}")
        for j, (p, g) in enumerate(zip(self._params, grads)):
            gi = self._group_of[j]
            h, o = self.param_groups[gi], self._opts[gi]
            lowp.adam_step_lowp(p.reshape(-1), g.reshape(-1), self._state[j],
                                step=self._steps[gi] + 1, lr=h["lr"], betas=tuple(h["betas"]),
                                eps=h["eps"], weight_decay=h["weight_decay"],
                                decoupled_weight_decay=self._decoupled,
                                maximize=bool(h["maximize"]), rounding=o["rounding"],
                                seed=o["seed"])
        self._steps = [s + 1 for s in self._steps]
