"""The denominators of the element updates, in one place: ``div_sqrt_eps(m, d, eps)`` =
m / (sqrt(d) + eps) and ``div(a, b)`` = a / b, exact (IEEE sqrt and divide)."""
from __future__ import annotations

import numpy as np
from numba import njit

from ..config import JIT_OPTIONS


@njit(inline="always", **JIT_OPTIONS)
def div_sqrt_eps(m, d, eps):
    return m / (np.sqrt(d) + eps)


@njit(inline="always", **JIT_OPTIONS)
def div(a, b):
    return a / b
