"""The two shortcuts that step outside NumPy's and numba's public interfaces, in one place,
each with the gain it was measured to bring, and one switch to turn them all off:
the environment variable ``FASTADAM_PORTABLE=1`` (read at import).

1. **Gradient arrays read from the array objects** (``HAVE_OBJECT_GRADS``,
   ``first_unlike``, ``item_ref``, ``load_int64``): when ``opt.step(grads)`` gets a list
   (or tuple) of arrays, the compiled code reads the list's items from the list object
   and each array's type, dtype, shape, flags and data pointer from its
   ``PyArrayObject``, at byte offsets verified at import on this Python and NumPy build,
   instead of Python reading ``arr.ctypes.data`` (~1.5 us an array), or even only
   collecting the arrays' ``id`` into an array (~0.7 us for two), and checking each
   array. Measured (100 separate arrays of 1e4 float32, one step): 0.875 -> 0.95 of the
   flat path; 2 arrays of 500: see docs/architecture.md. Off: Python checks every array
   and passes data addresses.
2. **Compiled entry points called directly** (:func:`call`): after the first call of a
   kernel with an optimizer's own arrays (whose types never change), the compiled entry
   point of that signature is called without numba's type dispatch. Measured: ~0.4 us a
   call (object API step at 1e3: 1.7 -> 1.3 us). Off: every call goes through the
   dispatcher.

3. **Functional calls read their arrays from the array objects** (:func:`view_1d`, the
   ``obj_serial`` launcher of ``launch.py``): ``fa.adam_step`` and friends pass the
   arrays' object addresses as integers to one compiled call that checks each array
   (exact ndarray type, dtype, 1-D, length, C-contiguous, aligned, writable) and views it
   by its data pointer, instead of checking four arrays in Python and typing them in
   numba's dispatcher. Every argument of that call is an int (the hyperparameter row and
   group scalars are reached through addresses too), so numba unboxes no array, and it
   is called through its compiled entry point (:func:`entry_point`). A call that fails
   any check takes the ordinary checked path, which accepts it or raises the usual
   error. Measured at 1e3 float32 (CPU time, interleaved in one process, loaded 2-core
   machine, minimum of 30 samples): 2.9 -> 1.9 us. Off: always the ordinary path.

4. **numba's thread count read directly** (``config._settle_threading``): once numba's
   pool runs, ``config.use_parallel`` calls numba's private getter of the calling
   thread's count instead of ``numba.get_num_threads()``, which re-enters the pool
   start-up lock on every call. Measured (2 busy cores): use_parallel(1e6) 6.3 -> 1.2 us.
   Off: the public ``numba.get_num_threads()``.

All are verified by the parity tests, which CI also runs with ``FASTADAM_PORTABLE=1``.
"""
from __future__ import annotations

import os

import numba
from numba import njit, types
from numba.extending import intrinsic

from ..config import JIT_OPTIONS

#: True when FASTADAM_PORTABLE is set to something other than "" or "0".
PORTABLE = os.environ.get("FASTADAM_PORTABLE", "").strip() not in ("", "0")


@intrinsic
def load_int64(typingctx, addr):
    """The int64 stored at integer address ``addr``."""
    sig = types.int64(addr)

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], context.get_value_type(types.int64).as_pointer())
        return builder.load(ptr)

    return sig, codegen


@intrinsic
def load_int32(typingctx, addr):
    """The C int stored at integer address ``addr``, as int64."""
    sig = types.int64(addr)

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], context.get_value_type(types.int32).as_pointer())
        return builder.sext(builder.load(ptr), context.get_value_type(types.int64))

    return sig, codegen


