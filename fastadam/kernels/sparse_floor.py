"""SparseAdam's benchmark floor: the bytes of a sparse step (every value row read once,
each touched row of p, m, v read and written once) with trivial arithmetic, prefetched
as the update is (kernels/sparse.py), so ``fastadam bench --sparse`` compares the
arithmetic and the coalescing, not the memory traffic. Benchmark-only."""
from __future__ import annotations

from numba import njit, prange

from ..config import JIT_OPTIONS
from .floor import _touch
from .sparse import PREFETCH_DISTANCE, _prefetch


@njit(inline="always", **JIT_OPTIONS)
def _floor_range(p2, rows, vals2, m2, v2, acc, lo, hi):
    # Value row j is read; for j < len(rows), row rows[j] of p, m, v is read and written
    # with it. Prefetched like the update (same distance), so the ratio compares the
    # arithmetic and the coalescing, not the prefetching.
    top = min(hi, rows.shape[0])
    for j in range(lo, min(lo + PREFETCH_DISTANCE, top)):
        _prefetch(p2, m2, v2, vals2, rows[j], j)
    for j in range(lo, top):
        if j + PREFETCH_DISTANCE < top:
            _prefetch(p2, m2, v2, vals2, rows[j + PREFETCH_DISTANCE], j + PREFETCH_DISTANCE)
        r = rows[j]
        _touch(p2[r], vals2[j], m2[r], v2[r])
    for j in range(max(lo, top), hi):          # the remaining (duplicates') value rows
        g = vals2[j]
        for d in range(acc.shape[0]):
            acc[d] += g[d]


@njit(parallel=True, **JIT_OPTIONS)
def sparse_floor_parallel(p2, rows, vals2, m2, v2, acc2):
    """Benchmark yardstick for a step with gradient ``vals2`` (k rows) touching the
    distinct rows ``rows``: reads every value row once and reads and writes each touched
    row of p, m, v once, with trivial arithmetic; ``acc2`` (n_chunks, dim) receives the
    value rows beyond len(rows) (so that their reads are not optimised away). Chunks of
    value rows run in parallel."""
    k = vals2.shape[0]
    n_chunks = acc2.shape[0]
    csize = (k + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        lo = c * csize
        hi = min(lo + csize, k)
        _floor_range(p2, rows, vals2, m2, v2, acc2[c], lo, hi)


@njit(**JIT_OPTIONS)
def sparse_floor_serial(p2, rows, vals2, m2, v2, acc2):
    _floor_range(p2, rows, vals2, m2, v2, acc2[0], 0, vals2.shape[0])
