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
from . import approx, lowp
from .loop import advance, step_scalars, update
from .memory import (G_OBJECTS, GROUP, LENGTH, OFFSET, P_ADDR, PLAN_COLUMNS,
                     address_as_pointer, first_alias, first_overlap, grad_address, pointer_of)
from .spec import N_GROUP_SCALARS, N_HYPER, N_SCALARS, WD_DECOUPLED
from .unsafe import ARRAY_DATA_OFFSET, descr_of, first_unlike, load_int64, view_1d


def _source_hash():
    """Hash of every source a launcher's compiled code depends on. It is part of each
    launcher's closure, hence of numba's cache key: numba checks a cached kernel only
    against the file that defines it, so without this an edit to an algorithm module
    would leave stale launchers in the cache. It also covers ``approx.MODE`` (estimate or
    exact division) and ``lowp.BF16_MODE`` (native or exact bfloat16 rounding), chosen per
    process, so neither path ever loads the other's kernels."""
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for path in sorted(os.path.join(here, f) for f in os.listdir(here) if f.endswith(".py")):
        with open(path, "rb") as f:
            h.update(f.read())
    with open(os.path.join(here, os.pardir, "config.py"), "rb") as f:
        h.update(f.read())
    h.update(approx.MODE.encode())      # the division path compiled into the kernels
    h.update(lowp.BF16_MODE.encode())   # the bfloat16 rounding compiled into them
    return int(h.hexdigest()[:15], 16)


SOURCE_HASH = _source_hash()


@njit(inline="always", **JIT_OPTIONS)
def _chunk(plan, k, lo, hi, grefs, g_mode, state, sc, alg, variant, n_state, wd_mode,
           scale_grad, average):
    n = hi - lo
    s0 = state[0]
    item = s0.itemsize
    p = numba.carray(address_as_pointer(plan[k, P_ADDR] + lo * item, s0), n)
    g = numba.carray(address_as_pointer(grad_address(plan, k, grefs, g_mode) + lo * item,
                                        s0), n)
    s = plan[k, OFFSET] + lo
    e = s + n
    update(alg, variant, n_state, wd_mode, scale_grad, average, p, g, s0[s:e],
           state[1, s:e] if n_state > 1 else s0[:0],
           state[2, s:e] if n_state > 2 else s0[:0],
           state[state.shape[0] - 1, s:e] if average else s0[:0], sc[plan[k, GROUP]])


@njit(inline="always", **JIT_OPTIONS)
def _prepare(plan, grefs, g_mode, forbid, expect, expect_dims, state, hyper, steps, gscal, sc,
             alg, decoupled):
    if g_mode == G_OBJECTS and expect.shape[0] > 0:
        k = first_unlike(grefs, expect, expect_dims)
        if k >= 0:
            return -10 - k
    bad = first_alias(plan, grefs, g_mode, forbid, state.itemsize)
    if bad < 0:
        for gi in range(hyper.shape[0]):
            step_scalars(alg, hyper[gi], steps[gi] + 1, gscal[gi], decoupled, sc[gi])
    return bad


@njit(inline="always", **JIT_OPTIONS)
def _finish(hyper, steps, gscal, alg):
    for gi in range(hyper.shape[0]):
        advance(alg, hyper[gi], steps[gi] + 1, gscal[gi])
        steps[gi] += 1


@njit(inline="always", **JIT_OPTIONS)
def _table_run(plan, grefs, g_mode, forbid, expect, expect_dims, state, hyper, steps, gscal,
               sc, bump, alg, variant, n_state, wd_mode, scale_grad, average, decoupled):
    bad = _prepare(plan, grefs, g_mode, forbid, expect, expect_dims, state, hyper, steps,
                   gscal, sc, alg, decoupled)
    if bad != -1:
        return bad
    for k in range(plan.shape[0]):
        _chunk(plan, k, 0, plan[k, LENGTH], grefs, g_mode, state, sc, alg, variant,
               n_state, wd_mode, scale_grad, average)
    if bump:
        _finish(hyper, steps, gscal, alg)
    return -1


#: Fields of a frame (int64) of table_frame: data address and row count of each table
#: (plan: PLAN_COLUMNS columns, forbid 2, expect 4; grefs and expect_dims 1-D), then the
#: hyperparameter rows (groups x N_HYPER float64), step counts (int64) and group scalars
#: (groups x N_GROUP_SCALARS float64) of the optimizer's groups.
(FR_PLAN, FR_PLAN_ROWS, FR_GREFS, FR_GREFS_LEN, FR_FORBID, FR_FORBID_ROWS, FR_EXPECT,
 FR_EXPECT_ROWS, FR_DIMS, FR_DIMS_LEN, FR_HYPER, FR_GROUPS, FR_STEPS, FR_GSCAL) = range(14)
