"""The lazy first layer of the MLP estimators (``AdamMLPClassifier``,
``AdamMLPRegressor`` with ``sparse_updates="lazy"``): two compiled calls per minibatch
instead of a gathered copy of the minibatch's CSR rows, a forward product and a step
that finds the touched features again (see docs/sparse.md, "Estimators on sparse
input"). The hidden and output layers stay in NumPy between the two calls.

1. :func:`batch_forward` reads the minibatch's rows of the CSR matrix in place (by row
   number), computes ``Z = X_batch @ W1`` over the nonzeros and, in the same pass, gives
   each feature a slot in the minibatch (the hash table of ``_lazy.lazy_adam_step``) and
   records (slot, value, row) per nonzero;
2. :func:`batch_step`, once the first layer's delta D is known, sums the touched rows'
   gradients ``X_batch.T @ D`` from those records (float64, in the order of
   ``lazy_adam_step``) and steps those rows (``_lazy.update_row``: the same arithmetic,
   the L2 term on the touched rows only), prefetching the rows a few ahead.

The results equal ``take_rows`` + ``csr_forward`` + ``lazy_adam_step`` exactly (tested).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from .. import config
from ..kernels.prefetch import prefetch_item, prefetch_row
from ._lazy import slot_of, update_row
from ._lazy_linear import ROW_PREFETCH, _prefetch_entries


class RowsBatch:
    """A minibatch of the lazy MLP path: the row numbers of the CSR matrix X (read in
    place by :func:`batch_forward`), and after the forward pass the number of touched
    features ``nt`` and recorded nonzeros ``nq`` (the records live in the scratch)."""

    __slots__ = ("X", "nq", "nt", "rows", "shape")

    def __init__(self, X, rows):
        self.X, self.rows = X, rows
        self.shape = (rows.shape[0], X.shape[1])
        self.nt = self.nq = 0

    def nnz(self):
        ptr = self.X.indptr
        return int((ptr[self.rows + 1] - ptr[self.rows]).sum())


def take_batch(X, rows, _unused=None):
    """The rows ``rows`` of the CSR matrix X as a :class:`RowsBatch` (no copy: the
    batch is used before ``rows`` changes)."""
    return RowsBatch(X, rows)


def prefetch_weights(Wf, j, write):
    """Hint the weights of feature j (row j of Wf, (n_features, k)) into L1, for
    writing when the literal ``write`` is True: for a C-contiguous Wf (an MLP's first
    layer) the first bytes of the row (``prefetch_row``), else the line of each
    of its first 8 elements (the transposed ``coef_`` view of a linear model: one line
    per output). Chosen when compiling, by Wf's layout. No effect on results."""


@overload(prefetch_weights, jit_options=config.JIT_OPTIONS)
def _prefetch_weights(Wf, j, write):
    if not isinstance(write, types.BooleanLiteral):
        return None
    if Wf.layout == "C":
        if write.literal_value:
            return lambda Wf, j, write: prefetch_row(Wf, j, True)
        return lambda Wf, j, write: prefetch_row(Wf, j, False)

    if write.literal_value:
        def impl(Wf, j, write):
            for o in range(min(Wf.shape[1], 8)):
                prefetch_item(Wf, j, o, True)
    else:
        def impl(Wf, j, write):
            for o in range(min(Wf.shape[1], 8)):
                prefetch_item(Wf, j, o, False)
    return impl


