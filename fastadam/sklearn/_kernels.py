"""The numerical pieces of the forward and backward passes: bias + activation, the
output layer's loss and its gradient, and the L2 term, as numba kernels (one pass each
over a batch's activations, where NumPy would need several passes with temporaries)."""
from __future__ import annotations

import numba
import numpy as np

from .. import config

ACT_CODE = {"identity": 0, "relu": 1, "tanh": 2, "logistic": 3}
OUT_CODE = {"identity": 0, "huber": 1, "logistic": 2, "softmax": 3}


@numba.njit(**config.JIT_OPTIONS)
def bias_activate(Z, b, kind):
    """Z = f(Z + b) in place; Z (n, k) C-contiguous, b (k,)."""
    n, k = Z.shape
    for i in range(n):
        for j in range(k):
            z = Z[i, j] + b[j]
            if kind == 1:
                if z < 0:
                    z = 0.0
            elif kind == 2:
                z = np.tanh(z)
            elif kind == 3:
                z = 1.0 / (1.0 + np.exp(-z))
            Z[i, j] = z


@numba.njit(**config.JIT_OPTIONS)
def activation_backward(D, A, kind):
    """D *= f'(z) in place, with f'(z) written through the activation's output A = f(z)."""
    n, k = D.shape
    for i in range(n):
        for j in range(k):
            a = A[i, j]
            if kind == 1:
                if not a > 0:
                    D[i, j] = 0.0
            elif kind == 2:
                D[i, j] *= 1.0 - a * a
            elif kind == 3:
                D[i, j] *= a * (1.0 - a)


@numba.njit(**config.JIT_OPTIONS)
def output_loss_delta(Z, Y, sw, has_sw, scale, kind, huber_delta):
    """From the output pre-activations Z (n, k; overwritten): returns the batch's
    sample-weighted summed loss and leaves in Z the gradient of (that sum * scale) with
    respect to Z. kind: 0 squared error, 1 huber, 2 logistic (per-output binary
    cross-entropy), 3 softmax cross-entropy."""
    n, k = Z.shape
    total = 0.0
    for i in range(n):
        w = sw[i] if has_sw else 1.0
        ws = w * scale
        li = 0.0
        if kind == 3:
            m = Z[i, 0]
            for j in range(1, k):
                if Z[i, j] > m:
                    m = Z[i, j]
            s = 0.0
            for j in range(k):
                s += np.exp(Z[i, j] - m)
            log_s = np.log(s)
            for j in range(k):
                zj = Z[i, j] - m
                y = Y[i, j]
                if y != 0:
                    li -= y * (zj - log_s)
                Z[i, j] = (np.exp(zj - log_s) - y) * ws
        else:
            for j in range(k):
                z = Z[i, j]
                y = Y[i, j]
                if kind == 2:
                    # log(1 + e^z) - y z, and its derivative expit(z) - y, without overflow
                    li += max(z, 0.0) + np.log1p(np.exp(-abs(z))) - y * z
                    Z[i, j] = (1.0 / (1.0 + np.exp(-z)) - y) * ws
                else:
                    r = z - y
                    if kind == 1 and abs(r) > huber_delta:
                        li += huber_delta * (abs(r) - 0.5 * huber_delta)
                        r = huber_delta if r > 0 else -huber_delta
                    else:
                        li += 0.5 * r * r
                    Z[i, j] = r * ws
        total += w * li
    return total


@numba.njit(**config.JIT_OPTIONS)
def add_scaled(g, w, c):
    """g += c * w over 1-D views."""
    for i in range(g.shape[0]):
        g[i] += c * w[i]