FRAME_LEN = 14


@njit(inline="always", **JIT_OPTIONS)
def _i64_table(addr, rows, cols):
    return numba.carray(pointer_of(addr, np.int64), (rows, cols))


@njit(inline="always", **JIT_OPTIONS)
def _obj_run(pr, gr, r0, r1, r2, t, gs, h, nd_type, descr, threshold, dtype, alg, variant,
             n_state, wd_mode, scale_grad, average, decoupled):
    pa, n = view_1d(pr, nd_type, descr, -1, True)
    if pa == 0:
        return -3
    if n >= threshold:
        return -4
    ga, _ = view_1d(gr, nd_type, descr, n, False)
    a0, _ = view_1d(r0, nd_type, descr, n, True)
    a1, _ = view_1d(r1, nd_type, descr, n, True) if n_state > 1 else (pa, n)
    a2, _ = view_1d(r2, nd_type, descr, n, True) if n_state > 2 else (pa, n)
    if ga == 0 or a0 == 0 or a1 == 0 or a2 == 0:
        return -3
    p = numba.carray(pointer_of(pa, dtype), n)
    g = numba.carray(pointer_of(ga, dtype), n)
    s0 = numba.carray(pointer_of(a0, dtype), n)
    s1 = numba.carray(pointer_of(a1, dtype), n) if n_state > 1 else p[:0]
    s2 = numba.carray(pointer_of(a2, dtype), n) if n_state > 2 else p[:0]
    bad = first_overlap(p, g, s0, s1, s2, p[:0])
    if bad >= 0:
        return bad
    sc = np.empty(N_SCALARS, dtype)
    step_scalars(alg, h, t, gs, decoupled, sc)
    update(alg, variant, n_state, wd_mode, scale_grad, average, p, g, s0, s1, s2, p[:0], sc)
    advance(alg, h, t, gs)
    return -1


#: Fields of the int64 context array of obj_serial (see build_launchers).
CTX_NDARRAY, CTX_F32, CTX_F64, CTX_HYPER = range(4)
CTX_LEN = 4


