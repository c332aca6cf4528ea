"""Fused AdaMax steps with bfloat16 storage (``state_dtype="bfloat16"``).

The layouts are those of :mod:`.adam_lowp` without the 8-bit state: parameters and
gradients float32 or bfloat16 (with the same four ways to keep a bfloat16 parameter's
precision), ``exp_avg`` / ``exp_inf`` float32 or bfloat16 (round to nearest even on
store). The loads and stores are adam_lowp's helpers; the per-element update is
:func:`.adamax.moments`, the very function the float32 AdaMax loop inlines, so every
element is computed in float32 from the decoded values with the arithmetic of
``kernels/adamax.py`` and each stored value is rounded once.

8-bit AdaMax state is not provided: the infinity norm u = max(b2 * u, |g| + eps) is
the denominator itself (not its square root, as Adam's sqrt(v)), so a code map and
block scale for it would need their own error analysis (docs/low_precision.md).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit, prange

from ..config import BLOCK, JIT_OPTIONS
from .adam_lowp import (PARAM_F32, PMODE_KAHAN, PMODE_MASTER, STATE_Q8, load_grad,
                        load_param, load_state, store_param, store_state)
from .adamax import S_B1, S_B2, S_EPS, S_OMB1, S_STEP, moments
from .loop import step_scalars
from .lowp import sr_segment_key
from .registry import ALGORITHMS
from .spec import N_SCALARS, S_GRAD_SCALE, S_WD

#: AdaMax's id in the registry: a compile-time constant of the kernels below.
_ADAMAX_ID = ALGORITHMS["adamax"].id
_F0 = np.float32(0.0)


@njit(inline="always", **JIT_OPTIONS)
def plain_loop(p, g, m, u, w, c, sc, key, base, param_kind, state_kind, pmode, l2,
               scale_grad):
    """Equal-length segments; ``base`` is the global index of element 0. The order of
    operations is loop.update's with adamax.element (gradient scale, L2 decay, moments,
    p - upd)."""
    b1, omb1, b2, step_size, eps = sc[S_B1], sc[S_OMB1], sc[S_B2], sc[S_STEP], sc[S_EPS]
    gs, wd = sc[S_GRAD_SCALE], sc[S_WD]
    key = sr_segment_key(key, base)
    for i in range(g.shape[0]):
        pi = load_param(p, w, i, param_kind, pmode)
        gi = load_grad(g, i, param_kind)
        if scale_grad:
            gi = gi * gs
        if l2:
            gi = gi + wd * pi
        mi, ui, upd = moments(gi, load_state(m, i, state_kind), load_state(u, i, state_kind),
                              b1, omb1, b2, step_size, eps)
        store_state(m, i, mi, state_kind)
        store_state(u, i, ui, state_kind)
        # AdaMax has L2 decay only: the decayed parameter is the parameter, no Kahan
        # decay increment.
        store_param(p, w, c, i, pi, pi, upd, _F0, key, base + i, param_kind, pmode, False)


@njit(inline="always", **JIT_OPTIONS)
def segment(p, g, m, u, w, c, sc, key, lo, hi, param_kind, state_kind, pmode, l2,
            scale_grad):
    master = pmode == PMODE_MASTER and param_kind != PARAM_F32
    kahan = pmode == PMODE_KAHAN and param_kind != PARAM_F32
    plain_loop(p[lo:hi], g[lo:hi], m[lo:hi], u[lo:hi], w[lo:hi] if master else w[:0],
               c[lo:hi] if kahan else c[:0], sc, key, lo, param_kind, state_kind, pmode, l2,
               scale_grad)


@njit(inline="always", **JIT_OPTIONS)
def adamax_scalars(h, t):
    sc = np.empty(N_SCALARS, np.float32)      # float64 math, rounded once (loop.py)
    step_scalars(_ADAMAX_ID, h, t, h, False, sc)
    return sc


@lru_cache(maxsize=None)
def build(param_kind, state_kind, pmode, l2, scale_grad):
    """(serial, parallel) kernels ``k(p, g, m, u, w, c, h, t, key)`` for one layout.

    p, g: float32 or uint16 (bfloat16 bits); m, u: float32 or uint16; w: float32 master
    copy; c: uint16 compensation (unused arrays may be empty). h: float64 hyperparameter
    row of AdaMax (kernels/spec.py, kernels/adamax.py), t: the step (>= 1), key:
    stochastic rounding key (lowp.sr_key)."""
    from .launch import SOURCE_HASH
    param_kind, state_kind, pmode = int(param_kind), int(state_kind), int(pmode)
    if state_kind == STATE_Q8:
        raise ValueError("8-bit AdaMax state is not provided (kernels/adamax_lowp.py)")
    l2, scale_grad = bool(l2), bool(scale_grad)
    source = SOURCE_HASH      # a closure cell: part of numba's cache key (see launch.py)

    @njit(**JIT_OPTIONS)
    def serial(p, g, m, u, w, c, h, t, key):
        if source < 0:
            return
        sc = adamax_scalars(h, t)
        segment(p, g, m, u, w, c, sc, key, 0, g.shape[0], param_kind, state_kind, pmode,
                l2, scale_grad)

    @njit(parallel=True, **JIT_OPTIONS)
    def parallel(p, g, m, u, w, c, h, t, key):
        if source < 0:
            return
        sc = adamax_scalars(h, t)
        n = g.shape[0]
        for b in prange((n + BLOCK - 1) // BLOCK):
            lo = b * BLOCK
            segment(p, g, m, u, w, c, sc, key, lo, min(lo + BLOCK, n), param_kind,
                    state_kind, pmode, l2, scale_grad)

    return serial, parallel
