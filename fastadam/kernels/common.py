"""What every algorithm's kernels share: table layouts, the step's scalars, memory
overlap checks, the gradient-norm reduction, and the launchers (flat buffers and chunk
tables, serial and parallel) built around an algorithm's element update.

An algorithm module supplies ``update(p, g, m, v, vmax, pbar, sc)``: one pass over
equal-length 1-D arrays, reading its constants from the scalars row ``sc``.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..config import BLOCK, JIT_OPTIONS
from ._pointers import ARRAY_DATA_OFFSET, address_as_pointer, load_int64

WD_NONE, WD_L2, WD_DECOUPLED = 0, 1, 2

# Hyperparameters, one float64 row per param group. The kernels turn them into the
# step's scalars, so Python does no per-step arithmetic. H_GRAD_SCALE is -1 for maximize
# (else 1); H_CLIP_COEF is this step's clipping factor (1 when not clipping).
(H_LR, H_BETA1, H_BETA2, H_EPS, H_WEIGHT_DECAY, H_GRAD_SCALE, H_AVERAGE,
 H_BIAS_CORRECTION, H_EPS_HAT, H_CLIP_COEF) = range(10)
N_HYPER = 10

# The step's scalars in the buffer dtype, as the update loops read them.
B1, OMB1, B2, OMB2, STEP_SIZE, EPS_EFF, WD, GRAD_SCALE, AVG_B, OMAVG_B = range(10)
N_SCALARS = 10

# Columns of the chunk plan of the table kernels; rows of the state block.
P_ADDR, G_REF, LENGTH, OFFSET, GROUP = range(5)
M_ROW, V_ROW, VMAX_ROW = 0, 1, 2          # the parameter average is always the last row

ARRAY_NAMES = ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "param_avg")


def hyper_row(*, lr, beta1, beta2, eps, weight_decay, bias_correction=True,
              eps_mode="paper", maximize=False, average=0.0):
    """The float64 hyperparameter row (H_* layout) the kernels read."""
    return (lr, beta1, beta2, eps, weight_decay, -1.0 if maximize else 1.0, average,
            1.0 if bias_correction else 0.0, 1.0 if eps_mode == "hat" else 0.0, 1.0)


@njit(**JIT_OPTIONS)
def step_scalars(h, t, decoupled, adamax, out):
    """Write step t's scalars (float64 math, rounded once to out's dtype) into ``out``.

    bc1 = 1 - b1**t, bc2 = 1 - b2**t from the integer step with pow (no running product,
    so no drift over long runs). Adam: step_size = lr*sqrt(bc2)/bc1 and eps_eff =
    eps*sqrt(bc2) ("paper") or eps ("hat"). AdaMax: step_size = lr/bc1, eps_eff = eps."""
    lr = h[H_LR]
    b1 = h[H_BETA1]
    b2 = h[H_BETA2]
    eps = h[H_EPS]
    bc1 = 1.0
    bc2_sqrt = 1.0
    if h[H_BIAS_CORRECTION] != 0.0:
        tf = float(t)
        bc1 = 1.0 - b1 ** tf
        if not adamax:
            bc2_sqrt = np.sqrt(1.0 - b2 ** tf)
    out[B1] = b1
    out[OMB1] = 1.0 - b1
    out[B2] = b2
    out[OMB2] = 1.0 - b2
    out[STEP_SIZE] = lr * bc2_sqrt / bc1
    out[EPS_EFF] = eps if (adamax or h[H_EPS_HAT] != 0.0) else eps * bc2_sqrt
    out[WD] = 1.0 - lr * h[H_WEIGHT_DECAY] if decoupled else h[H_WEIGHT_DECAY]
    out[GRAD_SCALE] = h[H_GRAD_SCALE] * h[H_CLIP_COEF]
    out[AVG_B] = h[H_AVERAGE]
    out[OMAVG_B] = 1.0 - h[H_AVERAGE]


@njit(**JIT_OPTIONS)
def _grad_address(plan, k, g_from_object):
    a = plan[k, G_REF]
    if g_from_object:
        a = load_int64(a + ARRAY_DATA_OFFSET)
    return a


@njit(**JIT_OPTIONS)
def first_alias(plan, g_from_object, forbid, itemsize):
    """-1, or the first chunk whose gradient overlaps one of the sorted, disjoint
    [start, stop) byte ranges in ``forbid`` (parameters and state)."""
    if forbid.shape[0] == 0:
        return -1
    for k in range(plan.shape[0]):
        n = plan[k, LENGTH]
        if n == 0:
            continue
        a = _grad_address(plan, k, g_from_object)
        b = a + n * itemsize
        j = np.searchsorted(forbid[:, 0], b) - 1   # last range starting before b
        if j >= 0 and forbid[j, 1] > a:
            return k
    return -1


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


# ---------------------------------------------------------------- gradient norms
@njit(nogil=True, cache=True, error_model="numpy", boundscheck=False,
      fastmath={"reassoc", "contract"})
def _sumsq(g):
    # Sum of squares accumulated in float64; reassoc lets LLVM vectorise the reduction.
    # The order is fixed by the compiled code, so the result does not depend on threads.
    s = 0.0
    for i in range(g.shape[0]):
        x = np.float64(g[i])
        s += x * x
    return s


@njit(**JIT_OPTIONS)
def _block_sumsq(plan, blocks, b, g_from_object, like):
    k = blocks[b, 0]
    lo = blocks[b, 1]
    n = blocks[b, 2] - lo
    a = _grad_address(plan, k, g_from_object) + lo * like.itemsize
    return _sumsq(numba.carray(address_as_pointer(a, like), n))


@njit(**JIT_OPTIONS)
def _group_totals(plan, blocks, partial, out):
    for b in range(blocks.shape[0]):   # block order: deterministic for any thread count
        out[plan[blocks[b, 0], GROUP]] += partial[b]


@njit(**JIT_OPTIONS)
def grad_sumsq_serial(plan, g_from_object, blocks, like, out):
    """Add each group's sum of squared gradients (float64) into ``out[group]``."""
    partial = np.empty(blocks.shape[0])
    for b in range(blocks.shape[0]):
        partial[b] = _block_sumsq(plan, blocks, b, g_from_object, like)
    _group_totals(plan, blocks, partial, out)