@lru_cache(maxsize=None)
def build_launchers(alg, variant, n_state, wd_mode, scale_grad, average):
    """(flat_serial, flat_parallel, table_serial, table_parallel) for one kernel key.

    flat_*(p, g, s0, s1, s2, pbar, h, t, gs) -> int: step t on equal-length 1-D arrays
    with hyperparameter row ``h`` (float64) and group scalars ``gs`` (float64, advanced
    in place); s1 / s2 / pbar are touched only when the key uses them (pass empty arrays
    of the dtype otherwise). Returns -1, or first_overlap's code having written nothing.

    obj_serial(pr, gr, r0, r1, r2, t, gsr, ctx, threshold) -> int, every argument an
    int (no array for numba to type and unbox: the small-call path): flat_serial on the
    arrays whose object addresses are pr, gr, r0..r2 (read only for the rows the key
    uses), read from the objects (kernels/unsafe.py, shortcut 3). ``ctx`` is the data
    address of an int64 array of CTX_LEN fields: the ndarray type object, the float32
    and float64 dtype objects (the arrays are float32 or float64 when their dtype object
    is one of these) and the data address of the hyperparameter row (N_HYPER float64);
    ``gsr`` the object address of the group scalars (a float64 ndarray of
    N_GROUP_SCALARS). The caller keeps all of them alive. Returns -1 done, an overlap
    code >= 0, -3 when an array fails the checks, -4 when the length is >= threshold
    (use the parallel kernel); nothing is written unless it returns -1.

    table_*(plan, grefs, g_mode, blocks, forbid, expect, expect_dims, state, hyper, steps,
    gscal, sc, bump) -> int: chunk k of ``plan`` (memory.py columns) is LENGTH elements
    at data address P_ADDR, its gradient where G_REF and ``g_mode`` say (memory.G_DATA
    etc.), its state at OFFSET in the rows of ``state`` (the
    averaged parameter in the last row); its group's hyperparameters are hyper[GROUP],
    its step steps[GROUP] + 1 and its group scalars gscal[GROUP]. ``sc`` (groups x
    N_SCALARS, buffer dtype) is scratch, ``blocks`` the parallel split. ``bump`` advances
    every group (step count and group scalars) at the end. With G_OBJECTS and a non-empty
    ``expect``, the gradient objects are first checked as unsafe.first_unlike does.
    Returns -1; or, having written nothing, the first chunk whose gradient overlaps a
    ``forbid`` byte range, or -10 - k when gradient k fails the check.

    table_frame(frame, state, sc, g_mode, bump) -> int: table_serial with every table
    but the two of the buffer's dtype reached through ``frame``, the data address of an
    int64 array of FRAME_LEN fields (FR_*): numba unboxes two arrays instead of eleven
    (~0.06 us each). Only public interfaces (``ndarray.ctypes.data``, ``numba.carray``),
    as the plan's data addresses; the caller keeps every addressed array alive and
    unchanged in shape (optim/plan.py, Launch.set_frame).
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
    def table_serial(plan, grefs, g_mode, blocks, forbid, expect, expect_dims, state, hyper,
                     steps, gscal, sc, bump):
        if source < 0:       # never: see SOURCE_HASH
            return -2
        return _table_run(plan, grefs, g_mode, forbid, expect, expect_dims, state, hyper,
                          steps, gscal, sc, bump, alg, variant, n_state, wd_mode, scale_grad,
                          average, decoupled)

    @njit(**JIT_OPTIONS)
    def table_frame(frame, state, sc, g_mode, bump):
        if source < 0:       # never: see SOURCE_HASH
            return -2
        f = numba.carray(pointer_of(frame, np.int64), FRAME_LEN)
        plan = _i64_table(f[FR_PLAN], f[FR_PLAN_ROWS], PLAN_COLUMNS)
        grefs = numba.carray(pointer_of(f[FR_GREFS], np.int64), f[FR_GREFS_LEN])
        forbid = _i64_table(f[FR_FORBID], f[FR_FORBID_ROWS], 2)
        expect = _i64_table(f[FR_EXPECT], f[FR_EXPECT_ROWS], 4)
        dims = numba.carray(pointer_of(f[FR_DIMS], np.int64), f[FR_DIMS_LEN])
        ng = f[FR_GROUPS]
        hyper = numba.carray(pointer_of(f[FR_HYPER], np.float64), (ng, N_HYPER))
        steps = numba.carray(pointer_of(f[FR_STEPS], np.int64), ng)
        gscal = numba.carray(pointer_of(f[FR_GSCAL], np.float64), (ng, N_GROUP_SCALARS))
        return _table_run(plan, grefs, g_mode, forbid, expect, dims, state, hyper, steps,
                          gscal, sc, bump, alg, variant, n_state, wd_mode, scale_grad,
                          average, decoupled)

    @njit(parallel=True, **JIT_OPTIONS)
    def table_parallel(plan, grefs, g_mode, blocks, forbid, expect, expect_dims, state, hyper,
                       steps, gscal, sc, bump):
        if source < 0:       # never: see SOURCE_HASH
            return -2
        bad = _prepare(plan, grefs, g_mode, forbid, expect, expect_dims, state, hyper, steps,
                       gscal, sc, alg, decoupled)
        if bad != -1:
            return bad
        for b in prange(blocks.shape[0]):
            _chunk(plan, blocks[b, 0], blocks[b, 1], blocks[b, 2], grefs, g_mode, state, sc,
                   alg, variant, n_state, wd_mode, scale_grad, average)
        if bump:
            _finish(hyper, steps, gscal, alg)
        return -1

    @njit(**JIT_OPTIONS)
    def obj_serial(pr, gr, r0, r1, r2, t, gsr, ctx, threshold):
        if source < 0:       # never: see SOURCE_HASH
            return -2
        c = numba.carray(pointer_of(ctx, np.int64), CTX_LEN)
        nd_type = c[CTX_NDARRAY]
        descr = descr_of(pr, nd_type)
        if descr == 0:
            return -3
        h = numba.carray(pointer_of(c[CTX_HYPER], np.float64), N_HYPER)
        gs = numba.carray(pointer_of(load_int64(gsr + ARRAY_DATA_OFFSET), np.float64),
                          N_GROUP_SCALARS)
        if descr == c[CTX_F32]:
            return _obj_run(pr, gr, r0, r1, r2, t, gs, h, nd_type, descr, threshold,
                            np.float32, alg, variant, n_state, wd_mode, scale_grad, False,
                            decoupled)
        if descr == c[CTX_F64]:
            return _obj_run(pr, gr, r0, r1, r2, t, gs, h, nd_type, descr, threshold,
                            np.float64, alg, variant, n_state, wd_mode, scale_grad, False,
                            decoupled)
        return -3

    return flat_serial, flat_parallel, table_serial, table_parallel, obj_serial, table_frame
