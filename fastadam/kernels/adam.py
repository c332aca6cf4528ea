"""Fused Adam / AdamW / AMSGrad kernels on flat 1-D buffers.

One pass per step: read p, g, m, v (and vmax, pbar when used) once, write them once.
The update implemented, with scalars precomputed in float64 by the caller and cast to
the buffer dtype (see :func:`scalars`)::

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

from functools import lru_cache

import numba
import numpy as np
from numba import njit, prange

from ..config import BLOCK, JIT_OPTIONS
from ._pointers import ARRAY_DATA_OFFSET, address_as_pointer, load_int64

WD_NONE, WD_L2, WD_DECOUPLED = 0, 1, 2

# Layout of the per-group scalars row (buffer dtype), shared by every kernel.
B1, OMB1, B2, OMB2, STEP_SIZE, EPS_EFF, WD, GRAD_SCALE, AVG_B, OMAVG_B = range(10)
N_SCALARS = 10

# Columns of the chunk plan of the table kernels, and the row of vmax in the state.
P_ADDR, G_REF, LENGTH, OFFSET, GROUP = range(5)
VMAX_ROW = 2


def scalars(*, step, lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction,
            eps_mode, grad_scale=1.0, average=0.0):
    """The per-step scalars in float64, in the row layout the kernels read."""
    if bias_correction:
        bc1 = 1.0 - beta1 ** step
        bc2_sqrt = (1.0 - beta2 ** step) ** 0.5
    else:
        bc1 = bc2_sqrt = 1.0
    step_size = lr * bc2_sqrt / bc1
    eps_eff = eps * bc2_sqrt if eps_mode == "paper" else eps
    wd = 1.0 - lr * weight_decay if decoupled else weight_decay
    return (beta1, 1.0 - beta1, beta2, 1.0 - beta2, step_size, eps_eff, wd, grad_scale,
            average, 1.0 - average)


def kernel_key(*, weight_decay_mode, amsgrad, scale_grad, average):
    return (int(weight_decay_mode), bool(amsgrad), bool(scale_grad), bool(average))


@njit(**JIT_OPTIONS)
def first_alias(plan, g_from_object, forbid, itemsize):
    # forbid: sorted, disjoint [start, stop) byte ranges (params and state). Returns
    # the first chunk whose gradient overlaps one, or -1. Runs before any write.
    if forbid.shape[0] == 0:
        return -1
    for k in range(plan.shape[0]):
        n = plan[k, LENGTH]
        if n == 0:
            continue
        a = plan[k, G_REF]
        if g_from_object:
            a = load_int64(a + ARRAY_DATA_OFFSET)
        b = a + n * itemsize
        j = np.searchsorted(forbid[:, 0], b) - 1   # last range starting before b
        if j >= 0 and forbid[j, 1] > a:
            return k
    return -1


@lru_cache(maxsize=None)
def make_kernels(wd_mode, amsgrad, scale_grad, average):
    """(flat_serial, flat_parallel, table_serial, table_parallel) for one flag set.

    flat_*(p, g, m, v, vmax, pbar, sc): equal-length 1-D arrays; vmax / pbar are only
    touched when amsgrad / average (pass any array of the dtype otherwise).

    table_*(plan, g_from_object, blocks, forbid, state, sc) -> int: ``plan`` (int64,
    n_chunks x 5, columns P_ADDR, G_REF, LENGTH, OFFSET, GROUP): chunk k is LENGTH
    elements at data address P_ADDR, gradient at G_REF (a data address, or with
    ``g_from_object`` the address of the ndarray object, see ARRAY_DATA_OFFSET), state at
    OFFSET in the rows of ``state`` (m, v[, vmax][, pbar]) and scalars row sc[GROUP].
    ``blocks`` (n_blocks x 3: chunk, start, stop) is the parallel split. Returns -1, or
    the first chunk whose gradient overlaps a ``forbid`` byte range, having written
    nothing.
    """

    @njit(**JIT_OPTIONS)
    def update(p, g, m, v, vmax, pbar, sc):
        # Arrays of equal length, looped from 0: LLVM then proves indices non-negative
        # and vectorises (a range(lo, hi) loop keeps wraparound checks and runs 8x slower).
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
                vi = vi if (vi > vm or vi != vi) else vm
                vmax[i] = vi
            pi = pi - step_size * (mi / (np.sqrt(vi) + eps))
            p[i] = pi
            if average:
                pbar[i] = ab * pbar[i] + omab * pi

    @njit(**JIT_OPTIONS)
    def flat_serial(p, g, m, v, vmax, pbar, sc):
        update(p, g, m, v, vmax, pbar, sc)

    @njit(parallel=True, **JIT_OPTIONS)
    def flat_parallel(p, g, m, v, vmax, pbar, sc):
        n = p.shape[0]
        nb = (n + BLOCK - 1) // BLOCK
        for b in prange(nb):
            lo = b * BLOCK
            hi = min(lo + BLOCK, n)
            update(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], vmax[lo:hi] if amsgrad else vmax[:0],
                   pbar[lo:hi] if average else pbar[:0], sc)

    @njit(**JIT_OPTIONS)
    def _chunk(plan, k, lo, hi, g_from_object, state, sc):
        n = hi - lo
        m = state[0]
        item = m.itemsize
        g_addr = plan[k, G_REF]
        if g_from_object:
            g_addr = load_int64(g_addr + ARRAY_DATA_OFFSET)
        p = numba.carray(address_as_pointer(plan[k, P_ADDR] + lo * item, m), n)
        g = numba.carray(address_as_pointer(g_addr + lo * item, m), n)
        s = plan[k, OFFSET] + lo
        e = s + n
        update(p, g, m[s:e], state[1, s:e], state[VMAX_ROW, s:e] if amsgrad else m[:0],
               state[state.shape[0] - 1, s:e] if average else m[:0], sc[plan[k, GROUP]])

    @njit(**JIT_OPTIONS)
    def table_serial(plan, g_from_object, blocks, forbid, state, sc):
        bad = first_alias(plan, g_from_object, forbid, state.itemsize)
        if bad >= 0:
            return bad
        for k in range(plan.shape[0]):
            _chunk(plan, k, 0, plan[k, LENGTH], g_from_object, state, sc)
        return -1

    @njit(parallel=True, **JIT_OPTIONS)
    def table_parallel(plan, g_from_object, blocks, forbid, state, sc):
        bad = first_alias(plan, g_from_object, forbid, state.itemsize)
        if bad >= 0:
            return bad
        for b in prange(blocks.shape[0]):
            _chunk(plan, blocks[b, 0], blocks[b, 1], blocks[b, 2], g_from_object, state, sc)
        return -1

    return flat_serial, flat_parallel, table_serial, table_parallel


def split_blocks(length):
    """(n_blocks x 3) int64 table (chunk, start, stop) covering every chunk in pieces of
    at most BLOCK elements, for the parallel table kernels."""
    rows = []
    for k, n in enumerate(np.asarray(length).tolist()):
        for lo in range(0, n, BLOCK):
            rows.append((k, lo, min(lo + BLOCK, n)))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)
