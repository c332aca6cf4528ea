"""AdaMax (Kingma & Ba, section 7.1; = torch.optim.Adamax): everything that defines it.

With g the gradient after maximize/clipping and L2 weight decay (the only decay AdaMax
has), t the step::

    m = b1 * m + (1 - b1) * g
    u = max(b2 * u, |g| + eps)                 (NaN propagates, like torch.amax)
    p -= lr / (1 - b1**t) * m / u

u (``exp_inf``) needs no bias correction (the paper shows why). One divide per element.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import _checks as C
from ..config import JIT_OPTIONS
from .spec import (H_LR, Algorithm, Option, hyper_fields, reference_start,
                   scalar_fields)

BETA1, BETA2, EPS = hyper_fields(3)
S_B1, S_OMB1, S_B2, S_STEP, S_EPS = scalar_fields(5)


@njit(inline="always", **JIT_OPTIONS)
def scalars(h, t, gs, out):
    b1 = h[BETA1]
    out[S_B1] = b1
    out[S_OMB1] = 1.0 - b1
    out[S_B2] = h[BETA2]
    out[S_STEP] = h[H_LR] / (1.0 - b1 ** float(t))
    out[S_EPS] = h[EPS]


@njit(inline="always", **JIT_OPTIONS)
def consts(sc):
    return sc[S_B1], sc[S_OMB1], sc[S_B2], sc[S_STEP], sc[S_EPS]


@njit(inline="always", **JIT_OPTIONS)
def moments(g, m, u, b1, omb1, b2, step_size, eps):
    """The new (m, u) and the update ``upd`` (new parameter: p - upd) of one element; the
    float32 loop (:func:`element`) and the low-precision one (adamax_lowp.py) share it."""
    m = b1 * m + omb1 * g
    u = b2 * u
    a = abs(g) + eps
    u = a if (a > u or a != a) else u
    return m, u, step_size * (m / u)  # exact: an estimate measured slower (docs/approx.md)


@njit(inline="always", **JIT_OPTIONS)
def element(variant, p, g, m, u, unused, k):
    b1, omb1, b2, step_size, eps = k
    m, u, upd = moments(g, m, u, b1, omb1, b2, step_size, eps)
    return p - upd, m, u, unused


def reference(param, grad, state, step, hp):
    """Slow float64 step (numpy), in place on ``state``; returns the new parameter."""
    p, g = reference_start(param, grad, dict(hp, decoupled=False))    # L2 only
    b1, b2 = hp["betas"]
    state["exp_avg"] = b1 * state["exp_avg"] + (1.0 - b1) * g
    state["exp_inf"] = np.maximum(b2 * state["exp_inf"], np.abs(g) + hp["eps"])
    return p - hp["lr"] / (1.0 - b1 ** step) * state["exp_avg"] / state["exp_inf"]


ADAMAX = Algorithm(
    name="adamax",
    options=(Option("betas", (0.9, 0.999), C.check_betas),
             Option("eps", 1e-8, C.check_eps)),
    state=("exp_avg", "exp_inf"),
    n_state=lambda g: 2, variant=lambda g: 0, decoupled=lambda g: False,
    hyper=lambda g: (g["betas"][0], g["betas"][1], g["eps"]),
    scalars=scalars, consts=consts, element=element, reference=reference,
    doc="AdaMax (Kingma & Ba, section 7.1) = torch.optim.Adamax")

ALGORITHMS = (ADAMAX,)
