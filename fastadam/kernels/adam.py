"""Adam (Kingma & Ba, 2014, Algorithm 1), AdamW (Loshchilov & Hutter) and AMSGrad:
everything that defines them.

With g the gradient after maximize/clipping and L2 weight decay (or p after decoupled
decay, both applied by the shared loop), t the step, bc1 = 1 - b1**t, bc2 = 1 - b2**t::

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    d = vmax = max(vmax, v) if amsgrad else v          (NaN propagates, like torch)
    "paper": p -= lr / bc1 * m / (sqrt(d) / sqrt(bc2) + eps)     # Algorithm 1, PyTorch
    "hat":   p -= lr * sqrt(bc2) / bc1 * m / (sqrt(d) + eps)      # TensorFlow, sklearn

Both eps modes are one formula: step_size = lr * sqrt(bc2) / bc1 and eps_eff =
eps * sqrt(bc2) ("paper", multiplied through by sqrt(bc2)) or eps ("hat"): one sqrt and
one divide per element. ``bias_correction=False`` makes bc1 = bc2 = 1.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import _checks as C
from ..config import JIT_OPTIONS
from .approx import div_sqrt_eps
from .spec import (H_LR, Algorithm, Option, hyper_fields, reference_start,
                   scalar_fields)

BETA1, BETA2, EPS, BIAS_CORRECTION, EPS_HAT = hyper_fields(5)
S_B1, S_OMB1, S_B2, S_OMB2, S_STEP, S_EPS = scalar_fields(6)
PLAIN, AMSGRAD = 0, 1       # variants


@njit(inline="always", **JIT_OPTIONS)
def scalars(h, t, gs, out):
    b1 = h[BETA1]
    b2 = h[BETA2]
    bc1 = 1.0
    bc2_sqrt = 1.0
    if h[BIAS_CORRECTION] != 0.0:
        tf = float(t)
        bc1 = 1.0 - b1 ** tf
        bc2_sqrt = np.sqrt(1.0 - b2 ** tf)
    out[S_B1] = b1
    out[S_OMB1] = 1.0 - b1
    out[S_B2] = b2
    out[S_OMB2] = 1.0 - b2
    out[S_STEP] = h[H_LR] * bc2_sqrt / bc1
    out[S_EPS] = h[EPS] if h[EPS_HAT] != 0.0 else h[EPS] * bc2_sqrt


@njit(inline="always", **JIT_OPTIONS)
def consts(sc):
    return sc[S_B1], sc[S_OMB1], sc[S_B2], sc[S_OMB2], sc[S_STEP], sc[S_EPS]


@njit(inline="always", **JIT_OPTIONS)
def element(variant, p, g, m, v, vmax, k):
    b1, omb1, b2, omb2, step_size, eps = k
    m = b1 * m + omb1 * g
    v = b2 * v + omb2 * (g * g)
    d = v
    if variant == AMSGRAD:
        vmax = v if (v > vmax or v != v) else vmax
        d = vmax
    p = p - step_size * div_sqrt_eps(m, d, eps)
    return p, m, v, vmax


def reference(param, grad, state, step, hp):
    """Slow float64 step (numpy), in place on ``state``; returns the new parameter."""
    p, g = reference_start(param, grad, hp)
    b1, b2 = hp["betas"]
    state["exp_avg"] = b1 * state["exp_avg"] + (1.0 - b1) * g
    state["exp_avg_sq"] = b2 * state["exp_avg_sq"] + (1.0 - b2) * g * g
    v = state["exp_avg_sq"]
    if hp.get("amsgrad"):
        state["max_exp_avg_sq"] = np.maximum(state["max_exp_avg_sq"], v)
        v = state["max_exp_avg_sq"]
    if hp.get("bias_correction", True):
        bc1, bc2 = 1.0 - b1 ** step, 1.0 - b2 ** step
    else:
        bc1 = bc2 = 1.0
    if hp.get("eps_mode", "paper") == "paper":
        return p - hp["lr"] / bc1 * state["exp_avg"] / (np.sqrt(v) / np.sqrt(bc2) + hp["eps"])
    return p - hp["lr"] * np.sqrt(bc2) / bc1 * state["exp_avg"] / (np.sqrt(v) + hp["eps"])


def _bool(v, name):
    return C.check_bool(name, v)


_OPTIONS = (
    Option("betas", (0.9, 0.999), C.check_betas),
    Option("eps", 1e-8, C.check_eps),
    Option("amsgrad", False, _bool),
    Option("bias_correction", True, _bool),
    Option("eps_mode", "paper", C.check_eps_mode),
)


def _hyper(g):
    return (g["betas"][0], g["betas"][1], g["eps"],
            1.0 if g["bias_correction"] else 0.0, 1.0 if g["eps_mode"] == "hat" else 0.0)


def _variant(g):
    return AMSGRAD if g["amsgrad"] else PLAIN


def _n_state(g):
    return 3 if g["amsgrad"] else 2


_COMMON = dict(state=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), n_state=_n_state,
               variant=_variant, hyper=_hyper, scalars=scalars, consts=consts,
               element=element, reference=reference)

#: Adam: L2 weight decay unless the group sets decoupled_weight_decay (torch.optim.Adam).
ADAM = Algorithm(
    name="adam",
    options=_OPTIONS + (Option("decoupled_weight_decay", False, _bool),),
    decoupled=lambda g: g["decoupled_weight_decay"],
    doc="Adam (Kingma & Ba, Algorithm 1) = torch.optim.Adam", **_COMMON)

#: AdamW: always decoupled weight decay (torch.optim.AdamW).
ADAMW = Algorithm(
    name="adamw", options=_OPTIONS, decoupled=lambda g: True,
    doc="AdamW (Loshchilov & Hutter) = torch.optim.AdamW", **_COMMON)

ALGORITHMS = (ADAM, ADAMW)
