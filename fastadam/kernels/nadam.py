"""NAdam (Dozat, 2016, "Incorporating Nesterov Momentum into Adam"; = torch.optim.NAdam):
everything that defines it.

With g the gradient after maximize and weight decay (L2, or decoupled on p when the group
sets ``decoupled_weight_decay``, both applied by the shared loop), t the step,
mu_t = b1 * (1 - 0.5 * 0.96**(t * momentum_decay)) and the group's running product
mu_product (= prod of mu_1..mu_t, a group scalar, exported per parameter as torch does)::

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = sqrt(v / (1 - b2**t)) + eps
    p -= lr * (1 - mu_t) / (1 - mu_product) * g / denom
       + lr * mu_{t+1} / (1 - mu_product * mu_{t+1}) * m / denom

Multiplied through by sqrt(1 - b2**t) as Adam's "paper" form: one sqrt and one divide.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import _checks as C
from ..config import JIT_OPTIONS
from .approx import div_sqrt_eps
from .spec import (H_LR, Algorithm, Option, hyper_fields, reference_start,
                   scalar_fields)

BETA1, BETA2, EPS, MOMENTUM_DECAY = hyper_fields(4)
S_B1, S_OMB1, S_B2, S_OMB2, S_CG, S_CM, S_EPS = scalar_fields(7)
MU_PRODUCT = 0      # group scalar


@njit(inline="always", **JIT_OPTIONS)
def _mu(b1, md, t):
    return b1 * (1.0 - 0.5 * 0.96 ** (t * md))


@njit(inline="always", **JIT_OPTIONS)
def scalars(h, t, gs, out):
    b1 = h[BETA1]
    b2 = h[BETA2]
    md = h[MOMENTUM_DECAY]
    lr = h[H_LR]
    tf = float(t)
    bc2_sqrt = np.sqrt(1.0 - b2 ** tf)
    mu = _mu(b1, md, tf)
    mu_next = _mu(b1, md, tf + 1.0)
    mp = gs[MU_PRODUCT] * mu
    out[S_B1] = b1
    out[S_OMB1] = 1.0 - b1
    out[S_B2] = b2
    out[S_OMB2] = 1.0 - b2
    out[S_CG] = lr * (1.0 - mu) / (1.0 - mp) * bc2_sqrt
    out[S_CM] = lr * mu_next / (1.0 - mp * mu_next) * bc2_sqrt
    out[S_EPS] = h[EPS] * bc2_sqrt


@njit(inline="always", **JIT_OPTIONS)
def advance(h, t, gs):
    gs[MU_PRODUCT] *= _mu(h[BETA1], h[MOMENTUM_DECAY], float(t))


@njit(inline="always", **JIT_OPTIONS)
def consts(sc):
    return sc[S_B1], sc[S_OMB1], sc[S_B2], sc[S_OMB2], sc[S_CG], sc[S_CM], sc[S_EPS]


@njit(inline="always", **JIT_OPTIONS)
def element(variant, p, g, m, v, unused, k):
    b1, omb1, b2, omb2, cg, cm, eps = k
    m = b1 * m + omb1 * g
    v = b2 * v + omb2 * (g * g)
    p = p - div_sqrt_eps(cg * g + cm * m, v, eps)
    return p, m, v, unused


def reference(param, grad, state, step, hp):
    """Slow float64 step (numpy), in place on ``state``; returns the new parameter."""
    p, g = reference_start(param, grad, hp)
    lr = hp["lr"]
    b1, b2 = hp["betas"]
    md = hp["momentum_decay"]
    mu = b1 * (1.0 - 0.5 * 0.96 ** (step * md))
    mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * md))
    state["mu_product"] = state.get("mu_product", 1.0) * mu
    mp = state["mu_product"]
    state["exp_avg"] = b1 * state["exp_avg"] + (1.0 - b1) * g
    state["exp_avg_sq"] = b2 * state["exp_avg_sq"] + (1.0 - b2) * g * g
    denom = np.sqrt(state["exp_avg_sq"] / (1.0 - b2 ** step)) + hp["eps"]
    p = p - lr * (1.0 - mu) / (1.0 - mp) * g / denom
    return p - lr * mu_next / (1.0 - mp * mu_next) * state["exp_avg"] / denom


def _check_momentum_decay(v, name="momentum_decay"):
    x = C.check_nonnegative(v, name, "momentum_decay")
    return x


NADAM = Algorithm(
    name="nadam",
    options=(Option("betas", (0.9, 0.999), C.check_betas),
             Option("eps", 1e-8, C.check_eps),
             Option("momentum_decay", 4e-3, _check_momentum_decay),
             Option("decoupled_weight_decay", False, lambda v, n: C.check_bool(n, v))),
    state=("exp_avg", "exp_avg_sq"),
    n_state=lambda g: 2, variant=lambda g: 0,
    decoupled=lambda g: g["decoupled_weight_decay"],
    hyper=lambda g: (g["betas"][0], g["betas"][1], g["eps"], g["momentum_decay"]),
    scalars=scalars, consts=consts, element=element, advance=advance,
    group_scalars=(("mu_product", 1.0),), reference=reference,
    doc="NAdam (Dozat, 2016) = torch.optim.NAdam")

ALGORITHMS = (NADAM,)
