"""Lazy (sparse) Adam for the first weight layer of the estimators on sparse input.

With ``sparse_updates="lazy"`` a minibatch steps only the first-layer weight rows of the
features that have a nonzero value in the minibatch; the other rows, their moments and
their L2 term are left alone (see docs/sparse.md, "Estimators on sparse input"). The
work per minibatch is O(nnz * fan_out): nothing here reads or writes all n_features.

``Wf``, ``M`` and ``V`` are (n_features, fan_out) views of the weight and its two moments
(a transposed, strided view for the linear models, whose ``coef_`` is (n_outputs,
n_features)); numba indexes them directly, so no weight is copied.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .. import config


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


@numba.njit(**config.JIT_OPTIONS)
def lazy_adam_step(indptr, indices, data, D, Wf, M, V, mark, reg, lr_t, beta1, beta2,
                   eps):
    """One lazy Adam step of the weight Wf from a CSR minibatch X and the output-side
    delta D (n, k) of the layer: the gradient of row j is G_j = sum_i X[i, j] D[i, :]
    + reg * Wf[j, :] for every feature j with a nonzero value in X; those rows (and only
    those) get, with the step's ``lr_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)``:

        M_j = beta1 M_j + (1 - beta1) G_j;   V_j = beta2 V_j + (1 - beta2) G_j**2
        Wf_j -= lr_t * M_j / (sqrt(V_j) + eps)

    G is accumulated in float64. ``mark`` (n_features,) int64 must be all -1 on entry and
    is all -1 again on return (it maps a feature to its slot while the step runs).
    Returns the change of sum(Wf**2) (float64), for the L2 term of the reported loss."""
    n, k = D.shape
    nnz = indptr[n] - indptr[0]
    touched = np.empty(nnz, np.int64)
    G = np.empty((nnz, k), np.float64)
    nt = 0
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            x = data[p]
            if x == 0:
                continue
            j = indices[p]
            s = mark[j]
            if s < 0:
                s = nt
                mark[j] = s
                touched[nt] = j
                nt += 1
                for o in range(k):
                    G[s, o] = 0.0
            for o in range(k):
                G[s, o] += x * D[i, o]
    dsq = 0.0
    for s in range(nt):
        j = touched[s]
        mark[j] = -1
        for o in range(k):
            w = np.float64(Wf[j, o])
            g = G[s, o] + reg * w
            m = beta1 * M[j, o] + (1.0 - beta1) * g
            v = beta2 * V[j, o] + (1.0 - beta2) * (g * g)
            M[j, o] = m
            V[j, o] = v
            Wf[j, o] = w - lr_t * (np.float64(M[j, o]) / (math.sqrt(V[j, o]) + eps))
            w1 = np.float64(Wf[j, o])
            dsq += w1 * w1 - w * w
    return dsq


def step_lr(lr, beta1, beta2, t):
    """The bias-corrected step size of step t (epsilon-hat form, as the dense path)."""
    return float(lr) * math.sqrt(1.0 - float(beta2) ** t) / (1.0 - float(beta1) ** t)