def _probe_array_layout():
    """Byte offsets of (type, data, nd, dimensions, descr, flags) inside a NumPy array
    object (PyArrayObject_fields: PyObject_HEAD, then data, nd, dimensions, strides,
    base, descr, flags), or None when this build lays it out differently. Verified on
    arrays that differ in every way that could matter."""
    import ctypes

    import numpy as np

    if ctypes.sizeof(ctypes.c_void_p) != 8 or ctypes.sizeof(ctypes.c_ssize_t) != 8:
        return None
    layout = dict(type=8, data=16, nd=24, dimensions=32, descr=56, flags=64)
    base = np.arange(64, dtype=np.float64)
    probes = [base, base[3:], base[5:40].reshape(5, 7), np.zeros(0, np.float32),
              np.ones(3, np.float32)[1:], np.empty((2, 3), np.float32),
              np.empty((4, 6), np.float32)[:, ::2], np.zeros((1, 1, 2))]

    def word_at(a, off):
        return ctypes.c_ssize_t.from_address(id(a) + off).value

    for a in probes:
        dims = word_at(a, layout["dimensions"])
        if (word_at(a, layout["type"]) != id(type(a))
                or word_at(a, layout["data"]) != a.ctypes.data
                or ctypes.c_int.from_address(id(a) + layout["nd"]).value != a.ndim
                or (a.ndim and [ctypes.c_ssize_t.from_address(dims + 8 * j).value
                                for j in range(a.ndim)] != list(a.shape))
                or word_at(a, layout["descr"]) != id(a.dtype)
                or bool(ctypes.c_int.from_address(id(a) + layout["flags"]).value & 1)
                != a.flags.c_contiguous):
            return None
    return layout


def _probe_sequence_layout():
    """Byte offsets (list size, list item pointer, first tuple item) inside list and
    tuple objects (PyObject_VAR_HEAD, then ob_item), or None when this build lays them
    out differently. Verified on lists and tuples of several lengths."""
    import ctypes

    if ctypes.sizeof(ctypes.c_void_p) != 8 or ctypes.sizeof(ctypes.c_ssize_t) != 8:
        return None
    layout = dict(list_size=16, list_items=24, tuple_items=24)

    def word_at(addr):
        return ctypes.c_ssize_t.from_address(addr).value

    grown = [object() for _ in range(5)]
    grown.append(object())             # over-allocated storage
    for items in ([object()], [object(), object(), object()], grown):
        lst, tup = list(items), tuple(items)
        if word_at(id(lst) + layout["list_size"]) != len(lst):
            return None
        base = word_at(id(lst) + layout["list_items"])
        for k, x in enumerate(items):
            if (word_at(base + 8 * k) != id(x)
                    or word_at(id(tup) + layout["tuple_items"] + 8 * k) != id(x)):
                return None
    return layout


# The layouts are probed in every mode and PORTABLE only turns their use off: the offsets
# are compiled into functions that numba caches keyed on their own source file (memory.py,
# norms.py), so they must not depend on the mode, or a portable process would cache
# kernels with zero offsets that a later ordinary process loads (and crashes in).
_layout = _probe_array_layout()
_seq_layout = _probe_sequence_layout()
#: Whether kernels may read gradient arrays' fields from the array objects (shortcut 1).
HAVE_ARRAY_DATA_OFFSET = _layout is not None and not PORTABLE
_layout = _layout or dict(type=0, data=0, nd=0, dimensions=0, descr=0, flags=0)
ARRAY_DATA_OFFSET = _layout["data"]
_TYPE, _ND, _DIMS, _DESCR, _FLAGS = (_layout["type"], _layout["nd"], _layout["dimensions"],
                                     _layout["descr"], _layout["flags"])
_C_CONTIGUOUS = 0x0001
_ALIGNED_C = 0x0101              # NPY_ARRAY_ALIGNED | NPY_ARRAY_C_CONTIGUOUS
_WRITABLE_ALIGNED_C = 0x0501     # ... | NPY_ARRAY_WRITEABLE
#: Whether functional calls may use the object-reading launcher (shortcut 3).
OBJECT_CALLS = HAVE_ARRAY_DATA_OFFSET
#: Whether kernels may read a gradient list's arrays from the list object (shortcut 1).
HAVE_OBJECT_GRADS = HAVE_ARRAY_DATA_OFFSET and _seq_layout is not None
_LIST_ITEMS = (_seq_layout or dict(list_items=0))["list_items"]
_TUPLE_ITEMS = (_seq_layout or dict(tuple_items=0))["tuple_items"]


