"""The state dict of low-precision optimizer state (a mixin of
:class:`fastadam.optim.lowp.LowpState`): ``state_dict`` / ``load_state_dict`` in the
layout :mod:`fastadam.optim.lowp` describes, and the checks of a state_dict's
``state_dtype`` / ``state_layout``."""
from __future__ import annotations

import numpy as np

from ..kernels.q8 import Q8_BLOCK
from .state import check_header, check_state_array, dict_groups, loaded_groups, param_entry

LAYOUTS = {"bfloat16": "bfloat16-bits-uint16",
           "int8": f"int8-dynamic-blockwise-{Q8_BLOCK}"}


def layout_name(state_dtype):
    return LAYOUTS.get(state_dtype, "float32")


class LowpStateDict:
    """state_bytes, live_state, state_dict and load_state_dict of a LowpState (its
    ``states``, ``state_dtype``, ``check_group`` and ``kw`` / ``layouts``)."""

    def state_bytes(self, opt):
        n = sum(p.size for p in opt._params)
        return sum(a.nbytes for a in self.arrays()) / max(n, 1)

    def _group_scalars(self, opt, gi):
        return {n: float(opt._gscal[gi, j]) for j, (n, _) in enumerate(opt._alg.group_scalars)}

    def live_state(self, opt):
        out = {}
        for i, st in enumerate(self.states):
            d = {"step": int(opt._steps[opt._group_of[i]])}
            d.update(st)
            d.update(self._group_scalars(opt, opt._group_of[i]))
            out[i] = d
        return out

    def state_dict(self, opt):
        state = {}
        for i, st in enumerate(self.states):
            d = {"step": int(opt._steps[opt._group_of[i]])}
            for k, a in st.items():
                d[k] = _portable(a).copy()
            d.update(self._group_scalars(opt, opt._group_of[i]))
            state[i] = d
        return {"algorithm": opt.algorithm, "state_dtype": self.state_dtype,
                "state_layout": layout_name(self.state_dtype), "state": state,
                "param_groups": dict_groups(opt.param_groups), "average": None,
                "skipped_steps": opt.skipped_steps}

    def load_state_dict(self, opt, sd):
        if not isinstance(sd, dict):
            raise TypeError(f"state_dict must be a dict, got {type(sd).__name__}")
        check_layout(sd, self.state_dtype)
        skipped = check_header(sd, opt.algorithm)          # average is None here
        state = sd["state"]
        new_groups = loaded_groups(opt, sd, self.check_group)
        new_steps = [None] * len(opt.param_groups)
        gnames = [n for n, _ in opt._alg.group_scalars]
        new_gscal, seen = opt._gscal.copy(), set()
        new_state = []
        for i, live in enumerate(self.states):
            gi = opt._group_of[i]
            st, where, step = param_entry(state, i, gi, new_steps)
            if gi not in seen:
                seen.add(gi)
                for j, name in enumerate(gnames):
                    if name in st:
                        new_gscal[gi, j] = _group_scalar(st[name], f"{where}[{name!r}]")
                    elif step > 0:
                        raise ValueError(f"{where} has step {step} but lacks {name!r}")
            unknown = set(st) - set(live) - {"step"} - set(gnames)
            if unknown:
                raise ValueError(f"{where} has unknown entries {sorted(unknown)} for "
                                 f"state_dtype={self.state_dtype!r}")
            arrays = {}
            for key, a_live in live.items():
                want = _portable(a_live)
                if key not in st:
                    if step > 0:
                        raise ValueError(f"{where} has step {step} but lacks {key!r}")
                    arrays[key] = np.zeros_like(want)
                    continue
                arrays[key] = check_state_array(where, key, st[key], want,
                                                f" (state_dtype={self.state_dtype!r})")
            new_state.append(arrays)
        # ---- everything valid: write.
        for gi, g in enumerate(new_groups):
            opt.param_groups[gi].update(g)
        for live, arrays in zip(self.states, new_state):
            for key, a in arrays.items():
                _portable(live[key])[...] = a
        for gi, s in enumerate(new_steps):       # a group whose params all start over
            if s == 0:
                for j, (_, init) in enumerate(opt._alg.group_scalars):
                    new_gscal[gi, j] = init
        opt._steps[:] = [s or 0 for s in new_steps]
        opt._gscal[:] = new_gscal
        opt.skipped_steps = int(skipped)
        self.kw = self.layouts = None


def _group_scalar(v, where):
    import math
    if isinstance(v, np.ndarray) and v.shape in ((), (1,)):
        v = v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.floating)) \
            or not math.isfinite(v):
        raise ValueError(f"{where} must be a finite number, got {v!r}")
    return float(v)


def _portable(a):
    """The array as stored in a state_dict: bfloat16 as its uint16 bits (a view)."""
    if a.dtype.itemsize == 2 and a.dtype.name == "bfloat16":
        return a.view(np.uint16)
    return a


def state_dtype_of(sd):
    """The state_dtype a state_dict was written with ("float32" when it names none)."""
    sdt = sd.get("state_dtype") if isinstance(sd, dict) else None
    return "float32" if sdt is None else sdt


def check_layout(sd, state_dtype):
    """ValueError unless state_dict ``sd`` holds ``state_dtype`` state (None and
    "float32" are the same)."""
    have = state_dtype_of(sd)
    want = state_dtype or "float32"
    if have != want:
        raise ValueError(f"state_dict holds {have} optimizer state but this optimizer has "
                         f"state_dtype={want!r}; convert it explicitly with "
                         f"fastadam.lowp.convert_state_dict(state_dict, "
                         f"state_dtype={want!r}) (to fewer bits it rounds)")
    if want != "float32" and isinstance(sd, dict) and "state_layout" in sd \
            and sd["state_layout"] != layout_name(want):
        raise ValueError(f"state_dict['state_layout'] is {sd['state_layout']!r}; this "
                         f"version reads {layout_name(want)!r}")
