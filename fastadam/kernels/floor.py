"""The floor kernel: the physical yardstick for an Adam step.

It moves exactly the bytes of a plain Adam step (reads p, g, m, v; writes p, m, v:
28 B/param in float32, 56 in float64) with trivial arithmetic (p += g; m += g; v += g),
launched the same way as the real kernels (serial below ``config.PARALLEL_THRESHOLD``,
otherwise ``prange`` over ``config.BLOCK``-element blocks). Above the last-level cache a
step cannot beat it; ``fastadam bench`` reports the step's speed as "% of floor".
Benchmark-only: nothing in the optimizer uses it.
"""
from __future__ import annotations

from numba import njit, prange

from .. import config
from ..config import BLOCK, JIT_OPTIONS


@njit(inline="always", **JIT_OPTIONS)
def _touch(p, g, m, v):
    # Looped from 0 over equal-length arrays so LLVM vectorises it (see kernels/adam.py).
    for i in range(p.shape[0]):
        gi = g[i]
        p[i] += gi
        m[i] += gi
        v[i] += gi


@njit(**JIT_OPTIONS)
def floor_serial(p, g, m, v):
    _touch(p, g, m, v)


@njit(parallel=True, **JIT_OPTIONS)
def floor_parallel(p, g, m, v):
    n = p.shape[0]
    nb = (n + BLOCK - 1) // BLOCK
    for b in prange(nb):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        _touch(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi])


def floor_step(p, g, m, v):
    """One floor "step" on equal-length 1-D arrays of one dtype, dispatched like
    ``fastadam.adam_step`` (same threshold, same launch lock). No validation."""
    if config.use_parallel(p.shape[0]):
        with config.launch_lock():
            floor_parallel(p, g, m, v)
    else:
        floor_serial(p, g, m, v)