@njit(inline="always", **JIT_OPTIONS)
def item_ref(seq, k):
    """Object address of item k of the list or tuple described by ``seq`` (int64:
    [its object address, the address of the type object ``list``]: an object of that
    exact type is a list, else the caller passes an exact tuple); the caller checked its
    length."""
    c = seq[0]
    if load_int64(c + _TYPE) == seq[1]:
        return load_int64(load_int64(c + _LIST_ITEMS) + 8 * k)
    return load_int64(c + _TUPLE_ITEMS + 8 * k)


@njit(**JIT_OPTIONS)
def first_unlike(seq, expect, dims):
    """-1, or the first k whose array object (item k of the list or tuple ``seq``, see
    item_ref) is not exactly an ndarray (type expect[k, 0]) of dtype object expect[k, 1],
    C-contiguous, with expect[k, 2] dimensions equal to dims[expect[k, 3]:...]. A cheap
    acceptance test: on a miss the caller checks that array in Python (which may still
    accept it)."""
    for k in range(expect.shape[0]):
        a = item_ref(seq, k)
        if (load_int64(a + _TYPE) != expect[k, 0] or load_int64(a + _DESCR) != expect[k, 1]
                or (load_int32(a + _FLAGS) & _C_CONTIGUOUS) == 0):
            return k
        nd = expect[k, 2]
        if load_int32(a + _ND) != nd:
            return k
        d = load_int64(a + _DIMS)
        s = expect[k, 3]
        for j in range(nd):
            if load_int64(d + 8 * j) != dims[s + j]:
                return k
    return -1


@njit(inline="always", **JIT_OPTIONS)
def descr_of(ref, ndarray_type):
    """Address of the dtype object of the object at ``ref`` when it is exactly an ndarray
    (type object ``ndarray_type``), else 0. The type is read first (every Python object
    has one at that offset); only an ndarray is read further."""
    if ref == 0 or load_int64(ref + _TYPE) != ndarray_type:
        return 0
    return load_int64(ref + _DESCR)


@njit(inline="always", **JIT_OPTIONS)
def view_1d(ref, ndarray_type, descr, n, writable):
    """(data address, length) of the array object at address ``ref`` when it is exactly
    an ndarray of dtype object ``descr``, 1-D, C-contiguous, aligned, writable if asked,
    and of length ``n`` (any length when n < 0); else (0, -1)."""
    if ref == 0 or load_int64(ref + _TYPE) != ndarray_type or load_int64(ref + _DESCR) != descr:
        return 0, -1
    need = _WRITABLE_ALIGNED_C if writable else _ALIGNED_C
    if (load_int32(ref + _FLAGS) & need) != need or load_int32(ref + _ND) != 1:
        return 0, -1
    length = load_int64(load_int64(ref + _DIMS))
    if n >= 0 and length != n:
        return 0, -1
    return load_int64(ref + ARRAY_DATA_OFFSET), length


def entry_point(kernel, sig):
    """``kernel`` compiled for the argument types ``sig`` (a tuple of numba types): its
    compiled entry point, called without numba's type dispatch (shortcut 2), or the
    dispatcher itself when PORTABLE. Call it only with arguments of exactly those types
    (Python ints for int64)."""
    kernel.compile(sig)
    if PORTABLE:
        return kernel
    cres = kernel.overloads.get(tuple(sig))
    return cres.entry_point if cres is not None else kernel


class Entry:
    """Calls a kernel; after the first call, its compiled entry point for the argument
    types of that call directly (shortcut 2), unless PORTABLE. Use only where every call
    passes arguments of the same types as the first (an optimizer's own arrays)."""

    __slots__ = ("kernel", "fn")

    def __init__(self, kernel):
        self.kernel = kernel
        self.fn = None

    def __call__(self, *args):
        fn = self.fn
        if fn is not None:
            return fn(*args)
        out = self.kernel(*args)
        if not PORTABLE:
            cres = self.kernel.overloads.get(tuple(numba.typeof(a) for a in args))
            if cres is not None:
                self.fn = cres.entry_point
        return out
