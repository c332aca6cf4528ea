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

* serial kernel (small work): one open-addressing hash table over the k indices chains
  each row's occurrences (first occurrence -> next -> ...); then each distinct row is
  summed along its chain and updated.
* parallel kernel: the indices are bucketed by a hash of the row into ``2**pbits``
  partitions with a stable parallel counting sort (chunks count, prefix sum over
  (partition, chunk), chunks scatter), so each partition lists its positions in
  occurrence order; then one parallel loop over partitions runs the serial routine on
  each. A row lives in exactly one partition and its values are summed in occurrence
  order in both kernels, so results are identical for any thread and partition count.
"""
from __future__ import annotations

import llvmlite.binding as _llvm
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..config import JIT_OPTIONS

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
#: Bytes of a row prefetched (the hardware prefetcher follows longer rows by itself).
PREFETCH_BYTES = 512
_PREFETCH = "llvm.prefetch.p0" if _llvm.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def prefetch_row(typingctx, arr, row, write):
    """Hint the cache lines of the first PREFETCH_BYTES of ``arr[row]`` (2-D C-contiguous
    array) into L1, for writing when the literal ``write`` is True. No effect on results;
    ``row`` must be in range (the address is computed, never dereferenced here)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C"
            and isinstance(row, types.Integer) and isinstance(write, types.BooleanLiteral)):
        return None
    rw = 1 if write.literal_value else 0

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        row = context.cast(builder, args[1], sig.args[1], types.intp)
        width = cgutils.unpack_tuple(builder, ary.shape)[1]
        itemsize = ir.Constant(intp, aryty.dtype.bitwidth // 8)
        i8p = ir.IntType(8).as_pointer()
        base = builder.gep(builder.bitcast(ary.data, i8p),
                           [builder.mul(builder.mul(row, width), itemsize)])
        nbytes = builder.mul(width, itemsize)
        cap = ir.Constant(intp, PREFETCH_BYTES)
        nbytes = builder.select(builder.icmp_signed("<", nbytes, cap), nbytes, cap)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), _PREFETCH)
        with cgutils.for_range_slice(builder, ir.Constant(intp, 0), nbytes,
                                     ir.Constant(intp, 64)) as (off, _):
            builder.call(fn, [builder.gep(base, [off]), ir.Constant(i32, rw),
                              ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, row, write), codegen


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
    """Update the rows listed by positions ``pos`` (into idx / vals2, occurrence order).
    Every occurrence of a row in ``idx`` must be in ``pos`` (the whole index set, or
    one hash partition of it: ``pbits`` top hash bits shared by all of ``pos``)."""
    cnt = pos.shape[0]
    if cnt == 0:
        return
    tbits = 1
    while (1 << tbits) < 2 * cnt:
        tbits += 1
    mask = (1 << tbits) - 1
    table = np.full(1 << tbits, -1, np.int64)    # slot -> entry (distinct row)
    key = np.empty(cnt, np.int64)                # entry -> row
    head = np.empty(cnt, np.int64)               # entry -> first occurrence (local q)
    tail = np.empty(cnt, np.int64)               # entry -> last occurrence so far
    nxt = np.empty(cnt, np.int64)                # occurrence -> next occurrence, or -1
    sh1 = np.uint64(pbits)
    sh2 = np.uint64(64 - tbits)
    ne = 0
    for q in range(cnt):
        r = idx[pos[q]]
        nxt[q] = -1
        s = np.int64((_hash(r) << sh1) >> sh2)
        while True:
            e = table[s]
            if e < 0:
                table[s] = ne
                key[ne] = r
                head[ne] = q
                tail[ne] = q
                ne += 1
                break
            if key[e] == r:
                nxt[tail[e]] = q
                tail[e] = q
                break
            s = (s + 1) & mask
    # Rows seen once (most of them) go to one branch-free loop, rows with duplicates to
    # a second one (a branch on the duplicates inside the hot loop costs ~10%).
    rows1 = np.empty(ne, np.int64)               # row seen once -> its row
    at1 = np.empty(ne, np.int64)                 # and the position of its value row
    rows2 = np.empty(ne, np.int64)               # row with duplicates -> row
    head2 = np.empty(ne, np.int64)               # and its first occurrence (local q)
    n1 = 0
    n2 = 0
    for e in range(ne):
        q = head[e]
        if nxt[q] < 0:
            rows1[n1] = key[e]
            at1[n1] = pos[q]
            n1 += 1
        else:
            rows2[n2] = key[e]
            head2[n2] = q
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
    acc = np.empty(p2.shape[1], p2.dtype)
    for e in range(min(PREFETCH_DISTANCE, n2)):
        _prefetch(p2, m2, v2, vals2, rows2[e], pos[head2[e]])
    for e in range(n2):
        if e + PREFETCH_DISTANCE < n2:
            f = e + PREFETCH_DISTANCE
            _prefetch(p2, m2, v2, vals2, rows2[f], pos[head2[f]])
        q = head2[e]
        g = vals2[pos[q]]
        for d in range(acc.shape[0]):
            acc[d] = g[d]
        q = nxt[q]
        while q >= 0:                            # occurrence order: a fixed sum
            g = vals2[pos[q]]
            for d in range(acc.shape[0]):
                acc[d] += g[d]
            q = nxt[q]
        r = rows2[e]
        _row_update(p2[r], acc, m2[r], v2[r], sc)


@njit(**JIT_OPTIONS)
def sparse_adam_serial(p2, idx, vals2, m2, v2, sc):
    coalesce_update(p2, idx, vals2, m2, v2, np.arange(idx.shape[0]), sc, 0)


@njit(parallel=True, **JIT_OPTIONS)
def sparse_adam_parallel(p2, idx, vals2, m2, v2, sc, pbits):
    """``2**pbits`` partitions (pbits >= 1) and as many index chunks."""
    k = idx.shape[0]
    n_part = 1 << pbits
    csize = (k + n_part - 1) // n_part
    counts = np.zeros((n_part, n_part), np.int64)    # [chunk, partition]
    part = np.empty(k, np.int64)
    sh = np.uint64(64 - pbits)
    for c in prange(n_part):
        lo = c * csize
        hi = min(lo + csize, k)
        for j in range(lo, hi):
            b = np.int64(_hash(idx[j]) >> sh)
            part[j] = b
            counts[c, b] += 1
    offs = np.empty((n_part, n_part), np.int64)
    starts = np.empty(n_part + 1, np.int64)
    t = 0
    for b in range(n_part):
        starts[b] = t
        for c in range(n_part):
            offs[c, b] = t
            t += counts[c, b]
    starts[n_part] = t
    order = np.empty(k, np.int64)
    for c in prange(n_part):
        lo = c * csize
        hi = min(lo + csize, k)
        for j in range(lo, hi):
            b = part[j]
            order[offs[c, b]] = j
            offs[c, b] += 1
    for b in prange(n_part):
        coalesce_update(p2, idx, vals2, m2, v2, order[starts[b]:starts[b + 1]], sc, pbits)


@njit(**JIT_OPTIONS)
def first_bad_index(idx, n_rows):
    """Position of the first index outside [0, n_rows), or -1."""
    for j in range(idx.shape[0]):
        r = idx[j]
        if r < 0 or r >= n_rows:
            return j
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


# ----------------------------------------------------------------------------- floor
@njit(inline="always", **JIT_OPTIONS)
def _touch(p, g, m, v):
    for d in range(p.shape[0]):
        gi = g[d]
        p[d] += gi
        m[d] += gi
        v[d] += gi


@njit(inline="always", **JIT_OPTIONS)
def _floor_range(p2, idx, vals2, m2, v2, lo, hi):
    # Prefetched like the update (same distance), so the ratio compares arithmetic and
    # coalescing, not prefetching.
    for j in range(lo, min(lo + PREFETCH_DISTANCE, hi)):
        _prefetch(p2, m2, v2, vals2, idx[j], j)
    for j in range(lo, hi):
        if j + PREFETCH_DISTANCE < hi:
            _prefetch(p2, m2, v2, vals2, idx[j + PREFETCH_DISTANCE], j + PREFETCH_DISTANCE)
        r = idx[j]
        _touch(p2[r], vals2[j], m2[r], v2[r])


@njit(parallel=True, **JIT_OPTIONS)
def sparse_floor_parallel(p2, idx, vals2, m2, v2, n_chunks):
    """Benchmark yardstick: read each value row, read and write the touched rows of p, m,
    v, with trivial arithmetic (duplicate rows are touched once per occurrence; a
    duplicate split across chunks may race, which a yardstick does not mind)."""
    k = idx.shape[0]
    csize = (k + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        lo = c * csize
        hi = min(lo + csize, k)
        _floor_range(p2, idx, vals2, m2, v2, lo, hi)


@njit(**JIT_OPTIONS)
def sparse_floor_serial(p2, idx, vals2, m2, v2):
    _floor_range(p2, idx, vals2, m2, v2, 0, idx.shape[0])
