"""Fused Adam / AdamW / AMSGrad update (Kingma & Ba, Algorithm 1; Loshchilov & Hutter).

One pass per step: read p, g, m, v (and vmax, pbar when used) once, write them once.
With the step's scalars computed once in float64 and rounded to the buffer dtype
(:func:`common.step_scalars`)::

    g  = g * grad_scale                       # maximize (-1) and clipping; if scale_grad
    g  = g + wd * p                           # WD_L2
    p  = p * decay                            # WD_DECOUPLED, decay = 1 - lr * weight_decay
    m  = b1 * m + (1 - b1) * g
    v  = b2 * v + (1 - b2) * g * g
    vm = max(vm, v); v = vm                   # amsgrad (NaN propagates, like torch.maximum)
    p  = p - step_size * (m / (sqrt(v) + eps_eff))
    pbar = ab * pbar + (1 - ab) * p           # average (temporal averaging, paper 7.2)

Both eps modes are this one formula: with bc1 = 1 - b1**t, bc2 = 1 - b2**t,
step_size = lr * sqrt(bc2) / bc1 and eps_eff = eps * sqrt(bc2) ("paper", Algorithm 1,
= PyTorch: lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), multiplied through by sqrt(bc2)) or
eps_eff = eps ("hat", = TensorFlow / scikit-learn). One sqrt and one division per element.

Flags are compile-time constants of a generated kernel (closure variables are frozen by
numba), so the loop has no per-element branches on them.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..config import JIT_OPTIONS
from .approx import div
from .common import (ADAM, AVG_B, B1, B2, EPS_EFF, GRAD_SCALE, OMAVG_B, OMB1, OMB2,
                     STEP_SIZE, WD, WD_DECOUPLED, WD_L2)


@njit(inline="always", **JIT_OPTIONS)
def update(p, g, m, v, vmax, pbar, sc, wd_mode, amsgrad, scale_grad, average):
    # Arrays of equal length, looped from 0: LLVM then proves indices non-negative and
    # vectorises (a range(lo, hi) loop keeps wraparound checks and runs 8x slower). The
    # flags are constants of the calling kernel; inlined, their branches disappear.
    b1 = sc[B1]
    omb1 = sc[OMB1]
    b2 = sc[B2]
    omb2 = sc[OMB2]
    step_size = sc[STEP_SIZE]
    eps = sc[EPS_EFF]
    wd = sc[WD]
    gs = sc[GRAD_SCALE]
    ab = sc[AVG_B]
    omab = sc[OMAVG_B]
    for i in range(p.shape[0]):
        gi = g[i]
        pi = p[i]
        if scale_grad:
            gi = gi * gs
        if wd_mode == WD_L2:
            gi = gi + wd * pi
        elif wd_mode == WD_DECOUPLED:
            pi = pi * wd
        mi = b1 * m[i] + omb1 * gi
        vi = b2 * v[i] + omb2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vm = vmax[i]
            vi = vi if (vi > vm or vi != vi) else vm   # NaN-propagating max
            vmax[i] = vi
        pi = pi - step_size * div(mi, np.sqrt(vi) + eps, eps)
        p[i] = pi
        if average:
            pbar[i] = ab * pbar[i] + omab * pi



def make_kernels(wd_mode, amsgrad, scale_grad, average):
    """(flat_serial, flat_parallel, table_serial, table_parallel) for one flag set; see
    :func:`launch.build_launchers` for their arguments."""
    from .launch import build_launchers
    return build_launchers(ADAM, wd_mode, amsgrad, scale_grad, average)
