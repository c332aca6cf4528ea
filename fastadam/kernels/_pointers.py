"""Turning raw data addresses into arrays inside kernels.

The optimizer steps many separate arrays in one launch through a table of their data
addresses; ``numba.carray(address_as_pointer(addr, like), n)`` views one of them. The
caller keeps every addressed array alive for the duration of the call.
"""
from numba import types
from numba.extending import intrinsic


@intrinsic
def address_as_pointer(typingctx, addr, like):
    """Pointer to ``like.dtype`` at integer address ``addr``."""
    sig = types.CPointer(like.dtype)(addr, like)

    def codegen(context, builder, signature, args):
        ptr_type = context.get_value_type(signature.return_type)
        return builder.inttoptr(args[0], ptr_type)

    return sig, codegen


@intrinsic
def load_int64(typingctx, addr):
    """The int64 stored at integer address ``addr``."""
    sig = types.int64(addr)

    def codegen(context, builder, signature, args):
        ll_i64 = context.get_value_type(types.int64)
        ptr = builder.inttoptr(args[0], ll_i64.as_pointer())
        return builder.load(ptr)

    return sig, codegen


def _probe_data_offset():
    """Byte offset of the data pointer inside a NumPy array object (PyArrayObject.data,
    right after PyObject_HEAD), or None when this build lays it out differently.

    Reading it in compiled code replaces ``arr.ctypes.data`` (~1.5 us per array in
    Python) when many gradient arrays arrive each step. Verified here, at import, on
    arrays that differ in every way that could matter; callers fall back to Python
    addresses when it is None."""
    import ctypes

    import numpy as np

    offset = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    base = np.arange(64, dtype=np.float64)
    probes = [base, base[3:], base[5:40].reshape(5, 7), np.zeros(0, np.float32),
              np.ones(3, np.float32)[1:], np.empty((2, 3), np.float32)]
    for a in probes:
        if ctypes.c_void_p.from_address(id(a) + offset).value != (a.ctypes.data or None):
            return None
    return offset


_offset = _probe_data_offset()
#: Whether kernels may read gradient data addresses from array objects (see above).
HAVE_ARRAY_DATA_OFFSET = _offset is not None
ARRAY_DATA_OFFSET = _offset or 0
