"""The per-element update of the low-precision loops (adam_lowp's ``plain_loop`` and
``q8_block``), chosen at compile time by the algorithm id (a literal, as the registry's
dispatch): one loop per storage layout, every algorithm's update written once.

``lowp_consts(alg, sc)`` reads the step's constants from the float32 scalars row once per
launch; ``lowp_elem(alg, kahan, p, g, m, v, k, gscale, wd, wd_mode, scale_grad)`` returns
``(p_dec, m, v, upd)``: the parameter after the gradient scale and weight decay, the new
moments, and ``upd`` with the new parameter ``p_dec - upd``.

* Adam (``adam_elem``): its own element, the operations of kernels/adam.py in the same
  order (no amsgrad, no averaging); ``upd`` is the step.
* Any other algorithm of the registry (NAdam, RAdam): loop.prelude, then the registry's
  ``element`` -- the very function the float32 loop (loop.update) inlines. Without
  Kahan compensation the element is given the parameter itself and ``upd`` is +0.0, so
  the new value is the float32 loop's bit for bit (``x - (+0.0)`` is ``x`` for every x,
  -0 and NaN included). With Kahan compensation (``kahan``, a compile-time constant) the
  store needs the decrement apart from the parameter: the element is given p = 0.0, it
  returns ``0 - X`` where the float32 loop computes ``p - X``, so ``upd = -(0 - X)`` is
  X bit for bit (only the sign of an exact zero can differ).
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload

from ..config import JIT_OPTIONS
from .adam import S_B1 as B1, S_B2 as B2, S_EPS as EPS_EFF, S_OMB1 as OMB1, S_OMB2 as OMB2
from .adam import S_STEP as STEP_SIZE
from .approx import div_sqrt_eps
from .loop import prelude
from .registry import ALGORITHMS, alg_consts, alg_element

#: Adam's id in the registry (AdamW is Adam with decoupled decay in these kernels).
ADAM_ID = ALGORITHMS["adam"].id


@njit(inline="always", **JIT_OPTIONS)
def adam_elem(p, g, m, v, b1, omb1, b2, omb2, step_size, eps, wd, gs, wd_mode, scale_grad):
    """One element of Adam in the working precision (float32): returns (p after decoupled
    decay, m, v, upd); the new parameter is ``p - upd``. Same operations, in the same
    order, as kernels/adam.py (no amsgrad, no averaging)."""
    p, g = prelude(p, g, gs, wd, wd_mode, scale_grad)
    m = b1 * m + omb1 * g
    v = b2 * v + omb2 * (g * g)
    upd = step_size * div_sqrt_eps(m, v, eps)     # the same denominator as kernels/adam.py
    return p, m, v, upd


# Stubs: numba replaces each call in compiled code by the overload below.
def lowp_consts(alg, sc):
    raise NotImplementedError("compiled code only")


def lowp_elem(alg, kahan, p, g, m, v, k, gscale, wd, wd_mode, scale_grad):
    raise NotImplementedError("compiled code only")


def _is_adam(alg):
    if not isinstance(alg, types.IntegerLiteral):
        raise TypingError(f"the algorithm id must be a compile-time constant, got {alg}")
    return alg.literal_value == ADAM_ID


@overload(lowp_consts, inline="always", jit_options=JIT_OPTIONS)
def _ov_consts(alg, sc):
    if _is_adam(alg):
        def impl(alg, sc):
            return sc[B1], sc[OMB1], sc[B2], sc[OMB2], sc[STEP_SIZE], sc[EPS_EFF]
    else:
        def impl(alg, sc):
            return alg_consts(alg, sc)
    return impl


@overload(lowp_elem, inline="always", jit_options=JIT_OPTIONS)
def _ov_elem(alg, kahan, p, g, m, v, k, gscale, wd, wd_mode, scale_grad):
    if _is_adam(alg):
        def impl(alg, kahan, p, g, m, v, k, gscale, wd, wd_mode, scale_grad):
            b1, omb1, b2, omb2, step_size, eps = k
            return adam_elem(p, g, m, v, b1, omb1, b2, omb2, step_size, eps, wd, gscale,
                             wd_mode, scale_grad)
    else:
        def impl(alg, kahan, p, g, m, v, k, gscale, wd, wd_mode, scale_grad):
            p, g = prelude(p, g, gscale, wd, wd_mode, scale_grad)
            # one inlined element (kahan is a constant: LLVM keeps one of the selects)
            x, m, v, _ = alg_element(alg, 0, np.float32(0.0) if kahan else p, g, m, v, g, k)
            if kahan:
                return p, m, v, -x
            return x, m, v, np.float32(0.0)
    return impl
