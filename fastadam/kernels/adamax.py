"""Fused AdaMax update (Kingma & Ba, section 7.1; PyTorch semantics).

    g = g * grad_scale                     # maximize (-1) and clipping; if scale_grad
    g = g + wd * p                         # WD_L2 (the only weight decay AdaMax has)
    m = b1 * m + (1 - b1) * g
    u = max(b2 * u, |g| + eps)             # NaN propagates, like torch.amax
    p = p - lr / (1 - b1**t) * (m / u)
    pbar = ab * pbar + (1 - ab) * p        # average (temporal averaging, paper 7.2)

u (``exp_inf``) lives in the state row of v; there is no bias correction for u (the
paper shows it is not needed). One division per element, no sqrt.
"""
from __future__ import annotations

from numba import njit

from ..config import JIT_OPTIONS
from .common import (ADAMAX, AVG_B, B1, B2, EPS_EFF, GRAD_SCALE, OMAVG_B, OMB1, STEP_SIZE,
                     WD, WD_L2)


@njit(inline="always", **JIT_OPTIONS)
def update(p, g, m, u, vmax, pbar, sc, wd_mode, scale_grad, average):
    b1 = sc[B1]
    omb1 = sc[OMB1]
    b2 = sc[B2]
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
        mi = b1 * m[i] + omb1 * gi
        ui = b2 * u[i]
        a = abs(gi) + eps
        ui = a if (a > ui or a != a) else ui          # NaN-propagating max
        m[i] = mi
        u[i] = ui
        pi = pi - step_size * (mi / ui)
        p[i] = pi
        if average:
            pbar[i] = ab * pbar[i] + omab * pi



def make_kernels(wd_mode, amsgrad, scale_grad, average):
    """(flat_serial, flat_parallel, table_serial, table_parallel); ``amsgrad`` must be
    False (it is part of the signature so every algorithm is keyed alike)."""
    if amsgrad:
        raise ValueError("AdaMax has no amsgrad variant")
    from .launch import build_launchers
    return build_launchers(ADAMAX, wd_mode, False, scale_grad, average)
