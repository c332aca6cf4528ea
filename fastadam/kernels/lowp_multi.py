"""One launch over many separate arrays for the low-precision Adam / AdamW kernels.

:func:`adam_lowp.build` steps one flat parameter per launch. A model of many tensors
(``fastadam.torch`` with bfloat16 / float16 parameters, many NumPy arrays) would pay a
launch and its Python around it per tensor; the kernels here step all arrays that share
a layout in one launch, through a table of their data addresses (``ndarray.ctypes.data``
of arrays the caller keeps alive for the call, as the float32 multi-array launchers do).

Table (int64, one row per work item of at most ``config.BLOCK`` elements of one array,
starting on a multiple of ``BLOCK`` inside it, hence on a quantization-block boundary):
the addresses of the array's parameter, gradient, moments, master copy, compensation
buffer and int8 scales (0 where the layout has none), the array's length, the item's
``[lo, hi)``, and its group. Each group has its float64 hyperparameter row (Adam's
layout, ``kernels/spec.py``), its step and its stochastic-rounding key. Every item runs
``adam_lowp.segment_plain`` / ``segment_q8`` on its array exactly as a launch on that array alone would (the
same scalars, element indices, quantization blocks and rounding bits), so the results
equal one :func:`fastadam.lowp.adam_step_lowp` call per array bit for bit, for any
thread count.
"""
from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np
from numba import njit, prange

from ..config import BLOCK, JIT_OPTIONS
from .adam_lowp import (N_LOWP_SCALARS, PARAM_F32, PMODE_KAHAN, PMODE_MASTER, STATE_BF16,
                        STATE_F32, STATE_Q8, WDM1, _ADAM_ID, lowp_scalars,
                        segment_plain, segment_q8)
from .memory import pointer_of
from .q8 import Q8_BLOCK
from .spec import H_WEIGHT_DECAY, N_SCALARS, S_WD, WD_L2

# Columns of the table.
T_P, T_G, T_M, T_V, T_W, T_C, T_MS, T_VS, T_N, T_LO, T_HI, T_GROUP = range(12)
T_COLUMNS = 12


@njit(inline="always", **JIT_OPTIONS)
def _group_scalars(h, steps, l2):
    """float32 scalars row of every group (adam_lowp.lowp_scalars, L2 decay patched in)."""
    out = np.empty((h.shape[0], N_LOWP_SCALARS), np.float32)
    for gi in range(h.shape[0]):
        sc = lowp_scalars(h[gi], steps[gi])
        if l2:
            sc[S_WD] = h[gi, H_WEIGHT_DECAY]
        out[gi, :N_SCALARS] = sc[:N_SCALARS]
        out[gi, WDM1] = sc[WDM1]
    return out


@lru_cache(maxsize=None)
def build_multi(param_kind, state_kind, pmode, wd_mode, scale_grad):
    """(serial, parallel) kernels ``k(table, h, steps, keys)`` for one layout (the
    arguments of :func:`adam_lowp.build`): h float64 (groups x N_HYPER), steps int64 and
    keys int64 (stochastic-rounding keys, lowp.sr_key) per group."""
    from .launch import SOURCE_HASH
    param_kind, state_kind, pmode, wd_mode = (int(param_kind), int(state_kind), int(pmode),
                                              int(wd_mode))
    scale_grad = bool(scale_grad)
    l2 = wd_mode == WD_L2
    source = SOURCE_HASH      # a closure cell: part of numba's cache key (see launch.py)
    P = np.float32 if param_kind == PARAM_F32 else np.uint16
    M = {STATE_F32: np.float32, STATE_BF16: np.uint16, STATE_Q8: np.int8}[state_kind]
    V = np.uint8 if state_kind == STATE_Q8 else M
    q8 = state_kind == STATE_Q8
    master = pmode == PMODE_MASTER and param_kind != PARAM_F32
    kahan = pmode == PMODE_KAHAN and param_kind != PARAM_F32

    @njit(inline="always", **JIT_OPTIONS)
    def item(table, k, sc, keys):
        n = table[k, T_N]
        nb = (n + Q8_BLOCK - 1) // Q8_BLOCK if q8 else 0
        p = numba.carray(pointer_of(table[k, T_P], P), n)
        g = numba.carray(pointer_of(table[k, T_G], P), n)
        m = numba.carray(pointer_of(table[k, T_M], M), n)
        v = numba.carray(pointer_of(table[k, T_V], V), n)
        w = numba.carray(pointer_of(table[k, T_W], np.float32), n if master else 0)
        c = numba.carray(pointer_of(table[k, T_C], np.uint16), n if kahan else 0)
        ms = numba.carray(pointer_of(table[k, T_MS], np.float32), nb)
        vs = numba.carray(pointer_of(table[k, T_VS], np.float32), nb)
        gi = table[k, T_GROUP]
        lo, hi = table[k, T_LO], table[k, T_HI]
        if q8:            # a closure constant: only one loop is compiled (see adam_lowp)
            segment_q8(_ADAM_ID, p, g, m, v, w, c, ms, vs, sc[gi], keys[gi], lo, hi,
                       param_kind, state_kind, pmode, wd_mode, scale_grad)
        else:
            segment_plain(_ADAM_ID, p, g, m, v, w, c, ms, vs, sc[gi], keys[gi], lo, hi,
                          param_kind, state_kind, pmode, wd_mode, scale_grad)

    @njit(**JIT_OPTIONS)
    def serial(table, h, steps, keys):
        if source < 0:
            return
        sc = _group_scalars(h, steps, l2)
        for k in range(table.shape[0]):
            item(table, k, sc, keys)

    @njit(parallel=True, **JIT_OPTIONS)
    def parallel(table, h, steps, keys):
        if source < 0:
            return
        sc = _group_scalars(h, steps, l2)
        for k in prange(table.shape[0]):
            item(table, k, sc, keys)

    return serial, parallel


def table_rows(n):
    """The work items ``[(lo, hi), ...]`` of an array of ``n`` elements."""
    return [(lo, min(lo + BLOCK, n)) for lo in range(0, n, BLOCK)]
