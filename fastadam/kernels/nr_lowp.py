"""Fused NAdam and RAdam steps with bfloat16 state (``state_dtype="bfloat16"``).

Float32 parameters and gradients; ``exp_avg`` / ``exp_avg_sq`` float32 or bfloat16
(adam_lowp's loads and stores: bfloat16 decoded exactly, rounded to nearest even once
when stored). The per-element update is the registry's ``element`` of the algorithm
(kernels/nadam.py, kernels/radam.py), the very function the float32 loop
(loop.update) inlines, after loop.update's gradient scale and weight decay in the same
order: every element is computed in float32 from the decoded state with the float32
kernel's arithmetic. The step's scalars are loop.step_scalars' (float64, rounded once).

NAdam's group scalar ``mu_product`` is passed in (``gs``, float64) and not advanced by
the kernels: a group's parameters all see the value before the step, and the caller
advances it once per group with :func:`advance_group` (loop.advance, as the float32
launchers do).

bfloat16 parameters and 8-bit state are not provided here (docs/low_precision.md).
"""
from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit, prange

from ..config import BLOCK, JIT_OPTIONS
from .adam_lowp import STATE_Q8, load_state, store_state
from .loop import advance, prelude, step_scalars
from .registry import ALGORITHMS, alg_consts, alg_element
from .spec import N_SCALARS, S_GRAD_SCALE, S_WD, WD_DECOUPLED

#: The algorithms these kernels serve.
NAMES = ("nadam", "radam")
_NADAM_ID = ALGORITHMS["nadam"].id


@njit(inline="always", **JIT_OPTIONS)
def plain_loop(alg, p, g, m, v, sc, state_kind, wd_mode, scale_grad):
    """loop.update's body for two state rows, with the state decoded and stored."""
    k = alg_consts(alg, sc)
    gs = sc[S_GRAD_SCALE]
    wd = sc[S_WD]
    for i in range(p.shape[0]):
        pi, gi = prelude(p[i], g[i], gs, wd, wd_mode, scale_grad)
        pi, a, b, _ = alg_element(alg, 0, pi, gi, load_state(m, i, state_kind),
                                  load_state(v, i, state_kind), gi, k)
        p[i] = pi
        store_state(m, i, a, state_kind)
        store_state(v, i, b, state_kind)


@njit(**JIT_OPTIONS)
def _advance_nadam(h, t, gs):
    advance(_NADAM_ID, h, t, gs)


def advance_group(name, h, t, gs):
    """Advance a group's scalars ``gs`` (float64 row, in place) past step t, as the
    float32 launchers do (NAdam: mu_product *= mu_t; RAdam has none)."""
    if name == "nadam":
        _advance_nadam(h, t, gs)


@cache
def build(name, state_kind, wd_mode, scale_grad):
    """(serial, parallel) kernels ``k(p, g, m, v, h, t, gs)`` for one algorithm and
    layout. p, g: float32; m, v: float32 or uint16 (bfloat16 bits); h: float64
    hyperparameter row, t: the step (>= 1), gs: float64 group scalars (read only)."""
    from .launch import SOURCE_HASH
    if name not in NAMES:
        raise ValueError(f"no low-precision kernel for {name!r}")
    state_kind, wd_mode, scale_grad = int(state_kind), int(wd_mode), bool(scale_grad)
    if state_kind == STATE_Q8:
        raise ValueError(f"8-bit {name} state is not provided (kernels/nr_lowp.py)")
    alg = ALGORITHMS[name].id
    decoupled = wd_mode == WD_DECOUPLED
    source = SOURCE_HASH      # a closure cell: part of numba's cache key (see launch.py)

    @njit(**JIT_OPTIONS)
    def serial(p, g, m, v, h, t, gs):
        if source < 0:
            return
        sc = np.empty(N_SCALARS, np.float32)
        step_scalars(alg, h, t, gs, decoupled, sc)
        plain_loop(alg, p, g, m, v, sc, state_kind, wd_mode, scale_grad)

    @njit(parallel=True, **JIT_OPTIONS)
    def parallel(p, g, m, v, h, t, gs):
        if source < 0:
            return
        sc = np.empty(N_SCALARS, np.float32)
        step_scalars(alg, h, t, gs, decoupled, sc)
        n = g.shape[0]
        for b in prange((n + BLOCK - 1) // BLOCK):
            lo = b * BLOCK
            hi = min(lo + BLOCK, n)
            plain_loop(alg, p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], sc, state_kind,
                       wd_mode, scale_grad)

    return serial, parallel
