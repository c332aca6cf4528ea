"""Fused NAdam and RAdam steps with low-precision storage: every layout of
:mod:`.adam_lowp` (float32, bfloat16 or float16 parameters in four precision modes;
float32, bfloat16 or blockwise 8-bit state).

The loops are adam_lowp's (``segment_plain`` / ``segment_q8``: the same loads, stores,
stochastic rounding keyed by global element index, Kahan compensation, master copy and
8-bit block encoding), given the algorithm's registry id: their per-element update is
then kernels/lowp_elem.py's, i.e. loop.prelude (gradient scale and weight decay, in the
float32 loop's order) followed by the registry's ``element`` of the algorithm
(kernels/nadam.py, kernels/radam.py), the very function the float32 loop (loop.update)
inlines. Every element is computed in float32 from the decoded values with the float32
kernel's arithmetic and each stored value is rounded once; a float32 master copy follows
float32 NAdam / RAdam bit for bit. The step's scalars are loop.step_scalars' (float64,
rounded once).

NAdam's group scalar ``mu_product`` is passed in (``gs``, float64) and not advanced by
the kernels: a group's parameters all see the value before the step, and the caller
advances it once per group with :func:`advance_group` (loop.advance, as the float32
launchers do).
"""
from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit, prange

from ..config import BLOCK, JIT_OPTIONS
from .adam_lowp import N_LOWP_SCALARS, STATE_Q8, WDM1, segment_plain, segment_q8
from .loop import advance, step_scalars
from .registry import ALGORITHMS
from .spec import H_LR, H_WEIGHT_DECAY, N_SCALARS, S_WD, WD_L2

#: The algorithms these kernels serve.
NAMES = ("nadam", "radam")
_NADAM_ID = ALGORITHMS["nadam"].id


@njit(inline="always", **JIT_OPTIONS)
def nr_scalars(alg, h, t, gs, l2):
    """The float32 scalars row (adam_lowp's layout: spec.N_SCALARS, then -lr * wd)."""
    sc = np.empty(N_LOWP_SCALARS, np.float32)
    step_scalars(alg, h, t, gs, True, sc[:N_SCALARS])   # decoupled: sc[WD] = 1 - lr * wd
    sc[WDM1] = -h[H_LR] * h[H_WEIGHT_DECAY]
    if l2:
        sc[S_WD] = h[H_WEIGHT_DECAY]
    return sc


@njit(**JIT_OPTIONS)
def _advance_nadam(h, t, gs):
    advance(_NADAM_ID, h, t, gs)


def advance_group(name, h, t, gs):
    """Advance a group's scalars ``gs`` (float64 row, in place) past step t, as the
    float32 launchers do (NAdam: mu_product *= mu_t; RAdam has none)."""
    if name == "nadam":
        _advance_nadam(h, t, gs)


@cache
def build(name, param_kind, state_kind, pmode, wd_mode, scale_grad):
    """(serial, parallel) kernels ``k(p, g, m, v, w, c, ms, vs, h, t, key, gs)`` for one
    algorithm and layout: the arguments of :func:`adam_lowp.build`'s kernels (p, g, m, v,
    w, c, ms, vs, key as there; h: the algorithm's float64 hyperparameter row), then
    gs: float64 group scalars (read only)."""
    from .launch import SOURCE_HASH
    if name not in NAMES:
        raise ValueError(f"no low-precision kernel for {name!r}")
    param_kind, state_kind, pmode, wd_mode = (int(param_kind), int(state_kind), int(pmode),
                                              int(wd_mode))
    scale_grad = bool(scale_grad)
    alg = ALGORITHMS[name].id
    l2 = wd_mode == WD_L2
    q8 = state_kind == STATE_Q8
    source = SOURCE_HASH      # a closure cell: part of numba's cache key (see launch.py)

    # q8 is a closure constant: numba prunes the branch, so a kernel compiles one loop
    # (see adam_lowp.build).
    @njit(**JIT_OPTIONS)
    def serial(p, g, m, v, w, c, ms, vs, h, t, key, gs):
        if source < 0:
            return
        sc = nr_scalars(alg, h, t, gs, l2)
        if q8:
            segment_q8(alg, p, g, m, v, w, c, ms, vs, sc, key, 0, g.shape[0], param_kind,
                       state_kind, pmode, wd_mode, scale_grad)
        else:
            segment_plain(alg, p, g, m, v, w, c, ms, vs, sc, key, 0, g.shape[0], param_kind,
                          state_kind, pmode, wd_mode, scale_grad)

    @njit(parallel=True, **JIT_OPTIONS)
    def parallel(p, g, m, v, w, c, ms, vs, h, t, key, gs):
        if source < 0:
            return
        sc = nr_scalars(alg, h, t, gs, l2)
        n = g.shape[0]
        for b in prange((n + BLOCK - 1) // BLOCK):
            lo = b * BLOCK
            hi = min(lo + BLOCK, n)
            if q8:
                segment_q8(alg, p, g, m, v, w, c, ms, vs, sc, key, lo, hi, param_kind,
                           state_kind, pmode, wd_mode, scale_grad)
            else:
                segment_plain(alg, p, g, m, v, w, c, ms, vs, sc, key, lo, hi, param_kind,
                              state_kind, pmode, wd_mode, scale_grad)

    return serial, parallel
