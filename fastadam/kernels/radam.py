"""RAdam (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond";
= torch.optim.RAdam): everything that defines it.

With g the gradient after maximize and weight decay (L2, or decoupled on p when the group
sets ``decoupled_weight_decay``), t the step, bc1 = 1 - b1**t, bc2 = 1 - b2**t,
rho_inf = 2 / (1 - b2) - 1 and rho_t = rho_inf - 2 t b2**t / bc2::

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    rho_t > 5:  r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                p -= lr * r * sqrt(bc2) / bc1 * m / (sqrt(v) + eps)
    otherwise:  p -= lr / bc1 * m                   (early steps: plain momentum)

Which branch is a per-step scalar; the loop selects between the two values per element
(no branch), so a step costs what an Adam step costs.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import _checks as C
from ..config import JIT_OPTIONS
from .approx import div_sqrt_eps
from .spec import (H_LR, Algorithm, Option, hyper_fields, reference_start,
                   scalar_fields)

BETA1, BETA2, EPS = hyper_fields(3)
S_B1, S_OMB1, S_B2, S_OMB2, S_STEP, S_EPS, S_RECTIFIED = scalar_fields(7)


@njit(inline="always", **JIT_OPTIONS)
def scalars(h, t, gs, out):
    b1 = h[BETA1]
    b2 = h[BETA2]
    tf = float(t)
    bc1 = 1.0 - b1 ** tf
    bc2 = 1.0 - b2 ** tf
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho_t = rho_inf - 2.0 * tf * (b2 ** tf) / bc2
    out[S_B1] = b1
    out[S_OMB1] = 1.0 - b1
    out[S_B2] = b2
    out[S_OMB2] = 1.0 - b2
    out[S_EPS] = h[EPS]
    if rho_t > 5.0:
        rect = np.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                       / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        out[S_STEP] = h[H_LR] * rect * np.sqrt(bc2) / bc1
        out[S_RECTIFIED] = 1.0
    else:
        out[S_STEP] = h[H_LR] / bc1
        out[S_RECTIFIED] = 0.0


@njit(inline="always", **JIT_OPTIONS)
def consts(sc):
    return (sc[S_B1], sc[S_OMB1], sc[S_B2], sc[S_OMB2], sc[S_STEP], sc[S_EPS],
            sc[S_RECTIFIED] != 0)


@njit(inline="always", **JIT_OPTIONS)
def element(variant, p, g, m, v, unused, k):
    b1, omb1, b2, omb2, step_size, eps, rectified = k
    m = b1 * m + omb1 * g
    v = b2 * v + omb2 * (g * g)
    q = div_sqrt_eps(m, v, eps)
    p = p - step_size * (q if rectified else m)
    return p, m, v, unused


def reference(param, grad, state, step, hp):
    """Slow float64 step (numpy), in place on ``state``; returns the new parameter."""
    p, g = reference_start(param, grad, hp)
    lr = hp["lr"]
    b1, b2 = hp["betas"]
    state["exp_avg"] = b1 * state["exp_avg"] + (1.0 - b1) * g
    state["exp_avg_sq"] = b2 * state["exp_avg_sq"] + (1.0 - b2) * g * g
    bc1, bc2 = 1.0 - b1 ** step, 1.0 - b2 ** step
    m_hat = state["exp_avg"] / bc1
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho_t = rho_inf - 2.0 * step * b2 ** step / bc2
    if rho_t > 5.0:
        r = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        return p - lr * m_hat * r * np.sqrt(bc2) / (np.sqrt(state["exp_avg_sq"]) + hp["eps"])
    return p - lr * m_hat


RADAM = Algorithm(
    name="radam",
    options=(Option("betas", (0.9, 0.999), C.check_betas),
             Option("eps", 1e-8, C.check_eps),
             Option("decoupled_weight_decay", False, lambda v, n: C.check_bool(n, v))),
    state=("exp_avg", "exp_avg_sq"),
    n_state=lambda g: 2, variant=lambda g: 0,
    decoupled=lambda g: g["decoupled_weight_decay"],
    hyper=lambda g: (g["betas"][0], g["betas"][1], g["eps"]),
    scalars=scalars, consts=consts, element=element, reference=reference,
    doc="RAdam (Liu et al., 2020) = torch.optim.RAdam")

ALGORITHMS = (RADAM,)
