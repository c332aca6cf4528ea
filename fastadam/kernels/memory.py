"""Raw addresses and memory-overlap checks used by the launchers.

The optimizer steps many separate arrays in one launch through a table of their data
addresses; ``numba.carray(address_as_pointer(addr, like), n)`` views one of them. The
caller keeps every addressed array alive for the duration of the call.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from ..config import JIT_OPTIONS
from .unsafe import ARRAY_DATA_OFFSET, item_ref, load_int64

# Columns of a chunk plan (int64, one row per chunk).
P_ADDR, G_REF, LENGTH, OFFSET, GROUP = range(5)
PLAN_COLUMNS = 5

#: Names of the arrays of a flat launch, in first_overlap's order.
ARRAY_NAMES = ("param", "grad", "state0", "state1", "state2", "param_avg")


@intrinsic
def address_as_pointer(typingctx, addr, like):
    """Pointer to ``like.dtype`` at integer address ``addr``."""
    sig = types.CPointer(like.dtype)(addr, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@intrinsic
def pointer_of(typingctx, addr, dtype):
    """Pointer to values of the number class ``dtype`` (``np.float32`` as written in the
    kernel) at integer address ``addr``: address_as_pointer without an array to type it."""
    sig = types.CPointer(dtype.instance_type)(addr, dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


#: Where a chunk's gradient is (the ``g_mode`` of the table kernels): G_REF is its data
#: address (the optimizer's own gradient buffer); G_REF indexes ``grefs``, which holds
#: data addresses; G_REF indexes the list or tuple of ndarrays that ``grefs`` describes
#: (unsafe.item_ref: its items and their data pointers read from the objects).
G_DATA, G_INDEXED, G_OBJECTS = 0, 1, 2


# numba caches the functions below keyed on this file only, with unsafe.item_ref
# compiled in: edit this file too when item_ref changes (and norms.py, which calls
# grad_address). The launchers are keyed on every kernel source (launch.SOURCE_HASH).
@njit(**JIT_OPTIONS)
def grad_address(plan, k, grefs, g_mode):
    """Data address of chunk k's gradient (see G_DATA, G_INDEXED, G_OBJECTS)."""
    a = plan[k, G_REF]
    if g_mode == G_INDEXED:
        a = grefs[a]
    elif g_mode == G_OBJECTS:
        a = load_int64(item_ref(grefs, a) + ARRAY_DATA_OFFSET)
    return a


@njit(**JIT_OPTIONS)
def first_alias(plan, grefs, g_mode, forbid, itemsize):
    """-1, or the first chunk whose gradient overlaps one of the sorted, disjoint
    [start, stop) byte ranges in ``forbid`` (parameters and state)."""
    if forbid.shape[0] == 0:
        return -1
    for k in range(plan.shape[0]):
        n = plan[k, LENGTH]
        if n == 0:
            continue
        a = grad_address(plan, k, grefs, g_mode)
        b = a + n * itemsize
        j = np.searchsorted(forbid[:, 0], b) - 1   # last range starting before b
        if j >= 0 and forbid[j, 1] > a:
            return k
    return -1


@njit(**JIT_OPTIONS)
def _span(a):
    return a.ctypes.data, a.ctypes.data + a.size * a.itemsize


@njit(**JIT_OPTIONS)
def first_overlap(p, g, s0, s1, s2, pbar):
    """-1, or i * 6 + j for the first pair (i < j, ARRAY_NAMES order) of non-empty
    arrays whose memory overlaps."""
    lo = np.empty(6, np.int64)
    hi = np.empty(6, np.int64)
    lo[0], hi[0] = _span(p)
    lo[1], hi[1] = _span(g)
    lo[2], hi[2] = _span(s0)
    lo[3], hi[3] = _span(s1)
    lo[4], hi[4] = _span(s2)
    lo[5], hi[5] = _span(pbar)
    for i in range(6):
        for j in range(i + 1, 6):
            if lo[i] < hi[i] and lo[j] < hi[j] and lo[i] < hi[j] and lo[j] < hi[i]:
                return i * 6 + j
    return -1
