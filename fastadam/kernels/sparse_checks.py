"""Checks of sparse (row-indexed) input, compiled: an index out of range, overlapping
memory among the arrays of a functional step, an array overlapping the optimizer's own
buffers, and non-finite values. Used before any sparse kernel writes (fastadam/sparse.py,
fastadam/sparse_optim.py), so a refused step changes nothing."""
from __future__ import annotations

from numba import njit

from ..config import JIT_OPTIONS


@njit(**JIT_OPTIONS)
def first_bad_index(idx, n_rows):
    """Position of the first index outside [0, n_rows), or -1."""
    for j in range(idx.shape[0]):
        r = idx[j]
        if r < 0 or r >= n_rows:
            return j
    return -1


@njit(inline="always", **JIT_OPTIONS)
def _span(a):
    lo = a.ctypes.data
    return lo, lo + a.size * a.itemsize


@njit(inline="always", **JIT_OPTIONS)
def _meets(a, b):
    alo, ahi = _span(a)
    blo, bhi = _span(b)
    return a.size > 0 and b.size > 0 and alo < bhi and blo < ahi


@njit(**JIT_OPTIONS)
def functional_overlap(p, m, v, vals, idx):
    """The first pair of (param, exp_avg, exp_avg_sq, values, indices) whose memory
    overlaps, as 5 * i + j (i < j), or -1 (values and indices may share memory: both
    are only read)."""
    if _meets(p, m):
        return 1
    if _meets(p, v):
        return 2
    if _meets(p, vals):
        return 3
    if _meets(p, idx):
        return 4
    if _meets(m, v):
        return 7
    if _meets(m, vals):
        return 8
    if _meets(m, idx):
        return 9
    if _meets(v, vals):
        return 13
    if _meets(v, idx):
        return 14
    return -1


@njit(**JIT_OPTIONS)
def span_hit(spans, a):
    """Row of ``spans`` (sorted, disjoint [start, stop) byte ranges) that array ``a``'s
    memory overlaps, or -1."""
    if a.size == 0:
        return -1
    lo, hi = _span(a)
    # first span whose stop is > lo
    left, right = 0, spans.shape[0]
    while left < right:
        mid = (left + right) // 2
        if spans[mid, 1] <= lo:
            left = mid + 1
        else:
            right = mid
    if left < spans.shape[0] and spans[left, 0] < hi:
        return left
    return -1


@njit(**JIT_OPTIONS)
def count_nonfinite(bits, exp_mask):
    """How many elements of a float array, viewed as unsigned ints ``bits`` (uint32 for
    float32, uint64 for float64), have an all-ones exponent (NaN or inf). Integer work,
    so the reduction vectorises."""
    bad = 0
    for i in range(bits.shape[0]):
        bad += (bits[i] & exp_mask) == exp_mask
    return bad
