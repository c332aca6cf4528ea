"""Many low-precision Adam / AdamW arrays in one fused launch per layout.

:class:`MultiStep` takes the parameters (flat float32, bfloat16 or float16 arrays) and
their states (:func:`fastadam.lowp.init_lowp_state`, already validated by the caller),
groups the arrays by kernel layout and builds each layout's table of addresses once
(``kernels/lowp_multi.py``); a step then writes the gradients' addresses into the tables
and runs one launch per layout. The results equal one :func:`fastadam.lowp.adam_step_lowp`
call per array bit for bit (tested). The caller keeps every array alive and unmoved
while it uses the object, and checks the gradients (dtype, shape, C order) before
:meth:`MultiStep.step`.
"""
from __future__ import annotations

import numpy as np

from . import lowp
from .kernels.lowp_multi import T_COLUMNS, T_G, build_multi, table_rows


def _addr(state, key):
    a = state.get(key)
    return 0 if a is None else a.ctypes.data


class MultiStep:
    """One launch per layout over ``params`` (flat arrays) with ``states`` (dicts of
    flat arrays); ``group_of[j]`` is array j's group, ``pmodes[j]`` its precision mode."""

    def __init__(self, params, states, group_of, pmodes, wd_modes, maximize):
        layouts = {}
        for j, (p, st) in enumerate(zip(params, states)):
            gi = group_of[j]
            key = (lowp._param_kind(p.dtype), lowp.state_kind(st["exp_avg"].dtype), pmodes[j],
                   wd_modes[gi], bool(maximize[gi]))
            layouts.setdefault(key, []).append(j)
        self.launches = []
        for key, members in layouts.items():
            rows, owner = [], []
            for r, j in enumerate(members):
                p, st = params[j], states[j]
                n = p.shape[0]
                base = [p.ctypes.data, 0, st["exp_avg"].ctypes.data,
                        st["exp_avg_sq"].ctypes.data, _addr(st, "master"),
                        _addr(st, "compensation"), _addr(st, "exp_avg_absmax"),
                        _addr(st, "exp_avg_sq_absmax"), n]
                for lo, hi in table_rows(n):
                    rows.append(base + [lo, hi, group_of[j]])
                    owner.append(r)
            table = np.array(rows, np.int64).reshape(-1, T_COLUMNS)
            n_total = int(sum(params[j].shape[0] for j in members))
            self.launches.append((build_multi(*key), table, np.array(owner, np.intp),
                                  members, n_total))

    def step(self, grads, h, steps, keys):
        """One step: ``grads[j]`` for array j (checked by the caller), ``h`` (groups x
        N_HYPER float64), ``steps`` and ``keys`` (int64 per group)."""
        for kernels, table, owner, members, n_total in self.launches:
            if table.shape[0] == 0:
                continue
            addrs = np.array([grads[j].ctypes.data for j in members], np.int64)
            table[:, T_G] = addrs[owner]
            lowp.launch(kernels, n_total, table, h, steps, keys)

