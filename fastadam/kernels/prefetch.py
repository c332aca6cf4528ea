"""Software prefetch hints for kernels that touch scattered rows (sparse Adam, the
lazy estimators): random rows defeat the hardware prefetcher, so the kernels name the
rows they will need a few iterations ahead. A hint never changes a result."""
from __future__ import annotations

import llvmlite.binding as _llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: Bytes of a row prefetched (the hardware prefetcher follows longer rows by itself).
PREFETCH_BYTES = 512
_PREFETCH = "llvm.prefetch.p0" if _llvm.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def prefetch_row(typingctx, arr, row, write):
    """Hint the cache lines of the first PREFETCH_BYTES of ``arr[row]`` (2-D C-contiguous
    array) into L1, for writing when the literal ``write`` is True. No effect on results;
    ``row`` must be in range (the address is computed, never dereferenced here)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C"
            and isinstance(row, types.Integer) and isinstance(write, types.BooleanLiteral)):
        return None
    rw = 1 if write.literal_value else 0

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        row = context.cast(builder, args[1], sig.args[1], types.intp)
        width = cgutils.unpack_tuple(builder, ary.shape)[1]
        itemsize = ir.Constant(intp, aryty.dtype.bitwidth // 8)
        i8p = ir.IntType(8).as_pointer()
        base = builder.gep(builder.bitcast(ary.data, i8p),
                           [builder.mul(builder.mul(row, width), itemsize)])
        nbytes = builder.mul(width, itemsize)
        cap = ir.Constant(intp, PREFETCH_BYTES)
        nbytes = builder.select(builder.icmp_signed("<", nbytes, cap), nbytes, cap)
        with cgutils.for_range_slice(builder, ir.Constant(intp, 0), nbytes,
                                     ir.Constant(intp, 64)) as (off, _):
            _emit_prefetch(builder, builder.gep(base, [off]), rw)
        return context.get_dummy_value()

    return types.void(arr, row, write), codegen


def _emit_prefetch(builder, addr, rw):
    i32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [addr.type, i32, i32, i32]),
        _PREFETCH)
    builder.call(fn, [addr, ir.Constant(i32, rw), ir.Constant(i32, 3), ir.Constant(i32, 1)])


@intrinsic
def prefetch_span(typingctx, arr, start, nbytes):
    """Hint the ``nbytes`` (a literal) bytes from ``arr[start]`` (a 1-D array) into L1
    for reading, one hint per 64 bytes. No effect on results; the addresses are
    computed, never dereferenced (``start`` may be the end of the array)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1
            and isinstance(start, types.Integer) and isinstance(nbytes, types.IntegerLiteral)):
        return None
    span = nbytes.literal_value

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        stride = cgutils.unpack_tuple(builder, ary.strides)[0]
        i8p = ir.IntType(8).as_pointer()
        base = builder.gep(builder.bitcast(ary.data, i8p), [builder.mul(i, stride)])
        for off in range(0, span, 64):
            _emit_prefetch(builder, builder.gep(base, [ir.Constant(intp, off)]), 0)
        return context.get_dummy_value()

    return types.void(arr, start, nbytes), codegen


@intrinsic
def prefetch_item(typingctx, arr, i, j, write):
    """Hint the cache line holding ``arr[i, j]`` (a 2-D array of any layout: a
    transposed view too) into L1, for writing when the literal ``write`` is True. No
    effect on results; ``i``, ``j`` must be in range (the address is computed, never
    dereferenced here)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and isinstance(i, types.Integer)
            and isinstance(j, types.Integer) and isinstance(write, types.BooleanLiteral)):
        return None
    rw = 1 if write.literal_value else 0

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ii = context.cast(builder, args[1], sig.args[1], types.intp)
        jj = context.cast(builder, args[2], sig.args[2], types.intp)
        s0, s1 = cgutils.unpack_tuple(builder, ary.strides)
        off = builder.add(builder.mul(ii, s0), builder.mul(jj, s1))
        i8p = ir.IntType(8).as_pointer()
        _emit_prefetch(builder, builder.gep(builder.bitcast(ary.data, i8p), [off]), rw)
        return context.get_dummy_value()

    return types.void(arr, i, j, write), codegen
