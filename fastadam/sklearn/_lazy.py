"""Lazy (sparse) Adam for the first weight layer of the estimators on sparse input.

With ``sparse_updates="lazy"`` a minibatch steps only the first-layer weight rows of the
features that have a nonzero value in the minibatch; the other rows, their moments and
their L2 term are left alone (see docs/sparse.md, "Estimators on sparse input"). The
work per minibatch is O(nnz * fan_out): nothing here reads or writes all n_features.

``Wf`` is an (n_features, fan_out) view of the weight (a transposed, strided view for the
linear models, whose ``coef_`` is (n_outputs, n_features)); numba indexes it directly, so
no weight is copied. The two moments are interleaved in one (n_features, fan_out, 2)
array ``MV`` (exp_avg, exp_avg_sq): the rows a minibatch touches are scattered over the
table, and one cache line for both moments instead of two is measurably faster.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .. import config


class CSRBatch:
    """The rows of a minibatch as bare CSR arrays (what the lazy path reads); building a
    scipy matrix per minibatch costs more than the minibatch's arithmetic."""

    __slots__ = ("indptr", "indices", "data", "shape")

    def __init__(self, indptr, indices, data, n_features):
        self.indptr, self.indices, self.data = indptr, indices, data
        self.shape = (indptr.shape[0] - 1, n_features)


@numba.njit(**config.JIT_OPTIONS)
def _take_rows(indptr, indices, data, rows):
    n = rows.shape[0]
    out_ptr = np.empty(n + 1, indptr.dtype)
    out_ptr[0] = 0
    for i in range(n):
        r = rows[i]
        out_ptr[i + 1] = out_ptr[i] + indptr[r + 1] - indptr[r]
    nnz = out_ptr[n]
    out_ind = np.empty(nnz, indices.dtype)
    out_dat = np.empty(nnz, data.dtype)
    for i in range(n):
        r = rows[i]
        q = out_ptr[i]
        for p in range(indptr[r], indptr[r + 1]):
            out_ind[q] = indices[p]
            out_dat[q] = data[p]
            q += 1
    return out_ptr, out_ind, out_dat


def take_rows(X, rows, _unused=None):
    """The rows ``rows`` of the CSR matrix X as a :class:`CSRBatch` (O(their nnz))."""
    return CSRBatch(*_take_rows(X.indptr, X.indices, X.data, rows), X.shape[1])


@numba.njit(**config.JIT_OPTIONS)
def csr_forward(indptr, indices, data, Wf, Z):
    """Z = X @ Wf for a CSR minibatch X (indptr, indices, data) and Wf (n_features, k);
    reads only the rows of Wf that X references. Z (n, k) is overwritten."""
    n, k = Z.shape
    for i in range(n):
        for o in range(k):
            Z[i, o] = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            x = data[p]
            j = indices[p]
            for o in range(k):
                Z[i, o] += x * Wf[j, o]


@numba.njit(inline="always", **config.JIT_OPTIONS)
def _update_touched(Wf, MV, G, touched, nt, keys, hpos, reg, lr_t, beta1, beta2, eps, k):
    # The lazy Adam step of the nt touched rows (row touched[s] has gradient G[s] + reg *
    # its weight; k = Wf.shape[1]); clears their hash slots. Returns the change of
    # sum(Wf**2).
    dsq = 0.0
    if k == 1:              # (binary models: no loop over the outputs)
        for s in range(nt):
            j = touched[s]
            keys[hpos[s]] = -1
            w = np.float64(Wf[j, 0])
            g = G[s, 0] + reg * w
            MV[j, 0, 0] = beta1 * MV[j, 0, 0] + (1.0 - beta1) * g
            MV[j, 0, 1] = beta2 * MV[j, 0, 1] + (1.0 - beta2) * (g * g)
            Wf[j, 0] = w - lr_t * (np.float64(MV[j, 0, 0]) / (math.sqrt(MV[j, 0, 1]) + eps))
            w1 = np.float64(Wf[j, 0])
            dsq += w1 * w1 - w * w
        return dsq
    for s in range(nt):
        j = touched[s]
        keys[hpos[s]] = -1
        dsq += update_row(Wf, MV, G, s, j, reg, lr_t, beta1, beta2, eps, k)
    return dsq


@numba.njit(inline="always", **config.JIT_OPTIONS)
def update_row(Wf, MV, G, s, j, reg, lr_t, beta1, beta2, eps, k):
    # The lazy Adam step of row j of Wf (gradient G[s] + reg * Wf[j]); returns the
    # change of its sum of squares.
    dsq = 0.0
    for o in range(k):
        w = np.float64(Wf[j, o])
        g = G[s, o] + reg * w
        m = beta1 * MV[j, o, 0] + (1.0 - beta1) * g
        v = beta2 * MV[j, o, 1] + (1.0 - beta2) * (g * g)
        MV[j, o, 0] = m
        MV[j, o, 1] = v
        Wf[j, o] = w - lr_t * (np.float64(MV[j, o, 0]) / (math.sqrt(MV[j, o, 1]) + eps))
        w1 = np.float64(Wf[j, o])
        dsq += w1 * w1 - w * w
    return dsq


