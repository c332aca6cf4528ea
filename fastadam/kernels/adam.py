"""Fused Adam / AdamW / AMSGrad kernels on flat 1-D buffers.

One pass per step: read p, g, m, v (and vmax, pbar when used) once, write them once.
The update implemented, with the step's scalars computed once in float64 and rounded to
the buffer dtype (see :func:`step_scalars`)::

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

# Hyperparameters, one float64 row per param group (the kernels turn them into the step's
# scalars, so Python does no per-step arithmetic).
H_LR, H_BETA1, H_BETA2, H_EPS, H_WEIGHT_DECAY, H_GRAD_SCALE, H_AVERAGE, H_BIAS_CORRECTION, \
    H_EPS_HAT = range(9)
N_HYPER = 9

# The step's scalars in the buffer dtype, as the update loop reads them.
B1, OMB1, B2, OMB2, STEP_SIZE, EPS_EFF, WD, GRAD_SCALE, AVG_B, OMAVG_B = range(10)
N_SCALARS = 10

# Columns of the chunk plan of the table kernels, and the row of vmax in the state.
P_ADDR, G_REF, LENGTH, OFFSET, GROUP = range(5)
VMAX_ROW = 2


def hyper_row(*, lr, beta1, beta2, eps, weight_decay, bias_correction=True,
              eps_mode="paper", grad_scale=1.0, average=0.0):
    """The float64 hyperparameter row (H_* layout) the kernels read."""
    return (lr, beta1, beta2, eps, weight_decay, grad_scale, average,
            1.0 if bias_correction else 0.0, 1.0 if eps_mode == "hat" else 0.0)


def kernel_key(*, weight_decay_mode, amsgrad, scale_grad, average):
    return (int(weight_decay_mode), bool(amsgrad), bool(scale_grad), bool(average))


@njit(**JIT_OPTIONS)
def step_scalars(h, t, decoupled, out):
    """Write step t's scalars (float64 math, rounded once to out's dtype) into ``out``.

    bc1 = 1 - b1**t and bc2 = 1 - b2**t from the integer step (pow, not a running
    product, so no drift over long runs)."""
    lr = h[H_LR]
    b1 = h[H_BETA1]
    b2 = h[H_BETA2]
    if h[H_BIAS_CORRECTION] != 0.0:
        tf = float(t)
        bc1 = 1.0 - b1 ** tf
        bc2_sqrt = np.sqrt(1.0 - b2 ** tf)
    else:
        bc1 = 1.0
        bc2_sqrt = 1.0
    eps = h[H_EPS]
    out[B1] = b1
    out[OMB1] = 1.0 - b1
    out[B2] = b2
    out[OMB2] = 1.0 - b2
    out[STEP_SIZE] = lr * bc2_sqrt / bc1
    out[EPS_EFF] = eps if h[H_EPS_HAT] != 0.0 else eps * bc2_sqrt
    out[WD] = 1.0 - lr * h[H_WEIGHT_DECAY] if decoupled else h[H_WEIGHT_DECAY]
    out[GRAD_SCALE] = h[H_GRAD_SCALE]
    out[AVG_B] = h[H_AVERAGE]
    out[OMAVG_B] = 1.0 - h[H_AVERAGE]


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


ARRAY_NAMES = ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "param_avg")


@njit(**JIT_OPTIONS)
def _span(a):
    return a.ctypes.data, a.ctypes.data + a.size * a.itemsize


@njit(**JIT_OPTIONS)
def first_overlap(p, g, m, v, vmax, pbar):
    """-1, or i * 6 + j for the first pair (i < j, ARRAY_NAMES order) of non-empty
    arrays whose memory overlaps."""
    lo = np.empty(6, np.int64)
    hi = np.empty(6, np.int64)
    lo[0], hi[0] = _span(p)
    lo[1], hi[1] = _span(g)
    lo[2], hi[2] = _span(m)
    lo[3], hi[3] = _span(v)
    lo[4], hi[4] = _span(vmax)
    lo[5], hi[5] = _span(pbar)
    for i in range(6):
        for j in range(i + 1, 6):
            if lo[i] < hi[i] and lo[j] < hi[j] and lo[i] < hi[j] and lo[j] < hi[i]:
                return i * 6 + j
    return -1


@lru_cache(maxsize=None)
def make_kernels(wd_mode, amsgrad, scale_grad, average):
    """(flat_serial, flat_parallel, table_serial, table_parallel) for one flag set.

    flat_*(p, g, m, v, vmax, pbar, h, t) -> int: one step t on equal-length 1-D arrays
    with hyperparameter row ``h`` (float64, H_* layout); vmax / pbar are only touched when
    amsgrad / average (pass an empty array of the dtype otherwise). Returns -1, or
    first_overlap's code having written nothing.

    table_*(plan, g_from_object, blocks, forbid, state, hyper, steps, sc, bump) -> int:
    ``plan`` (int64, n_chunks x 5, columns P_ADDR, G_REF, LENGTH, OFFSET, GROUP): chunk k
    is LENGTH elements at data address P_ADDR, its gradient at G_REF (a data address, or
    with ``g_from_object`` the address of the ndarray object, see ARRAY_DATA_OFFSET), its
    state at OFFSET in the rows of ``state`` (m, v[, vmax][, pbar]); its group is GROUP:
    hyperparameters ``hyper[GROUP]`` (float64), step ``steps[GROUP] + 1``. ``sc`` (groups
    x N_SCALARS, buffer dtype) is scratch for the step's scalars. ``blocks`` (n_blocks x
    3: chunk, start, stop) is the parallel split. With ``bump`` every group's step is
    incremented at the end. Returns -1, or the first chunk whose gradient overlaps a
    ``forbid`` byte range, having written nothing.
    """
    decoupled = wd_mode == WD_DECOUPLED

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
                vi = vi if (vi > vm or vi != vi) else vm   # NaN-propagating max
                vmax[i] = vi
            pi = pi - step_size * (mi / (np.sqrt(vi) + eps))
            p[i] = pi
            if average:
                pbar[i] = ab * pbar[i] + omab * pi

    @njit(**JIT_OPTIONS)
    def flat_serial(p, g, m, v, vmax, pbar, h, t):
        bad = first_overlap(p, g, m, v, vmax, pbar)
        if bad >= 0:
            return bad
        sc = np.empty(N_SCALARS, p.dtype)
        step_scalars(h, t, decoupled, sc)
        update(p, g, m, v, vmax, pbar, sc)
        return -1

    @njit(parallel=True, **JIT_OPTIONS)
    def flat_parallel(p, g, m, v, vmax, pbar, h, t):
        bad = first_overlap(p, g, m, v, vmax, pbar)
        if bad >= 0:
            return bad
        sc = np.empty(N_SCALARS, p.dtype)
        step_scalars(h, t, decoupled, sc)
        n = p.shape[0]
        nb = (n + BLOCK - 1) // BLOCK
        for b in prange(nb):
            lo = b * BLOCK
            hi = min(lo + BLOCK, n)
            update(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi],
                   vmax[lo:hi] if amsgrad else vmax[:0],
                   pbar[lo:hi] if average else pbar[:0], sc)
        return -1

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
    def _prepare(plan, g_from_object, forbid, state, hyper, steps, sc):
        bad = first_alias(plan, g_from_object, forbid, state.itemsize)
        if bad < 0:
            for gi in range(hyper.shape[0]):
                step_scalars(hyper[gi], steps[gi] + 1, decoupled, sc[gi])
        return bad

    @njit(**JIT_OPTIONS)
    def table_serial(plan, g_from_object, blocks, forbid, state, hyper, steps, sc, bump):
        bad = _prepare(plan, g_from_object, forbid, state, hyper, steps, sc)
        if bad >= 0:
            return bad
        for k in range(plan.shape[0]):
            _chunk(plan, k, 0, plan[k, LENGTH], g_from_object, state, sc)
        if bump:
            steps += 1
        return -1

    @njit(parallel=True, **JIT_OPTIONS)
    def table_parallel(plan, g_from_object, blocks, forbid, state, hyper, steps, sc, bump):
        bad = _prepare(plan, g_from_object, forbid, state, hyper, steps, sc)
        if bad >= 0:
            return bad
        for b in prange(blocks.shape[0]):
            _chunk(plan, blocks[b, 0], blocks[b, 1], blocks[b, 2], g_from_object, state, sc)
        if bump:
            steps += 1
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