@numba.njit(**config.JIT_OPTIONS)
def batch_forward(indptr, indices, data, rows, Wf, Z, keys, slots, touched, hpos, G,
                  q_slot, q_x, q_row):
    """Z = X[rows] @ Wf for the CSR matrix X (indptr, indices, data), reading only the
    rows of Wf (n_features, k; any layout) that those rows reference, as
    ``csr_forward`` on ``take_rows(X, rows)``; Z (len(rows), k) is overwritten. Each
    nonzero's feature gets its slot (``slot_of``; ``keys`` all -1 on entry) and
    (slot, value, row) is recorded in ``q_slot``, ``q_x``, ``q_row`` (zero values are
    skipped: they touch no row). The weight rows of the features of the rows ahead
    (and, for fewer than 8 outputs, those rows' CSR entries) are prefetched meanwhile.
    Returns (touched features nt, records nq)."""
    n, k = Z.shape
    mask = keys.shape[0] - 1
    nt = 0
    nq = 0
    # narrow rows (a linear model): as the compiled epoch, the features of the row
    # ROW_PREFETCH ahead and the CSR entries of the row twice as far; wide rows (an
    # MLP's first layer, as measured for it): the features of the next row
    narrow = k < 8
    ahead = ROW_PREFETCH if narrow else 1
    if narrow:
        for i in range(min(2 * ahead, n)):
            _prefetch_entries(indptr, indices, data, rows[i])
        for i in range(min(ahead, n)):
            r1 = rows[i]
            for p in range(indptr[r1], indptr[r1 + 1]):
                prefetch_weights(Wf, indices[p], False)
    for i in range(n):
        r = rows[i]
        if i + ahead < n:
            r1 = rows[i + ahead]
            for p in range(indptr[r1], indptr[r1 + 1]):
                prefetch_weights(Wf, indices[p], False)
        if narrow and i + 2 * ahead < n:
            _prefetch_entries(indptr, indices, data, rows[i + 2 * ahead])
        for o in range(k):
            Z[i, o] = 0.0
        for p in range(indptr[r], indptr[r + 1]):
            x = data[p]
            j = np.int64(indices[p])
            for o in range(k):
                Z[i, o] += x * Wf[j, o]
            if x == 0:
                continue
            s, nt = slot_of(j, keys, slots, touched, hpos, G, nt, mask)
            q_slot[nq] = s
            q_x[nq] = x
            q_row[nq] = i
            nq += 1
    return nt, nq


#: Touched rows of look-ahead of batch_step's prefetching (the weight row and the
#: moments of the feature this far ahead are fetched while a row is updated), for rows
#: of 8 outputs or more (an MLP's first layer) ...
STEP_PREFETCH = 4
#: ... and for narrower ones (a linear model's few outputs: little work per row, so
#: look further ahead).
STEP_PREFETCH_NARROW = 12


@numba.njit(**config.JIT_OPTIONS)
def batch_step(D, Wf, MV, MV2, reg, lr_t, beta1, beta2, eps, keys, touched, hpos, G, nt,
               q_slot, q_x, q_row, nq):
    """The lazy Adam step of the nt features touched by the minibatch of
    :func:`batch_forward` (its records q_*), from the first layer's delta D (n, k):
    G_j = sum X[i, j] D[i, :] (float64, summed in the order of the records, as
    ``lazy_adam_step`` sums) and ``_lazy.update_row`` per touched row (the arithmetic of
    ``lazy_adam_step``: L2 ``reg * W_j`` on those rows only), clearing their hash slots.
    ``MV2`` is MV viewed as (n_features, 2 k), for prefetching: the rows touched
    STEP_PREFETCH ahead (STEP_PREFETCH_NARROW for k < 8) are fetched meanwhile (random
    rows defeat the hardware
    prefetcher; measured ~1.4x on this loop). Returns the change of sum(Wf**2)."""
    k = D.shape[1]
    xs = np.empty(1, D.dtype)   # the value back in the data's dtype (exact): the
    for q in range(nq):         # product rounds as lazy_adam_step's (float32 too)
        s = q_slot[q]
        xs[0] = q_x[q]
        x = xs[0]
        i = q_row[q]
        for o in range(k):
            G[s, o] += x * D[i, o]
    ahead = STEP_PREFETCH if k >= 8 else STEP_PREFETCH_NARROW
    for s in range(min(ahead, nt)):
        prefetch_weights(Wf, touched[s], True)
        prefetch_row(MV2, touched[s], True)
    dsq = 0.0
    for s in range(nt):
        if s + ahead < nt:
            ja = touched[s + ahead]
            prefetch_weights(Wf, ja, True)
            prefetch_row(MV2, ja, True)
        j = touched[s]
        keys[hpos[s]] = -1
        dsq += update_row(Wf, MV, G, s, j, reg, lr_t, beta1, beta2, eps, k)
    return dsq
