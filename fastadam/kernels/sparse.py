"""Sparse (lazy) Adam: coalesce duplicate row indices and update only the touched rows of
the parameter and both moments, in one pass over those rows (= torch.optim.SparseAdam).

Arrays are 2-D views: ``p2, m2, v2`` of shape ``(n_rows, dim)``, ``vals2`` ``(k, dim)``
with one gradient row per index of ``idx`` ``(k,)``. Indices are trusted here (the caller
checks ``0 <= idx < n_rows`` before any kernel runs). Per touched row, with g the sum of
the values of every occurrence of the row *in occurrence order* (then negated if
maximize; ``gsign`` is -1 or +1), the element update is PyTorch's own arithmetic::

    mu = (g - m) * (1 - b1);       m = m + mu
    vu = (g * g - v) * (1 - b2);   v = v + vu
    p  = p + neg_step_size * (m / (sqrt(v) + eps))

with ``neg_step_size = -lr * sqrt(1 - b2**t) / (1 - b1**t)`` (eps not bias-corrected:
the paper's "epsilon hat" form), scalars rounded once to the buffers' dtype.

Coalescing never copies the values and has no serial pass over them:

* serial kernel (small work): an open-addressing hash table over the k indices gives
  each distinct row an entry. Rows seen once (usually most) are updated straight from
  their value row in one branch-free loop; rows seen several times get an accumulator
  row, filled by streaming their value rows forward (so each row is summed in
  occurrence order), then updated from it. Only duplicated rows' sums are stored.
* parallel kernel: the occurrences are counted per hash bucket (``2**bbits``
  buckets; integers only), the buckets are grouped into one chunk per thread holding
  about equal numbers of occurrences (so a Zipf law's hot row, hundreds of occurrences
  in one bucket, does not leave the other threads idle), and one parallel loop lets
  each thread pick its chunk's positions out of the indices (in occurrence order) and
  run the serial routine on them.

A row lives in exactly one bucket and its values are summed in occurrence order in
both kernels, so results are identical for any thread, bucket and chunk count.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import _checks as C
from ..config import JIT_OPTIONS
from .prefetch import prefetch_row
from .spec import Algorithm, Option
from .sparse_checks import first_bad_index

#: Indices of the scalars row ``sc`` (dtype of the buffers).
OMB1, OMB2, EPS, NEG_STEP_SIZE, GSIGN = range(5)
N_SCALARS = 5

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)   # Fibonacci hashing: top bits are well mixed


@njit(inline="always", **JIT_OPTIONS)
def _hash(r):
    return np.uint64(r) * _GOLDEN


#: Rows are prefetched this many distinct rows ahead of the one being updated: a row
#: update has little arithmetic per byte, so without prefetching the core waits on one
#: row's cache misses at a time (random rows defeat the hardware prefetcher).
PREFETCH_DISTANCE = 4
#: The same for the value rows summed into the accumulators of duplicated rows (little
#: work per row: look further ahead).
ACC_PREFETCH_DISTANCE = 16

@njit(inline="always", **JIT_OPTIONS)
def _prefetch(p2, m2, v2, vals2, r, j):
    prefetch_row(p2, r, True)
    prefetch_row(m2, r, True)
    prefetch_row(v2, r, True)
    prefetch_row(vals2, j, False)


@njit(inline="always", **JIT_OPTIONS)
def _row_update(p, g, m, v, sc):
    # Looped from 0 over equal-length rows so LLVM vectorises it (see kernels/adam.py).
    omb1 = sc[OMB1]
    omb2 = sc[OMB2]
    eps = sc[EPS]
    nss = sc[NEG_STEP_SIZE]
    gsign = sc[GSIGN]
    for d in range(p.shape[0]):
        gi = g[d] * gsign
        mo = m[d]
        mn = mo + (gi - mo) * omb1
        vo = v[d]
        vn = vo + (gi * gi - vo) * omb2
        m[d] = mn
        v[d] = vn
        p[d] = p[d] + nss * (mn / (np.sqrt(vn) + eps))


@njit(**JIT_OPTIONS)
def coalesce_update(p2, idx, vals2, m2, v2, pos, sc, pbits):
    """Update the rows listed by positions ``pos`` (into idx / vals2; each row's
    occurrences in increasing order). Every occurrence of a row in ``idx`` must be in
    ``pos`` (the whole index set, or some hash buckets of it: the table slots use the
    hash bits below the top ``pbits``, which pick the bucket)."""
    cnt = pos.shape[0]
    if cnt == 0:
        return
    # 1. Hash the rows: entry e per distinct row, in order of first occurrence.
    tbits = 1
    while (1 << tbits) < 2 * cnt:
        tbits += 1
    mask = (1 << tbits) - 1
    table = np.full(1 << tbits, -1, np.int64)    # slot -> entry
    key = np.empty(cnt, np.int64)                # entry -> row
    first = np.empty(cnt, np.int64)              # entry -> position of its first value
    count = np.zeros(cnt, np.int64)              # entry -> occurrences
    ent = np.empty(cnt, np.int64)                # occurrence q -> entry
    sh1 = np.uint64(pbits)
    sh2 = np.uint64(64 - tbits)
    ne = 0
    for q in range(cnt):
        r = idx[pos[q]]
        s = np.int64((_hash(r) << sh1) >> sh2)
        while True:
            e = table[s]
            if e < 0:
                e = ne
                table[s] = e
                key[e] = r
                first[e] = pos[q]
                ne += 1
                break
            if key[e] == r:
                break
            s = (s + 1) & mask
        ent[q] = e
        count[e] += 1
    # 2. Rows seen once (usually most): one branch-free, prefetched loop.
    rows1 = np.empty(ne, np.int64)
    at1 = np.empty(ne, np.int64)
    slot = np.empty(ne, np.int64)                # entry -> accumulator row, or -1
    n1 = 0
    n2 = 0
    for e in range(ne):
        if count[e] == 1:
            rows1[n1] = key[e]
            at1[n1] = first[e]
            n1 += 1
            slot[e] = -1
        else:
            slot[e] = n2
            n2 += 1
    for e in range(min(PREFETCH_DISTANCE, n1)):
        _prefetch(p2, m2, v2, vals2, rows1[e], at1[e])
    for e in range(n1):
        if e + PREFETCH_DISTANCE < n1:
            f = e + PREFETCH_DISTANCE
            _prefetch(p2, m2, v2, vals2, rows1[f], at1[f])
        r = rows1[e]
        _row_update(p2[r], vals2[at1[e]], m2[r], v2[r], sc)
    if n2 == 0:
        return
    # 3. Rows with duplicates: sum their value rows into accumulators, streaming the
    #    values forward (each row's sum in occurrence order: a fixed result), then update.
    dim = p2.shape[1]
    acc = np.empty((n2, dim), p2.dtype)
    dq = np.empty(cnt, np.int64)                 # occurrences of duplicated rows, in order
    nd = 0
    for q in range(cnt):
        if slot[ent[q]] >= 0:
            dq[nd] = q
            nd += 1
    for i in range(nd):
        if i + ACC_PREFETCH_DISTANCE < nd:
            prefetch_row(vals2, pos[dq[i + ACC_PREFETCH_DISTANCE]], False)
        q = dq[i]
        e = ent[q]
        a = acc[slot[e]]
        g = vals2[pos[q]]
        if pos[q] == first[e]:
            for d in range(dim):
                a[d] = g[d]
        else:
            for d in range(dim):
                a[d] += g[d]
    rows2 = np.empty(n2, np.int64)
    for e in range(ne):
        if slot[e] >= 0:
            rows2[slot[e]] = key[e]
    for e in range(min(PREFETCH_DISTANCE, n2)):
        _prefetch(p2, m2, v2, acc, rows2[e], e)
    for e in range(n2):
        if e + PREFETCH_DISTANCE < n2:
            f = e + PREFETCH_DISTANCE
            _prefetch(p2, m2, v2, acc, rows2[f], f)
        r = rows2[e]
        _row_update(p2[r], acc[e], m2[r], v2[r], sc)


@njit(**JIT_OPTIONS)
def sparse_adam_serial(p2, idx, vals2, m2, v2, sc):
    """Serial step. Returns -1, or the position of the first index outside
    [0, n_rows) with nothing written (the bounds check is part of the call: one
    dispatch per step)."""
    bad = first_bad_index(idx, p2.shape[0])
    if bad >= 0:
        return bad
    coalesce_update(p2, idx, vals2, m2, v2, np.arange(idx.shape[0]), sc, 0)
    return -1


@njit(**JIT_OPTIONS)
def work_cuts(start, n_chunks):
    """Split the buckets (``start`` as from bucket_counts) into ``n_chunks``
    contiguous runs holding about equal numbers of occurrences (value rows to read, the
    bulk of a duplicated row's work): chunk c is buckets ``cut[c]:cut[c + 1]``. A hot
    row's bucket weighs its occurrences, so it no longer drags the partition that holds
    it (an index-range or hash split gives every chunk an equal share of rows instead)."""
    nb = start.shape[0] - 1
    k = start[nb]
    cut = np.empty(n_chunks + 1, np.int64)
    cut[0] = 0
    b = 0
    for c in range(1, n_chunks):
        target = (k * c + n_chunks // 2) // n_chunks
        # the first bucket boundary at or past the target, or the one just before it
        # when that is closer
        while b < nb and start[b] < target:
            b += 1
        if b > cut[c - 1] and target - start[b - 1] < start[b] - target:
            b -= 1
        cut[c] = max(b, cut[c - 1])
    cut[n_chunks] = nb
    return cut


@njit(**JIT_OPTIONS)
def bucket_counts(idx, n_rows, bbits):
    """One pass over the indices, the bounds check included: (the position of the
    first index outside [0, n_rows), or -1; ``start`` (2**bbits + 1,), where bucket b
    holds ``start[b + 1] - start[b]`` occurrences). A row's bucket is the top ``bbits``
    (>= 1) bits of its hash, so all its occurrences fall in one bucket."""
    nb = 1 << bbits
    sh = np.uint64(64 - bbits)
    start = np.zeros(nb + 1, np.int64)
    for j in range(idx.shape[0]):
        r = idx[j]
        if r < 0 or r >= n_rows:
            return j, start
        start[np.int64(_hash(r) >> sh) + 1] += 1
    for b in range(nb):
        start[b + 1] += start[b]
    return -1, start


@njit(**JIT_OPTIONS)
def chunk_of_buckets(idx, b_lo, b_hi, bbits, n):
    """The positions of the ``n`` occurrences whose hash bucket is in [b_lo, b_hi), in
    increasing order: a branch-free scan of all the indices, which each thread of the
    parallel kernel runs for its own chunk (k cheap integer steps per thread instead of
    a serial scatter of every position before the threads start)."""
    sh = np.uint64(64 - bbits)
    pos = np.empty(n + 1, np.int64)
    c = 0
    for j in range(idx.shape[0]):
        b = np.int64(_hash(idx[j]) >> sh)
        pos[c] = j
        c += (b >= b_lo) & (b < b_hi)
    return pos[:n]


@njit(parallel=True, **JIT_OPTIONS)
def sparse_adam_parallel(p2, idx, vals2, m2, v2, sc, bbits, n_chunks):
    """Parallel step over ``n_chunks`` chunks of rows, balanced by work. One serial pass
    counts the occurrences per hash bucket (``2**bbits`` buckets; bucket_counts, which
    also checks the bounds); consecutive buckets are grouped into chunks of about
    k / n_chunks occurrences each (work_cuts); then one parallel loop lets each chunk
    collect its positions (chunk_of_buckets, in occurrence order, so its value rows are
    read forward) and coalesce and update its own rows (every occurrence of a row is in
    its bucket, so no two chunks touch a row). One fork/join per step. The bucket and
    chunk counts change only who does the work: each row is still summed in occurrence
    order, so the result is bit-identical for any ``bbits``, ``n_chunks`` and thread
    count. Returns -1, or the position of the first index outside [0, n_rows) with
    nothing written."""
    bad, start = bucket_counts(idx, p2.shape[0], bbits)
    if bad >= 0:
        return bad
    cut = work_cuts(start, n_chunks)
    for c in prange(n_chunks):
        n = start[cut[c + 1]] - start[cut[c]]
        if n > 0:
            pos = chunk_of_buckets(idx, cut[c], cut[c + 1], bbits, n)
            coalesce_update(p2, idx, vals2, m2, v2, pos, sc, bbits)
    return -1


# ---------------------------------------------------------------- the registry entry
def reference(param, indices, values, state, step, hp):
    """Slow float64 SparseAdam step (numpy), in place on ``state``: duplicate indices
    summed, only the touched rows of param, exp_avg and exp_avg_sq change (the eps is not
    bias-corrected, as in torch.optim.SparseAdam). Returns the new parameter."""
    p = param.astype(np.float64)
    shape = p.shape
    p2 = p.reshape(shape[0], -1)
    vals = np.asarray(values, np.float64).reshape(len(indices), p2.shape[1])
    rows = np.unique(indices)
    g = np.zeros((rows.size, p2.shape[1]))
    np.add.at(g, np.searchsorted(rows, indices), vals)
    if hp["maximize"]:
        g = -g
    b1, b2 = hp["betas"]
    m = state["exp_avg"].reshape(p2.shape)
    v = state["exp_avg_sq"].reshape(p2.shape)
    m[rows] = b1 * m[rows] + (1.0 - b1) * g
    v[rows] = b2 * v[rows] + (1.0 - b2) * g * g
    step_size = hp["lr"] * np.sqrt(1.0 - b2 ** step) / (1.0 - b1 ** step)
    p2[rows] -= step_size * m[rows] / (np.sqrt(v[rows]) + hp["eps"])
    return p2.reshape(shape)


SPARSE_ADAM = Algorithm(
    name="sparse_adam",
    options=(Option("betas", (0.9, 0.999), C.check_betas),
             Option("eps", 1e-8, C.check_eps)),
    state=("exp_avg", "exp_avg_sq"),
    n_state=lambda g: 2, variant=lambda g: 0, decoupled=lambda g: False,
    hyper=lambda g: (g["betas"][0], g["betas"][1], g["eps"]),
    reference=reference, layout="rows", shared=("lr", "maximize"),
    doc="SparseAdam = torch.optim.SparseAdam (lazy Adam on the touched rows)")

ALGORITHMS = (SPARSE_ADAM,)


def __getattr__(name):
    # The benchmark floor kernels live in sparse_floor.py (which imports this module);
    # read here as before: kernels.sparse.sparse_floor_serial / sparse_floor_parallel.
    if name in ("sparse_floor_serial", "sparse_floor_parallel"):
        from . import sparse_floor
        return getattr(sparse_floor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