@numba.njit(inline="always", **config.JIT_OPTIONS)
def slot_of(j, keys, slots, touched, hpos, G, nt, mask):
    """The minibatch slot of feature j in the open-addressing hash table ``keys``
    (``mask`` = its size - 1) and the number of slots after it: a new feature gets slot
    nt (recorded in ``touched``/``hpos``, its gradient row G[nt] zeroed)."""
    h = (j * 2654435761) & mask
    while True:
        kj = keys[h]
        if kj == j:
            return slots[h], nt
        if kj < 0:
            keys[h] = j
            slots[h] = nt
            touched[nt] = j
            hpos[nt] = h
            for o in range(G.shape[1]):
                G[nt, o] = 0.0
            return nt, nt + 1
        h = (h + 1) & mask


@numba.njit(**config.JIT_OPTIONS)
def lazy_adam_step(indptr, indices, data, D, Wf, MV, reg, lr_t, beta1, beta2, eps, keys,
                   slots, touched, hpos, G):
    """One lazy Adam step of the weight Wf from a CSR minibatch X and the output-side
    delta D (n, k) of the layer: the gradient of row j is G_j = sum_i X[i, j] D[i, :]
    + reg * Wf[j, :] for every feature j with a nonzero value in X; those rows (and only
    those) get, with the step's ``lr_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)``
    (M_j, V_j = MV[j, :, 0], MV[j, :, 1]):

        M_j = beta1 M_j + (1 - beta1) G_j;   V_j = beta2 V_j + (1 - beta2) G_j**2
        Wf_j -= lr_t * M_j / (sqrt(V_j) + eps)

    G is accumulated in float64. The batch's distinct features are found with an
    open-addressing hash table of ~2 * nnz slots (it stays in cache; a feature-indexed
    marker array would cost a random memory access per nonzero). The scratch arrays come
    from :class:`Scratch` (allocating them per call cost page faults every minibatch):
    ``keys`` (power of two >= 2 nnz, all -1 on entry and again on return), ``slots``
    like it, ``touched``/``hpos`` (>= nnz) and ``G`` (>= nnz, k) float64. Returns the
    change of sum(Wf**2) (float64), for the L2 term of the reported loss."""
    n, k = D.shape
    mask = keys.shape[0] - 1
    nt = 0
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            x = data[p]
            if x == 0:
                continue
            s, nt = slot_of(np.int64(indices[p]), keys, slots, touched, hpos, G, nt, mask)
            for o in range(k):
                G[s, o] += x * D[i, o]
    return _update_touched(Wf, MV, G, touched, nt, keys, hpos, reg, lr_t, beta1, beta2, eps,
                           k)


class Scratch:
    """The lazy step's scratch arrays, grown (doubling) to the largest minibatch nnz."""

    def __init__(self, k):
        self.k = k
        self.nnz = -1

    def get(self, nnz):
        if nnz > self.nnz:
            n = max(16, 2 * nnz)
            cap = 16
            while cap < 2 * n:
                cap *= 2
            self.keys = np.full(cap, -1, np.int64)
            self.slots = np.empty(cap, np.int32)
            self.touched = np.empty(n, np.int64)
            self.hpos = np.empty(n, np.int64)
            self.G = np.empty((n, self.k), np.float64)
            self.nnz = n
        return self.keys, self.slots, self.touched, self.hpos, self.G

    def get_epoch(self, nnz):
        """The whole-epoch loop's scratch: ``touched``, ``G`` and the per-nonzero
        arrays (slot, value, row), for minibatches of up to nnz nonzeros."""
        _, _, touched, _, G = self.get(nnz)
        if getattr(self, "q_n", -1) < self.nnz:
            self.q_slot = np.empty(self.nnz, np.int32)
            self.q_x = np.empty(self.nnz, np.float64)
            self.q_row = np.empty(self.nnz, np.int32)
            self.q_n = self.nnz
        return touched, G, self.q_slot, self.q_x, self.q_row

    def get_batch(self, nnz):
        """The MLP minibatch path's scratch (``_lazy_mlp.batch_forward``): the hash
        table's and the per-nonzero arrays, for a minibatch of up to nnz nonzeros."""
        self.get_epoch(nnz)
        return (self.keys, self.slots, self.touched, self.hpos, self.G, self.q_slot,
                self.q_x, self.q_row)


def step_lr(lr, beta1, beta2, t):
    """The bias-corrected step size of step t (epsilon-hat form, as the dense path)."""
    return float(lr) * math.sqrt(1.0 - float(beta2) ** t) / (1.0 - float(beta1) ** t)
