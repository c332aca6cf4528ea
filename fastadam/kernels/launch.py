"""Launchers around the algorithms' element updates: flat buffers and chunk tables,
serial and parallel.

A launcher is generated per flag set; its closure holds only ints and bools. Numba keys
its on-disk cache on the pickled closure, so anything else there (a compiled function,
say) would differ between processes and the cache would never hit. Everything a launcher
calls is therefore a module-level function taking the flags as arguments, inlined with
``inline="always"`` so the constant flags prune their branches.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import numba
import numpy as np
from numba import njit, prange

from ..config import BLOCK, JIT_OPTIONS
from . import adam, adamax, approx
from .common import (ADAMAX, GROUP, LENGTH, M_ROW, N_SCALARS, OFFSET, P_ADDR, V_ROW,
                     VMAX_ROW, WD_DECOUPLED, _grad_address, address_as_pointer,
                     first_alias, first_overlap, step_scalars)


def _source_hash():
    """Hash of every source a launcher's compiled code depends on. It is part of each
    launcher's closure, hence of numba's cache key: numba checks a cached kernel only
    against the file that defines it, so without this an edit to adam.py or common.py
    would leave stale launchers in the cache. It also covers ``approx.MODE`` (estimate or
    exact division), chosen per process, so neither path ever loads the other's kernels."""
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for path in sorted(os.path.join(here, f) for f in os.listdir(here) if f.endswith(".py")):
        with open(path, "rb") as f:
            h.update(f.read())
    with open(os.path.join(here, os.pardir, "config.py"), "rb") as f:
        h.update(f.read())
    h.update(approx.MODE.encode())      # the division path compiled into the kernels
    return int(h.hexdigest()[:15], 16)


SOURCE_HASH = _source_hash()


@njit(inline="always", **JIT_OPTIONS)
def _update(alg, p, g, m, v, vmax, pbar, sc, wd_mode, amsgrad, scale_grad, average):
    if alg == ADAMAX:
        adamax.update(p, g, m, v, vmax, pbar, sc, wd_mode, scale_grad, average)
    else:
        adam.update(p, g, m, v, vmax, pbar, sc, wd_mode, amsgrad, scale_grad, average)


@njit(inline="always", **JIT_OPTIONS)
def _chunk(plan, k, lo, hi, g_from_object, state, sc, alg, wd_mode, amsgrad, scale_grad,
           average):
    n = hi - lo
    m = state[M_ROW]
    item = m.itemsize
    p = numba.carray(address_as_pointer(plan[k, P_ADDR] + lo * item, m), n)
    g = numba.carray(address_as_pointer(_grad_address(plan, k, g_from_object) + lo * item,
                                        m), n)
    s = plan[k, OFFSET] + lo
    e = s + n
    _update(alg, p, g, m[s:e], state[V_ROW, s:e],
            state[VMAX_ROW, s:e] if amsgrad else m[:0],
            state[state.shape[0] - 1, s:e] if average else m[:0], sc[plan[k, GROUP]],
            wd_mode, amsgrad, scale_grad, average)


@njit(inline="always", **JIT_OPTIONS)
def _prepare(plan, g_from_object, forbid, state, hyper, steps, sc, decoupled, is_adamax):
    bad = first_alias(plan, g_from_object, forbid, state.itemsize)
    if bad < 0:
        for gi in range(hyper.shape[0]):
            step_scalars(hyper[gi], steps[gi] + 1, decoupled, is_adamax, sc[gi])
    return bad