@njit(parallel=True, **JIT_OPTIONS)
def grad_sumsq_parallel(plan, g_from_object, blocks, like, out):
    partial = np.empty(blocks.shape[0])
    for b in prange(blocks.shape[0]):
        partial[b] = _block_sumsq(plan, blocks, b, g_from_object, like)
    _group_totals(plan, blocks, partial, out)


def split_blocks(length):
    """(n_blocks x 3) int64 table (chunk, start, stop) covering every chunk in pieces of
    at most BLOCK elements: the parallel work split."""
    rows = []
    for k, n in enumerate(np.asarray(length).tolist()):
        for lo in range(0, n, BLOCK):
            rows.append((k, lo, min(lo + BLOCK, n)))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


# ---------------------------------------------------------------- launchers
def build_launchers(update, decoupled, amsgrad, average, adamax):
    """(flat_serial, flat_parallel, table_serial, table_parallel) around ``update``.

    flat_*(p, g, m, v, vmax, pbar, h, t) -> int: step t on equal-length 1-D arrays with
    hyperparameter row ``h`` (float64, H_* layout); vmax / pbar are only touched when
    amsgrad / average (pass empty arrays of the dtype otherwise). Returns -1, or
    first_overlap's code having written nothing.

    table_*(plan, g_from_object, blocks, forbid, state, hyper, steps, sc, bump) -> int:
    chunk k of ``plan`` (int64, columns P_ADDR, G_REF, LENGTH, OFFSET, GROUP) is LENGTH
    elements at data address P_ADDR, its gradient at G_REF (a data address or, with
    ``g_from_object``, the address of the ndarray object, see ARRAY_DATA_OFFSET), its
    state at OFFSET in the rows of ``state``; its group's hyperparameters are
    hyper[GROUP] and its step steps[GROUP] + 1. ``sc`` (groups x N_SCALARS, buffer dtype)
    is scratch. ``blocks`` is the parallel split. ``bump`` increments every group's step
    at the end. Returns -1, or the first chunk whose gradient overlaps a ``forbid`` byte
    range, having written nothing.
    """

    @njit(**JIT_OPTIONS)
    def flat_serial(p, g, m, v, vmax, pbar, h, t):
        bad = first_overlap(p, g, m, v, vmax, pbar)
        if bad >= 0:
            return bad
        sc = np.empty(N_SCALARS, p.dtype)
        step_scalars(h, t, decoupled, adamax, sc)
        update(p, g, m, v, vmax, pbar, sc)
        return -1

    @njit(parallel=True, **JIT_OPTIONS)
    def flat_parallel(p, g, m, v, vmax, pbar, h, t):
        bad = first_overlap(p, g, m, v, vmax, pbar)
        if bad >= 0:
            return bad
        sc = np.empty(N_SCALARS, p.dtype)
        step_scalars(h, t, decoupled, adamax, sc)
        n = p.shape[0]
        for b in prange((n + BLOCK - 1) // BLOCK):
            lo = b * BLOCK
            hi = min(lo + BLOCK, n)
            update(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi],
                   vmax[lo:hi] if amsgrad else vmax[:0],
                   pbar[lo:hi] if average else pbar[:0], sc)
        return -1

    @njit(**JIT_OPTIONS)
    def _chunk(plan, k, lo, hi, g_from_object, state, sc):
        n = hi - lo
        m = state[M_ROW]
        item = m.itemsize
        p = numba.carray(address_as_pointer(plan[k, P_ADDR] + lo * item, m), n)
        g = numba.carray(address_as_pointer(_grad_address(plan, k, g_from_object)
                                            + lo * item, m), n)
        s = plan[k, OFFSET] + lo
        e = s + n
        update(p, g, m[s:e], state[V_ROW, s:e], state[VMAX_ROW, s:e] if amsgrad else m[:0],
               state[state.shape[0] - 1, s:e] if average else m[:0], sc[plan[k, GROUP]])

    @njit(**JIT_OPTIONS)
    def _prepare(plan, g_from_object, forbid, state, hyper, steps, sc):
        bad = first_alias(plan, g_from_object, forbid, state.itemsize)
        if bad < 0:
            for gi in range(hyper.shape[0]):
                step_scalars(hyper[gi], steps[gi] + 1, decoupled, adamax, sc[gi])
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
