"""LLVM IR building blocks shared by the low-precision intrinsics (kernels/lowp.py,
kernels/q8.py): integer widths, constants and the 512-bit vector preference."""
from __future__ import annotations

from llvmlite import ir

I16 = ir.IntType(16)


class _BFloatType(ir.Type):
    """LLVM's ``bfloat`` (llvmlite.ir has no class for it; the type only needs to print
    its name for the IR text that llvmlite parses)."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloatType)

    def __hash__(self):
        return hash("bfloat")


BF16 = _BFloatType()
I32 = ir.IntType(32)
F32 = ir.FloatType()


def to_i32(builder, v):
    """An integer LLVM value of any width as i32 (truncate or zero-extend)."""
    w = v.type.width
    if w > 32:
        return builder.trunc(v, I32)
    if w < 32:
        return builder.zext(v, I32)
    return v


def to_i16(builder, v):
    """An integer LLVM value of any width as i16 (truncate or zero-extend): the bits of
    a 16-bit float passed as any integer type."""
    w = v.type.width
    if w > 16:
        return builder.trunc(v, I16)
    if w < 16:
        return builder.zext(v, I16)
    return v


def c32(x):
    return ir.Constant(I32, x)


_WIDE_ATTR = '"prefer-vector-width"="512"'


def prefer_wide(builder):
    """Let LLVM vectorise the enclosing function with 512-bit vectors where the CPU has
    them (AVX-512; elsewhere the attribute changes nothing). The conversions of the
    low-precision layouts are several integer operations per element: 16 lanes instead
    of 8 per instruction halves their issue cost (measured: a bfloat16-state Adam loop
    in cache 0.79 -> 0.59 ns per element with its NaN test). LLVM's default on
    AVX-512 CPUs is 256 bits. The string attribute is added the way approx.py adds its
    own."""
    attrs = builder.function.attributes
    if _WIDE_ATTR not in attrs:
        set.add(attrs, _WIDE_ATTR)