@lru_cache(maxsize=None)
def build_launchers(alg, wd_mode, amsgrad, scale_grad, average):
    """(flat_serial, flat_parallel, table_serial, table_parallel) for one flag set.

    flat_*(p, g, m, v, vmax, pbar, h, t) -> int: step t on equal-length 1-D arrays with
    hyperparameter row ``h`` (float64, H_* layout); vmax / pbar are only touched when
    amsgrad / average (pass empty arrays of the dtype otherwise). Returns -1, or
    first_overlap's code having written nothing.

    table_*(plan, g_from_object, blocks, forbid, state, hyper, steps, sc, bump) -> int:
    chunk k of ``plan`` (int64, columns P_ADDR, G_REF, LENGTH, OFFSET, GROUP) is LENGTH
    elements at data address P_ADDR, its gradient at G_REF (a data address or, with
    ``g_from_object``, the address of the ndarray object, see ARRAY_DATA_OFFSET), its
    state at OFFSET in the rows of ``state``; its group's hyperparameters are
    hyper[GROUP] and its step steps[GROUP] + 1. ``sc`` (groups x N_SCALARS, buffer dtype)
    is scratch. ``blocks`` is the parallel split. ``bump`` increments every group's step
    at the end. Returns -1, or the first chunk whose gradient overlaps a ``forbid`` byte
    range, having written nothing.
    """
    alg, wd_mode = int(alg), int(wd_mode)
    amsgrad, scale_grad, average = bool(amsgrad), bool(scale_grad), bool(average)
    decoupled = wd_mode == WD_DECOUPLED
    is_adamax = alg == ADAMAX
    source = SOURCE_HASH     # referenced below so that it is a closure cell (cache key)

    @njit(**JIT_OPTIONS)
    def flat_serial(p, g, m, v, vmax, pbar, h, t):
        if source < 0:       # never: see SOURCE_HASH
            return -2
        bad = first_overlap(p, g, m, v, vmax, pbar)
        if bad >= 0:
            return bad
        sc = np.empty(N_SCALARS, p.dtype)
        step_scalars(h, t, decoupled, is_adamax, sc)
        _update(alg, p, g, m, v, vmax, pbar, sc, wd_mode, amsgrad, scale_grad, average)
        return -1

    @njit(parallel=True, **JIT_OPTIONS)
    def flat_parallel(p, g, m, v, vmax, pbar, h, t):
        if source < 0:       # never: see SOURCE_HASH
            return -2
        bad = first_overlap(p, g, m, v, vmax, pbar)
        if bad >= 0:
            return bad
        sc = np.empty(N_SCALARS, p.dtype)
        step_scalars(h, t, decoupled, is_adamax, sc)
        n = p.shape[0]
        for b in prange((n + BLOCK - 1) // BLOCK):
            lo = b * BLOCK
            hi = min(lo + BLOCK, n)
            _update(alg, p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi],
                    vmax[lo:hi] if amsgrad else vmax[:0],
                    pbar[lo:hi] if average else pbar[:0], sc,
                    wd_mode, amsgrad, scale_grad, average)
        return -1

    @njit(**JIT_OPTIONS)
    def table_serial(plan, g_from_object, blocks, forbid, state, hyper, steps, sc, bump):
        if source < 0:       # never: see SOURCE_HASH
            return -2
        bad = _prepare(plan, g_from_object, forbid, state, hyper, steps, sc, decoupled,
                       is_adamax)
        if bad >= 0:
            return bad
        for k in range(plan.shape[0]):
            _chunk(plan, k, 0, plan[k, LENGTH], g_from_object, state, sc, alg, wd_mode,
                   amsgrad, scale_grad, average)
        if bump:
            steps += 1
        return -1

    @njit(parallel=True, **JIT_OPTIONS)
    def table_parallel(plan, g_from_object, blocks, forbid, state, hyper, steps, sc, bump):
        if source < 0:       # never: see SOURCE_HASH
            return -2
        bad = _prepare(plan, g_from_object, forbid, state, hyper, steps, sc, decoupled,
                       is_adamax)
        if bad >= 0:
            return bad
        for b in prange(blocks.shape[0]):
            _chunk(plan, blocks[b, 0], blocks[b, 1], blocks[b, 2], g_from_object, state, sc,
                   alg, wd_mode, amsgrad, scale_grad, average)
        if bump:
            steps += 1
        return -1

    return flat_serial, flat_parallel, table_serial, table_parallel
