"""Per-group gradient norms for clipping and the non-finite policy: float64 sums of
squares in a fixed block order, so the result is the same for any thread count."""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..config import BLOCK, JIT_OPTIONS
from .memory import GROUP, address_as_pointer, grad_address


@njit(nogil=True, cache=True, error_model="numpy", boundscheck=False,
      fastmath={"reassoc", "contract"})
def _sumsq(g):
    # Accumulated in float64; reassoc lets LLVM vectorise the reduction. The order is
    # fixed by the compiled code, so the result does not depend on threads.
    s = 0.0
    for i in range(g.shape[0]):
        x = np.float64(g[i])
        s += x * x
    return s


# numba caches these functions keyed on this file only, with memory.grad_address (and
# unsafe.item_ref, which it inlines) compiled in: edit this file too when they change.
@njit(**JIT_OPTIONS)
def _block_sumsq(plan, blocks, b, grefs, g_mode, like):
    k = blocks[b, 0]
    lo = blocks[b, 1]
    n = blocks[b, 2] - lo
    a = grad_address(plan, k, grefs, g_mode) + lo * like.itemsize
    return _sumsq(numba.carray(address_as_pointer(a, like), n))


@njit(**JIT_OPTIONS)
def _group_totals(plan, blocks, partial, out):
    for b in range(blocks.shape[0]):   # block order: deterministic for any thread count
        out[plan[blocks[b, 0], GROUP]] += partial[b]


@njit(**JIT_OPTIONS)
def grad_sumsq_serial(plan, grefs, g_mode, blocks, like, out):
    """Add each group's sum of squared gradients (float64) into ``out[group]``."""
    partial = np.empty(blocks.shape[0])
    for b in range(blocks.shape[0]):
        partial[b] = _block_sumsq(plan, blocks, b, grefs, g_mode, like)
    _group_totals(plan, blocks, partial, out)


@njit(parallel=True, **JIT_OPTIONS)
def grad_sumsq_parallel(plan, grefs, g_mode, blocks, like, out):
    partial = np.empty(blocks.shape[0])
    for b in prange(blocks.shape[0]):
        partial[b] = _block_sumsq(plan, blocks, b, grefs, g_mode, like)
    _group_totals(plan, blocks, partial, out)


def split_blocks(length):
    """(n_blocks x 3) int64 table (chunk, start, stop) covering every chunk in pieces of
    at most BLOCK elements: the parallel work split."""
    rows = []
    for k, n in enumerate(np.asarray(length).tolist()):
        for lo in range(0, n, BLOCK):
            rows.append((k, lo, min(lo + BLOCK, n)))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)
