"""The compiled epoch of the lazy linear models (``AdamClassifier``, ``AdamRegressor``
with ``sparse_updates="lazy"``): one compiled loop per epoch on a fit-time table that
keeps each present feature's weights, moments and slot marker side by side (see
docs/sparse.md, "Estimators on sparse input"). The minibatch-by-minibatch path and the
shared scratch are in ``_lazy.py``."""
from __future__ import annotations

import math

import numba
import numpy as np

from .. import config
from ..kernels.prefetch import prefetch_row, prefetch_span
from ._kernels import output_loss_delta


def table_row(k):
    """Elements per feature of the fit-time table of a k-output linear model (one row
    per feature present in the data, see compact_columns): the k
    weights, k exp_avg, k exp_avg_sq and a slot marker, padded so that a feature's
    row is one aligned block (4 elements for k = 1: two features per 64-byte line, a
    feature never split across two)."""
    n = 3 * k + 1
    return 4 if n <= 4 else 8 * ((n + 7) // 8)


def new_table(n_features, k, dtype):
    """An uninitialised (n_features, table_row(k)) array of ``dtype`` starting on a
    64-byte boundary (so no feature's row straddles two cache lines)."""
    dtype = np.dtype(dtype)
    width = table_row(k)
    extra = 64 // dtype.itemsize
    buf = np.empty(n_features * width + extra, dtype)
    off = (-buf.ctypes.data % 64) // dtype.itemsize
    return buf[off:off + n_features * width].reshape(n_features, width)


def marker_view(T):
    """``T`` viewed as integers of its itemsize (the slot marker column 3 k)."""
    return T.view(np.int64 if T.dtype.itemsize == 8 else np.int32)


@numba.njit(**config.JIT_OPTIONS)
def compact_columns(indices, n_features):
    """The distinct column indices of a CSR matrix (its ``indices``), in increasing
    order (int64), and ``indices`` renumbered to positions in that list (int32). One
    int32 per feature of scratch; the rest is O(nnz)."""
    pos = np.zeros(n_features, np.int32)
    for p in range(indices.shape[0]):
        pos[indices[p]] = 1
    ids = np.empty(min(n_features, indices.shape[0]), np.int64)
    nc = 0
    for j in range(n_features):
        if pos[j]:
            pos[j] = nc
            ids[nc] = j
            nc += 1
    local = np.empty(indices.shape[0], np.int32)
    for p in range(indices.shape[0]):
        local[p] = pos[indices[p]]
    return ids[:nc], local


@numba.njit(**config.JIT_OPTIONS)
def pack_table(Wf, MV, ids, T, Ti):
    """T[c] = (Wf[j, :], MV[j, :, 0], MV[j, :, 1], marker -1) for j = ids[c]."""
    k = Wf.shape[1]
    for c in range(ids.shape[0]):
        j = ids[c]
        for o in range(k):
            T[c, o] = Wf[j, o]
            T[c, k + o] = MV[j, o, 0]
            T[c, 2 * k + o] = MV[j, o, 1]
        Ti[c, 3 * k] = -1


@numba.njit(**config.JIT_OPTIONS)
def unpack_table(T, ids, Wf, MV, moments):
    """Wf[j, :] = T[c, :k] for j = ids[c] (and the moments back into MV when
    ``moments``)."""
    k = Wf.shape[1]
    for c in range(ids.shape[0]):
        j = ids[c]
        for o in range(k):
            Wf[j, o] = T[c, o]
            if moments:
                MV[j, o, 0] = T[c, k + o]
                MV[j, o, 1] = T[c, 2 * k + o]


#: Rows of look-ahead of the compiled epoch's prefetching: the table rows of the
#: features of the row this far ahead are fetched, and the CSR entries (indices, data) of
#: the row twice as far ahead, so that reading that row's indices does not stall.
ROW_PREFETCH = 2


@numba.njit(inline="always", **config.JIT_OPTIONS)
def _prefetch_features(indptr, indices, T, r):
    # the table rows of CSR row r's features
    for p in range(indptr[r], indptr[r + 1]):
        prefetch_row(T, indices[p], True)


@numba.njit(inline="always", **config.JIT_OPTIONS)
def _prefetch_entries(indptr, indices, data, r):
    # the first CSR entries (indices, values) of row r
    prefetch_span(indices, indptr[r], 128)
    prefetch_span(data, indptr[r], 256)


@numba.njit(inline="always", **config.JIT_OPTIONS)
def _prefetch_ahead(indptr, indices, data, T, order, i):
    # while the epoch's row order[i] is processed
    n = order.shape[0]
    if i + ROW_PREFETCH < n:
        _prefetch_features(indptr, indices, T, order[i + ROW_PREFETCH])
    if i + 2 * ROW_PREFETCH < n:
        _prefetch_entries(indptr, indices, data, order[i + 2 * ROW_PREFETCH])


@numba.njit(**config.JIT_OPTIONS)
def lazy_linear_epoch(indptr, indices, data, Y, sw, has_sw, order, batch_size, T, Ti, b,
                      bm, bv, fit_intercept, t, lr, beta1, beta2, eps, alpha, out_kind,
                      huber_delta, lazy_sq, Z, Yb, swb, touched, G, q_slot, q_x, q_row, k):
    """One epoch of a linear model (one weight layer, no hidden layer) with lazy
    updates, in one compiled loop, on the fit-time table ``T`` (see table_row: each
    feature's k weights, k exp_avg, k exp_avg_sq and a slot marker side by side, so a
    touched feature costs one cache line, not one for the weight and one for its
    moments; ``Ti`` is T viewed as integers, for the marker). ``indices`` are the CSR
    matrix's column indices renumbered to rows of T (compact_columns: only the features
    present in the data have a row, so the table is as dense in cache as the data
    allows, whatever n_features). A feature's marker is -1,
    or its slot (0, 1, ...) in the minibatch being processed. Per minibatch of rows
    ``order[start:start + batch_size]`` of the CSR matrix (read in place):

    1. the forward product over the nonzeros; the same pass reads each nonzero's
       feature marker from the line just read for its weight (a new feature gets the
       next slot: no hash table, no probing) and records (slot, value, row) per nonzero
       in ``q_slot``, ``q_x``, ``q_row``; the table rows of the features of the rows
       ahead, and those rows' CSR entries, are prefetched meanwhile (_prefetch_ahead);
    2. the loss and output delta (``output_loss_delta``);
    3. one dense Adam step ("epsilon hat") of the intercept ``b`` with moments ``bm``,
       ``bv``: its gradient is the delta's column sum (0 without ``fit_intercept``, as
       the optimizer steps it then);
    4. the touched rows' gradients, summed from the recorded nonzeros in the order of
       the minibatch path, and their lazy Adam step (as ``lazy_adam_step``), which
       resets their markers to -1.

    The same arithmetic as the minibatch-by-minibatch path (``_loss_grad`` +
    ``_lazy_step``), without its per-minibatch Python work or second pass over the
    rows. ``t``: the step count before the epoch. A minibatch whose sample weights sum
    to 0 is skipped (no step). ``Z``, ``Yb`` (>= batch_size rows) and ``swb`` are
    scratch; ``touched``, ``G`` (rows) and ``q_*`` hold more than the largest
    minibatch's nnz (slot nt is written before it is known to be needed); ``k``: the number of outputs. Every marker is -1 on entry and on
    return. Returns (sum over minibatches of loss * rows, the step count after the
    epoch, the running sum of squares of the weights)."""
    n_all = order.shape[0]
    c = 3 * k
    acc = 0.0
    for i in range(min(2 * ROW_PREFETCH, n_all)):
        _prefetch_entries(indptr, indices, data, order[i])
    for i in range(min(ROW_PREFETCH, n_all)):
        _prefetch_features(indptr, indices, T, order[i])
    for start in range(0, n_all, batch_size):
        stop = min(start + batch_size, n_all)
        n = stop - start
        rows = order[start:stop]
        sw_sum = float(n)
        if has_sw:
            sw_sum = 0.0
            for i in range(n):
                swb[i] = sw[rows[i]]
                sw_sum += swb[i]
            if not sw_sum > 0:
                continue
        D = Z[:n]
        nt = 0
        nq = 0
        for i in range(n):
            r = rows[i]
            _prefetch_ahead(indptr, indices, data, T, order, start + i)
            for o in range(k):
                Yb[i, o] = Y[r, o]
                D[i, o] = 0.0
            for p in range(indptr[r], indptr[r + 1]):
                x = data[p]
                j = np.int64(indices[p])
                if k == 1:          # (binary models: no loop over the outputs)
                    D[i, 0] += x * T[j, 0]
                else:
                    for o in range(k):
                        D[i, o] += x * T[j, o]
                if x == 0:
                    continue
                # branch-free: whether the feature is new in the minibatch is data
                # (a hot feature recurs at random); slot nt's entries are written
                # either way and only kept (nt advances) for a new feature
                s = np.int64(Ti[j, c])
                fresh = s < 0
                s = nt if fresh else s
                Ti[j, c] = s
                touched[nt] = j
                for o in range(k):
                    G[nt, o] = 0.0
                nt += fresh
                q_slot[nq] = s
                q_x[nq] = x
                q_row[nq] = i
                nq += 1
            for o in range(k):
                D[i, o] = D[i, o] + b[o]
        loss = output_loss_delta(D, Yb[:n], swb, has_sw, 1.0 / sw_sum, out_kind,
                                 huber_delta)
        sq = lazy_sq if alpha != 0.0 else 0.0
        acc += (loss + 0.5 * alpha * sq) / sw_sum * n
        t += 1
        tf = np.float64(t)
        lr_t = lr * math.sqrt(1.0 - beta2 ** tf) / (1.0 - beta1 ** tf)
        for o in range(k):
            g = 0.0
            if fit_intercept:
                for i in range(n):
                    g += D[i, o]
            m = beta1 * bm[o] + (1.0 - beta1) * g
            v = beta2 * bv[o] + (1.0 - beta2) * (g * g)
            bm[o] = m
            bv[o] = v
            b[o] = b[o] - lr_t * (np.float64(bm[o]) / (math.sqrt(bv[o]) + eps))
        if k == 1:
            for q in range(nq):
                G[q_slot[q], 0] += q_x[q] * D[q_row[q], 0]
        else:
            for q in range(nq):
                s = q_slot[q]
                x = q_x[q]
                i = q_row[q]
                for o in range(k):
                    G[s, o] += x * D[i, o]
        lazy_sq += _update_table(T, Ti, G, touched, nt, alpha / sw_sum, lr_t, beta1,
                                 beta2, eps, k)
    return acc, t, lazy_sq


@numba.njit(inline="always", **config.JIT_OPTIONS)
def _update_table(T, Ti, G, touched, nt, reg, lr_t, beta1, beta2, eps, k):
    # _update_touched on the table layout (the same arithmetic, the same rounding of the
    # moments to the table's dtype before the weight update); resets the markers.
    c = 3 * k
    dsq = 0.0
    if k == 1:
        for s in range(nt):
            j = touched[s]
            Ti[j, c] = -1
            w = np.float64(T[j, 0])
            g = G[s, 0] + reg * w
            T[j, 1] = beta1 * T[j, 1] + (1.0 - beta1) * g
            T[j, 2] = beta2 * T[j, 2] + (1.0 - beta2) * (g * g)
            T[j, 0] = w - lr_t * (np.float64(T[j, 1]) / (math.sqrt(T[j, 2]) + eps))
            w1 = np.float64(T[j, 0])
            dsq += w1 * w1 - w * w
        return dsq
    for s in range(nt):
        j = touched[s]
        Ti[j, c] = -1
        for o in range(k):
            w = np.float64(T[j, o])
            g = G[s, o] + reg * w
            m = beta1 * T[j, k + o] + (1.0 - beta1) * g
            v = beta2 * T[j, 2 * k + o] + (1.0 - beta2) * (g * g)
            T[j, k + o] = m
            T[j, 2 * k + o] = v
            T[j, o] = w - lr_t * (np.float64(T[j, k + o]) / (math.sqrt(T[j, 2 * k + o])
                                                             + eps))
            w1 = np.float64(T[j, o])
            dsq += w1 * w1 - w * w
    return dsq
