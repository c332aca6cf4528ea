"""Launchers around the shared loop: flat buffers and chunk tables, serial and parallel,
one set per kernel key (algorithm id, variant, state rows, weight-decay mode,
scale_grad, average).

A launcher's closure holds only ints and bools. Numba keys its on-disk cache on the
pickled closure, so anything else there (a compiled function, say) would differ between
processes and the cache would never hit. Everything a launcher calls is a module-level
function inlined with ``inline="always"``, taking the constant flags as arguments.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import numba
import numpy as np
from numba import njit, prange

from ..config import BLOCK, JIT_OPTIONS
from .loop import advance, step_scalars, update
from .memory import (GROUP, LENGTH, OFFSET, P_ADDR, address_as_pointer, first_alias,
                     first_overlap, grad_address)
from .spec import N_SCALARS, WD_DECOUPLED


def _source_hash():
    """Hash of every source a launcher's compiled code depends on. It is part of each
    launcher's closure, hence of numba's cache key: numba checks a cached kernel only
    against the file that defines it, so without this an edit to an algorithm module
    would leave stale launchers in the cache."""
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for path in sorted(os.path.join(here, f) for f in os.listdir(here) if f.endswith(".py")):
        with open(path, "rb") as f:
            h.update(f.read())
    with open(os.path.join(here, os.pardir, "config.py"), "rb") as f:
        h.update(f.read())
    return int(h.hexdigest()[:15], 16)


SOURCE_HASH = _source_hash()


@njit(inline="always", **JIT_OPTIONS)
def _chunk(plan, k, lo, hi, g_from_object, state, sc, alg, variant, n_state, wd_mode,
           scale_grad, average):
    n = hi - lo
    s0 = state[0]
    item = s0.itemsize
    p = numba.carray(address_as_pointer(plan[k, P_ADDR] + lo * item, s0), n)
    g = numba.carray(address_as_pointer(grad_address(plan, k, g_from_object) + lo * item,
                                        s0), n)
    s = plan[k, OFFSET] + lo
    e = s + n
    update(alg, variant, n_state, wd_mode, scale_grad, average, p, g, s0[s:e],
           state[1, s:e] if n_state > 1 else s0[:0],
           state[2, s:e] if n_state > 2 else s0[:0],
           state[state.shape[0] - 1, s:e] if average else s0[:0], sc[plan[k, GROUP]])


@njit(inline="always", **JIT_OPTIONS)
def _prepare(plan, g_from_object, forbid, state, hyper, steps, gscal, sc, alg, decoupled):
    bad = first_alias(plan, g_from_object, forbid, state.itemsize)
    if bad < 0:
        for gi in range(hyper.shape[0]):
            step_scalars(alg, hyper[gi], steps[gi] + 1, gscal[gi], decoupled, sc[gi])
    return bad


@njit(inline="always", **JIT_OPTIONS)
def _finish(hyper, steps, gscal, alg):
    for gi in range(hyper.shape[0]):
        advance(alg, hyper[gi], steps[gi] + 1, gscal[gi])
        steps[gi] += 1


@lru_cache(maxsize=None)
def build_launchers(alg, variant, n_state, wd_mode, scale_grad, average):
    """(flat_serial, flat_parallel, table_serial, table_parallel) for one kernel key.

    flat_*(p, g, s0, s1, s2, pbar, h, t, gs) -> int: step t on equal-length 1-D arrays
    with hyperparameter row ``h`` (float64) and group scalars ``gs`` (float64, advanced
    in place); s1 / s2 / pbar are touched only when the key uses them (pass empty arrays
    of the dtype otherwise). Returns -1, or first_overlap's code having written nothing.

    table_*(plan, g_from_object, blocks, forbid, state, hyper, steps, gscal, sc, bump)
    -> int: chunk k of ``plan`` (memory.py columns) is LENGTH elements at data address
    P_ADDR, its gradient at G_REF, its state at OFFSET in the rows of ``state`` (the
    averaged parameter in the last row); its group's hyperparameters are hyper[GROUP],
    its step steps[GROUP] + 1 and its group scalars gscal[GROUP]. ``sc`` (groups x
    N_SCALARS, buffer dtype) is scratch, ``blocks`` the parallel split. ``bump`` advances
    every group (step count and group scalars) at the end. Returns -1, or the first chunk
    whose gradient overlaps a ``forbid`` byte range, having written nothing.
    """
    alg, variant, n_state, wd_mode = int(alg), int(variant), int(n_state), int(wd_mode)
    scale_grad, average = bool(scale_grad), bool(average)
    decoupled = wd_mode == WD_DECOUPLED
    source = SOURCE_HASH     # referenced below so that it is a closure cell (cache key)

    @njit(**JIT_OPTIONS)
    def flat_serial(p, g, s0, s1, s2, pbar, h, t, gs):
        if source < 0:       # never: see SOURCE_HASH
            return -2
        bad = first_overlap(p, g, s0, s1, s2, pbar)
        if bad >= 0:
            return bad
        sc = np.empty(N_SCALARS, p.dtype)
        step_scalars(alg, h, t, gs, decoupled, sc)
        update(alg, variant, n_state, wd_mode, scale_grad, average, p, g, s0, s1, s2, pbar,
               sc)
        advance(alg, h, t, gs)
        return -1

    @njit(parallel=True, **JIT_OPTIONS)
    def flat_parallel(p, g, s0, s1, s2, pbar, h, t, gs):
        if source < 0:       # never: see SOURCE_HASH
            return -2
        bad = first_overlap(p, g, s0, s1, s2, pbar)
        if bad >= 0:
            return bad
        sc = np.empty(N_SCALARS, p.dtype)
        step_scalars(alg, h, t, gs, decoupled, sc)
        n = p.shape[0]
        for b in prange((n + BLOCK - 1) // BLOCK):
            lo = b * BLOCK
            hi = min(lo + BLOCK, n)
            update(alg, variant, n_state, wd_mode, scale_grad, average, p[lo:hi], g[lo:hi],
                   s0[lo:hi], s1[lo:hi] if n_state > 1 else s1[:0],
                   s2[lo:hi] if n_state > 2 else s2[:0],
                   pbar[lo:hi] if average else pbar[:0], sc)
        advance(alg, h, t, gs)
        return -1

    @njit(**JIT_OPTIONS)
    def table_serial(plan, g_from_object, blocks, forbid, state, hyper, steps, gscal, sc,
                     bump):
        if source < 0:       # never: see SOURCE_HASH
            return -2
        bad = _prepare(plan, g_from_object, forbid, state, hyper, steps, gscal, sc, alg,
                       decoupled)
        if bad >= 0:
            return bad
        for k in range(plan.shape[0]):
            _chunk(plan, k, 0, plan[k, LENGTH], g_from_object, state, sc, alg, variant,
                   n_state, wd_mode, scale_grad, average)
        if bump:
            _finish(hyper, steps, gscal, alg)
        return -1

    @njit(parallel=True, **JIT_OPTIONS)
    def table_parallel(plan, g_from_object, blocks, forbid, state, hyper, steps, gscal, sc,
                       bump):
        if source < 0:       # never: see SOURCE_HASH
            return -2
        bad = _prepare(plan, g_from_object, forbid, state, hyper, steps, gscal, sc, alg,
                       decoupled)
        if bad >= 0:
            return bad
        for b in prange(blocks.shape[0]):
            _chunk(plan, blocks[b, 0], blocks[b, 1], blocks[b, 2], g_from_object, state, sc,
                   alg, variant, n_state, wd_mode, scale_grad, average)
        if bump:
            _finish(hyper, steps, gscal, alg)
        return -1

    return flat_serial, flat_parallel, table_serial, table_parallel
