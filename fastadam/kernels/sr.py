"""The random bits of stochastic rounding (kernels/lowp.py's ``*_store_sr``): a
counter-based hash of (seed, step, element index), never a stream, so a result depends
on the seed, the step and the data alone, identical for any thread count or block split.

    sr_key(seed, step)        -> int        the step's key (Python, once per launch):
                                            splitmix64 of (seed, step), low 32 bits
    sr_segment_key(key, base) -> uint32     per-segment key: the step's key with the high
                                            half of the element index mixed in
    sr_bits(seg_key, i)       -> uint32     random bits for element i:
                                            lowbias32(low32(i) + seg_key)

The per-element hash works in 32-bit lanes (LLVM intrinsics: numba would promote uint32
arithmetic to 64 bits and halve the SIMD width).
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..config import JIT_OPTIONS
from ._llvm import I32 as _I32, c32 as _c32, to_i32 as _to_i32


def _mix32(builder, x):
    # "lowbias32" integer hash (C. Wellons): a bijection on 32 bits with full avalanche.
    x = builder.xor(x, builder.lshr(x, _c32(16)))
    x = builder.mul(x, _c32(0x7FEB352D))
    x = builder.xor(x, builder.lshr(x, _c32(15)))
    x = builder.mul(x, _c32(0x846CA68B))
    return builder.xor(x, builder.lshr(x, _c32(16)))


@intrinsic
def _sr_bits(typingctx, key, i):
    if not isinstance(key, types.Integer) or not isinstance(i, types.Integer):
        return None
    sig = types.uint32(key, i)

    def codegen(context, builder, signature, args):
        lo = _to_i32(builder, args[1])                 # low 32 bits of the index
        return _mix32(builder, builder.add(lo, _to_i32(builder, args[0])))

    return sig, codegen


@intrinsic
def _mix_hi(typingctx, key, i):
    if not isinstance(key, types.Integer) or not isinstance(i, types.Integer):
        return None
    sig = types.uint32(key, i)

    def codegen(context, builder, signature, args):
        i64 = args[1]
        hi = _c32(0)
        if i64.type.width > 32:
            hi = builder.trunc(builder.lshr(i64, ir.Constant(i64.type, 32)), _I32)
        return _mix32(builder, builder.xor(_to_i32(builder, args[0]),
                                           builder.mul(hi, _c32(0x9E3779B9))))

    return sig, codegen


@njit(inline="always", **JIT_OPTIONS)
def sr_segment_key(key, base):
    """The key for elements base .. base + n of a segment that does not cross a multiple of
    2**32 (every launch split here is aligned): mixes the high half of the index in once,
    so that the per-element hash works in 32-bit lanes."""
    return _mix_hi(key, base)


@njit(inline="always", **JIT_OPTIONS)
def sr_bits(seg_key, i):
    """32 random bits for global element index ``i`` (only its low 32 bits are read) under
    the segment key :func:`sr_segment_key` (step key, i)."""
    return _sr_bits(seg_key, i)


def sr_key(seed: int, step: int) -> int:
    """The per-step key of stochastic rounding (a uint32 as a Python int): splitmix64 of
    (seed, step). Computed once per launch, outside the loop."""
    m64 = (1 << 64) - 1
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & m64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
    z ^= z >> 31
    return z & 0xFFFFFFFF
