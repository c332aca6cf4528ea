"""bfloat16 and float16 parameters for ``fastadam.torch.Adam`` / ``AdamW`` through
:mod:`fastadam.lowp`.

Each 16-bit parameter gets float32 master weights and float32 moments
(``init_lowp_state(state_dtype="float32", master_weights=True)``): the master copy is
stepped exactly as float32 Adam would and the 16-bit parameter receives its value rounded
to nearest in the same pass, so small updates are not lost to the parameter's rounding.
The steps equal ``fastadam.Adam`` / ``AdamW`` on the same NumPy arrays with
``state_dtype="float32", master_weights=True`` bit for bit (tested).

:class:`LowpInner` offers the part of the fastadam optimizer interface the front end uses
(``param_groups``, ``state``, ``load_state_dict``, ``step``), so the front end's layout
(cells of (group, step count), blocks, hyperparameter pushes) treats it like
``fastadam.Adam``. It launches one fused kernel per tensor (the low-precision kernels are
flat, not multi-array).
"""
from __future__ import annotations

import numpy as np

from .. import lowp

STATE_KEYS = ("exp_avg", "exp_avg_sq", "master")


class LowpInner:
    """Adam (``decoupled=False``) or AdamW over bfloat16 / float16 NumPy views, one state per
    parameter, one step count per group."""

    def __init__(self, groups, decoupled):
        self._decoupled = bool(decoupled)
        self.param_groups, self._params, self._group_of = [], [], []
        for gi, g in enumerate(groups):
            if g.get("amsgrad"):
                raise ValueError(f"param_groups[{gi}]: amsgrad=True is not supported for "
                                 "bfloat16 or float16 parameters (fastadam.lowp has "
                                 "no AMSGrad)")
            d = dict(g)
            d["params"] = list(g["params"])
            self.param_groups.append(d)
            for p in d["params"]:
                self._params.append(p)
                self._group_of.append(gi)
        self._steps = [0] * len(self.param_groups)
        self._state = [lowp.init_lowp_state(p.reshape(-1), state_dtype="float32",
                                            master_weights=True) for p in self._params]

    @property
    def state(self):
        """{index: {key: live float32 array of the parameter's shape}}."""
        return {j: {k: st[k].reshape(p.shape) for k in STATE_KEYS}
                for j, (p, st) in enumerate(zip(self._params, self._state))}

    def load_state_dict(self, sd):
        """``sd["state"][j]``: {"step", and any of exp_avg / exp_avg_sq / master as
        arrays of the parameter's shape}; a missing master starts from the parameter."""
        for j, st in sd["state"].items():
            gi = self._group_of[j]
            self._steps[gi] = int(st.get("step", 0))
            mine = self._state[j]
            for k in STATE_KEYS:
                if k in st:
                    mine[k][...] = np.asarray(st[k], dtype=np.float32).reshape(-1)
                elif k == "master":
                    mine[k][...] = self._params[j].reshape(-1).astype(np.float32)
                else:
                    mine[k][...] = 0

    def step(self, grads):
        for j, (p, g) in enumerate(zip(self._params, grads)):
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"gradient {j} has shape {g.shape} and dtype {g.dtype}, "
                                 f"its parameter {p.shape} and {p.dtype}")
        for j, (p, g) in enumerate(zip(self._params, grads)):
            gi = self._group_of[j]
            h = self.param_groups[gi]
            lowp.adam_step_lowp(p.reshape(-1), g.reshape(-1), self._state[j],
                                step=self._steps[gi] + 1, lr=h["lr"], betas=tuple(h["betas"]),
                                eps=h["eps"], weight_decay=h["weight_decay"],
                                decoupled_weight_decay=self._decoupled,
                                maximize=bool(h["maximize"]))
        self._steps = [s + 1 for s in self._steps]
