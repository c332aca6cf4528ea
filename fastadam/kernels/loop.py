"""The shared fused loop and the step's scalars: what every algorithm's update has in
common, written once.

Per element, in one pass (each array read once and written once)::

    g = g * grad_scale              # maximize (-1) and clipping; if scale_grad
    g = g + wd * p                  # WD_L2
    p = p * (1 - lr * wd)           # WD_DECOUPLED
    p, s0, s1, s2 = <algorithm's element update>(p, g, s0, s1, s2)
    pbar = b * pbar + (1 - b) * p   # temporal averaging (paper 7.2); if average

The flags (algorithm id, variant, weight-decay mode, number of state rows, scale_grad,
average) are compile-time constants of the calling kernel, so their branches disappear
and LLVM vectorises the loop.
"""
from __future__ import annotations

from numba import njit

from ..config import JIT_OPTIONS
from .registry import alg_advance, alg_consts, alg_element, alg_scalars
from .spec import (H_AVERAGE, H_CLIP, H_LR, H_SIGN, H_WEIGHT_DECAY, S_AVG_B, S_GRAD_SCALE,
                   S_OMAVG_B, S_WD, WD_DECOUPLED, WD_L2)


@njit(inline="always", **JIT_OPTIONS)
def step_scalars(alg, h, t, gs, decoupled, out):
    """Step t's scalars from hyperparameter row ``h`` and group scalars ``gs``: float64
    math, rounded once to ``out``'s dtype. Bias corrections use pow on the integer step
    (no running product, no drift over long runs)."""
    out[S_GRAD_SCALE] = h[H_SIGN] * h[H_CLIP]
    out[S_WD] = 1.0 - h[H_LR] * h[H_WEIGHT_DECAY] if decoupled else h[H_WEIGHT_DECAY]
    out[S_AVG_B] = h[H_AVERAGE]
    out[S_OMAVG_B] = 1.0 - h[H_AVERAGE]
    alg_scalars(alg, h, t, gs, out)


@njit(inline="always", **JIT_OPTIONS)
def advance(alg, h, t, gs):
    alg_advance(alg, h, t, gs)


@njit(inline="always", **JIT_OPTIONS)
def prelude(pi, gi, gs, wd, wd_mode, scale_grad):
    """(p, g) of one element before its algorithm's update: the gradient times the clip
    scale ``gs`` if ``scale_grad``, then L2 weight decay folded into g or decoupled decay
    applied to p (``wd`` is then the factor 1 - lr * weight_decay). Shared by every
    fused loop, float32 and low-precision."""
    if scale_grad:
        gi = gi * gs
    if wd_mode == WD_L2:
        gi = gi + wd * pi
    elif wd_mode == WD_DECOUPLED:
        pi = pi * wd
    return pi, gi


@njit(inline="always", **JIT_OPTIONS)
def update(alg, variant, n_state, wd_mode, scale_grad, average, p, g, s0, s1, s2, pbar, sc):
    # Equal-length arrays looped from 0: LLVM proves the indices non-negative and
    # vectorises (a range(lo, hi) loop keeps wraparound checks and runs 8x slower).
    k = alg_consts(alg, sc)
    gs = sc[S_GRAD_SCALE]
    wd = sc[S_WD]
    ab = sc[S_AVG_B]
    omab = sc[S_OMAVG_B]
    for i in range(p.shape[0]):
        pi, gi = prelude(p[i], g[i], gs, wd, wd_mode, scale_grad)
        a = s0[i]
        b = s1[i] if n_state > 1 else gi      # unused rows: any value of the dtype
        c = s2[i] if n_state > 2 else gi
        pi, a, b, c = alg_element(alg, variant, pi, gi, a, b, c, k)
        p[i] = pi
        s0[i] = a
        if n_state > 1:
            s1[i] = b
        if n_state > 2:
            s2[i] = c
        if average:
            pbar[i] = ab * pbar[i] + omab * pi
