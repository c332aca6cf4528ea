"""Low-precision storage helpers for the fused loops: bfloat16 and float16 in uint16,
stochastic rounding (8-bit blockwise quantization: kernels/q8.py).

Every helper is a scalar function inlined into a vectorised float32 loop (numba
``inline="always"``, or an LLVM intrinsic that LLVM inlines and vectorises). Arithmetic
stays float32; the integer work is done in 32-bit lanes by the intrinsics (numba would
promote uint32 arithmetic to 64 bits and halve the SIMD width).

bfloat16 (the upper 16 bits of a float32, stored as uint16; the bit layout of
``ml_dtypes.bfloat16``)::

    bf16_load(h)              -> float32    exact (a shift)
    bf16_store(x)             -> uint16     round to nearest, ties to even, subnormals
                                            included; +-inf kept, overflow -> inf; NaN ->
                                            a quiet NaN of the same sign: equal to
                                            ml_dtypes on every non-NaN input (see
                                            BF16_MODE for the NaN's payload)
    bf16_store_sr(x, r)       -> uint16     stochastic rounding with random bits r
                                            (low 16 used): rounds up with probability
                                            (distance to the lower neighbour) / ulp
    f16_store_sr(x, r)        -> uint16     the same to IEEE half (f16_load / f16_store:
                                            LLVM's fpext / fptrunc), the cut moving with
                                            the float16 exponent
    sr_segment_key(key, base) -> uint32     per-segment key: the step's key (sr_key) with
                                            the high half of the element index mixed in
    sr_bits(seg_key, i)       -> uint32     counter-based random bits for element i:
                                            lowbias32(low32(i) + seg_key)

bf16_store has two implementations, chosen once per process (``BF16_MODE``): where numba
compiles for a CPU with AVX512_BF16 (and unless ``FASTADAM_EXACT=1``) the CPU's
conversion ``vcvtneps2bf16`` with subnormal inputs lifted into the normal range (the
instruction alone would flush them to zero): 5 vector instructions per 16 stored values,
the store included, where the integer sequence takes 9 (``vpmovdw`` being 2 micro-ops).
The two differ only in a NaN's payload: 0x7FC0 | sign on the exact path, the NaN's sign,
exponent, quiet bit and the upper 6 of its payload bits on the native path (a quiet NaN
of the same sign either way). ``bf16_round_np`` is the exact rounding,
``bf16_round_native_np`` the native one, ``bf16_store_np`` the one this process's
kernels use. Without AVX512_BF16 LLVM compiles ``fptrunc float -> bfloat`` to a call of
the runtime function ``__truncsfbf2`` (checked for skylake-avx512, znver3 and x86-64
with LLVM 22), which numba does not provide: the exact path is then the only one.

Stochastic rounding draws its bits from a hash of (seed, step, element index), never from
a stream: the result is a function of the seed, the step and the data alone, identical
for any thread count or block split (the hash: kernels/sr.py, its names re-exported here).

8-bit blockwise quantization: kernels/q8.py (its names are re-exported here).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..config import JIT_OPTIONS

from . import approx as _approx
from ._llvm import (BF16 as _BF16, F32 as _F32, I16 as _I16, I32 as _I32, c32 as _c32,  # noqa: E402
                    prefer_wide as _prefer_wide, to_i16 as _to_i16, to_i32 as _to_i32)


# ---------------------------------------------------------------- bfloat16
def _host_has_native_bf16() -> bool:
    """Whether numba compiles for this x86 CPU and it converts float32 to bfloat16 in one
    instruction (AVX512_BF16: vcvtneps2bf16)."""
    return bool(_approx.host_cpu_features().get("avx512bf16"))


#: How bf16_store rounds in this process: "native" (the CPU's conversion, subnormals
#: lifted: equal to ml_dtypes except that a NaN keeps the upper bits of its payload) or
#: "exact" (an integer sequence equal to ml_dtypes on every input; FASTADAM_EXACT=1, or a
#: CPU without AVX512_BF16). Part of the launchers' cache key (launch.SOURCE_HASH), like
#: approx.MODE, so a process never loads kernels compiled in the other mode.
BF16_MODE: str = ("native" if not _approx.exact_requested() and _host_has_native_bf16()
                  else "exact")
BF16_NATIVE: bool = BF16_MODE == "native"


@intrinsic
def _bf16_to_f32(typingctx, h):
    if not isinstance(h, types.Integer):
        return None
    sig = types.float32(h)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        x = builder.zext(_to_i16(builder, args[0]), _I32)
        return builder.bitcast(builder.shl(x, _c32(16)), _F32)

    return sig, codegen


def _nan_select(builder, x, b, rounded):
    """``rounded`` (i32, already shifted), or a quiet NaN keeping the sign if x (float32,
    bits b) is NaN. The NaN test is a float compare (one vector compare into a mask)."""
    is_nan = builder.fcmp_unordered("uno", x, x)
    qnan = builder.or_(builder.and_(builder.lshr(b, _c32(16)), _c32(0x8000)), _c32(0x7FC0))
    return builder.trunc(builder.select(is_nan, qnan, rounded), _I16)


def _rne_exact(builder, x):
    """float32 -> bfloat16 bits (i16) in 32-bit integer lanes: add 0x7FFF plus the
    lowest kept bit, shift; NaN -> 0x7FC0 | sign. Equal to ml_dtypes on every input."""
    b = builder.bitcast(x, _I32)
    lsb = builder.and_(builder.lshr(b, _c32(16)), _c32(1))
    r = builder.lshr(builder.add(builder.add(b, _c32(0x7FFF)), lsb), _c32(16))
    return _nan_select(builder, x, b, r)


def _rne_native(builder, x):
    """float32 -> bfloat16 bits (i16) with LLVM's ``fptrunc float -> bfloat`` (one
    ``vcvtneps2bf16`` with AVX512_BF16). The instruction treats subnormal inputs as zero,
    so those are lifted into the smallest binade first: for a zero exponent field,
    y = x | 2**-126 is sign * (2**-126 + |x|), exact, normal, and on the bfloat16 grid of
    that binade (spacing 2**-133, the bfloat16 subnormal spacing, the same 7 fraction
    bits, so ties break alike); its rounded bits minus 0x0080 (the bits of 2**-126) are
    the rounded subnormal, a round-up to 2**-126 included. Every non-NaN input then
    rounds as :func:`_rne_exact`; a NaN becomes a quiet NaN of its sign carrying the
    upper 6 bits of its payload (the instruction's NaN), where the exact path returns
    0x7FC0 | sign. (Without the lift, LLVM chose 4-lane vectors for this loop; with it,
    16: the extra vptestnmd, masked vpord and masked vpaddw cost less than the lanes.)"""
    b = builder.bitcast(x, _I32)
    sub = builder.icmp_unsigned("==", builder.and_(b, _c32(0x7F800000)), _c32(0))
    y = builder.or_(b, builder.select(sub, _c32(0x00800000), _c32(0)))
    h = builder.bitcast(builder.fptrunc(builder.bitcast(y, _F32), _BF16), _I16)
    zero16 = ir.Constant(_I16, 0)
    return builder.sub(h, builder.select(sub, ir.Constant(_I16, 0x80), zero16))


@intrinsic
def _f32_to_bf16_rne(typingctx, x):
    """Round to nearest even in this process's :data:`BF16_MODE`."""
    if x != types.float32:
        return None
    sig = types.uint16(x)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        if BF16_NATIVE:
            return _rne_native(builder, args[0])
        return _rne_exact(builder, args[0])

    return sig, codegen


@intrinsic
def _f32_to_bf16_rne_exact(typingctx, x):
    """Round to nearest even, the exact integer sequence in every mode (for tests and
    for comparing the two paths in one process)."""
    if x != types.float32:
        return None
    sig = types.uint16(x)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        return _rne_exact(builder, args[0])

    return sig, codegen


@intrinsic
def _f32_to_bf16_rne_native(typingctx, x):
    """Round to nearest even with the native conversion (only where AVX512_BF16 is
    compiled for: elsewhere LLVM calls a runtime function numba does not link)."""
    if x != types.float32:
        return None
    sig = types.uint16(x)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        return _rne_native(builder, args[0])

    return sig, codegen


@intrinsic
def _f32_to_bf16_sr(typingctx, x, bits):
    if x != types.float32 or not isinstance(bits, types.Integer):
        return None
    sig = types.uint16(x, bits)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        b = builder.bitcast(args[0], _I32)
        r16 = builder.and_(_to_i32(builder, args[1]), _c32(0xFFFF))
        r = builder.lshr(builder.add(b, r16), _c32(16))
        return _nan_select(builder, args[0], b, r)

    return sig, codegen


# ---------------------------------------------------------------- IEEE half (float16)
_F16 = ir.HalfType()


@intrinsic
def _f16_to_f32(typingctx, h):
    """float16 bits (an integer) -> float32: LLVM's fpext, exact (F16C vcvtph2ps on x86)."""
    if not isinstance(h, types.Integer):
        return None
    sig = types.float32(h)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        return builder.fpext(builder.bitcast(_to_i16(builder, args[0]), _F16), _F32)

    return sig, codegen


@intrinsic
def _f32_to_f16_rne(typingctx, x):
    """float32 -> float16 bits (uint16): LLVM's fptrunc, round to nearest even in the
    default floating point environment (F16C vcvtps2ph on x86)."""
    if x != types.float32:
        return None
    sig = types.uint16(x)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        return builder.bitcast(builder.fptrunc(args[0], _F16), _I16)

    return sig, codegen


@intrinsic
def _f32_to_f16_sr(typingctx, x, bits):
    """float32 -> float16 bits (uint16), stochastic rounding with random ``bits``.

    |x| is cut at the float16 grid of its binade: d = 13 dropped fraction bits for a
    normal float16, 13 + (113 - E) in the float16 subnormal range (E the biased float32
    exponent; the grid there is 2**-24). d random bits are added to the magnitude bits
    and the d bits cleared: the result is the upper neighbour with probability (dropped
    bits) / 2**d, the remainder exactly, and a carry moves into the next binade as it
    should. The value is then on the float16 grid, and fptrunc converts it exactly
    (>= 65536 becomes inf, as round to nearest does above 65520). Below 2**-24
    (E <= 102, float32 subnormals included) the neighbours are 0 and 2**-24: up when 24
    random bits k = bits >> 8 reach 2**24 (1 - |x| / 2**-24), an exact float32 compare:
    probability floor(2**24 |x| / 2**-24) / 2**24, low by less than 2**-24 (an expected
    error below 2**-48 in absolute terms). NaN -> fptrunc's NaN, +-inf kept."""
    if x != types.float32 or not isinstance(bits, types.Integer):
        return None
    sig = types.uint16(x, bits)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        x = args[0]
        r = _to_i32(builder, args[1])
        b = builder.bitcast(x, _I32)
        sign = builder.and_(b, _c32(0x80000000))
        a = builder.and_(b, _c32(0x7FFFFFFF))
        e = builder.lshr(a, _c32(23))
        normal16 = builder.icmp_unsigned(">=", e, _c32(113))
        d = builder.select(normal16, _c32(13), builder.sub(_c32(126), e))
        d = builder.select(builder.icmp_unsigned(">", d, _c32(23)), _c32(23), d)
        mask = builder.sub(builder.shl(_c32(1), d), _c32(1))
        cut = builder.and_(builder.add(a, builder.and_(r, mask)), builder.not_(mask))
        # below the smallest float16 subnormal: 0 or 2**-24, up when k + |x| * 2**48 >=
        # 2**24 for k = bits >> 8 (both sides exact in float32)
        t = builder.fmul(builder.bitcast(a, _F32), ir.Constant(_F32, 2.0 ** 48))
        thr = builder.uitofp(builder.sub(_c32(1 << 24), builder.lshr(r, _c32(8))), _F32)
        tiny = builder.select(builder.fcmp_ordered(">=", t, thr), _c32(0x33800000), _c32(0))
        mag = builder.select(builder.icmp_unsigned("<=", e, _c32(102)), tiny, cut)
        y = builder.bitcast(builder.or_(mag, sign), _F32)
        y = builder.select(builder.fcmp_unordered("uno", x, x), x, y)
        return builder.bitcast(builder.fptrunc(y, _F16), _I16)

    return sig, codegen


@intrinsic
def _absbits(typingctx, x):
    """float32 -> its magnitude bits (int32, sign cleared). For non-negative floats the
    integer order is the value order, and every NaN is above inf: an integer max over
    these bits is a NaN-propagating absmax that vectorises without fast-math."""
    if x != types.float32:
        return None
    sig = types.int32(x)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        return builder.and_(builder.bitcast(args[0], _I32), _c32(0x7FFFFFFF))

    return sig, codegen


@intrinsic
def _bits_f32(typingctx, b):
    """int32 bits -> float32."""
    if not isinstance(b, types.Integer):
        return None
    sig = types.float32(b)

    def codegen(context, builder, signature, args):
        return builder.bitcast(_to_i32(builder, args[0]), _F32)

    return sig, codegen


@njit(inline="always", **JIT_OPTIONS)
def bf16_load(h):
    """bfloat16 bits (uint16) -> float32, exactly."""
    return _bf16_to_f32(h)


@njit(inline="always", **JIT_OPTIONS)
def bf16_store(x):
    """float32 -> bfloat16 bits, round to nearest even (= ml_dtypes on every non-NaN;
    NaN -> a quiet NaN of its sign, payload per :data:`BF16_MODE`)."""
    return _f32_to_bf16_rne(x)


@njit(inline="always", **JIT_OPTIONS)
def bf16_store_sr(x, bits):
    """float32 -> bfloat16 bits, stochastic rounding with the low 16 bits of ``bits``."""
    return _f32_to_bf16_sr(x, bits)


@njit(inline="always", **JIT_OPTIONS)
def f16_load(h):
    """float16 bits (uint16) -> float32, exactly."""
    return _f16_to_f32(h)


@njit(inline="always", **JIT_OPTIONS)
def f16_store(x):
    """float32 -> float16 bits, round to nearest even; overflow -> +-inf, subnormals
    kept, NaN -> a NaN of the same sign (= NumPy's astype(np.float16) on every non-NaN)."""
    return _f32_to_f16_rne(x)


@njit(inline="always", **JIT_OPTIONS)
def f16_store_sr(x, bits):
    """float32 -> float16 bits, stochastic rounding with the random ``bits`` (uint32: the
    low 13..23 bits, or the high 24 below 2**-24; see _f32_to_f16_sr)."""
    return _f32_to_f16_sr(x, bits)


# ---------------------------------------------------------------- NumPy versions
def bf16_round_np(x):
    """float32 array -> uint16 bfloat16 bits, round to nearest even (NumPy; for tests)."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF
    nan = (b & 0x7FFFFFFF) > 0x7F800000
    r = np.where(nan, ((b >> 16) & 0x8000) | 0x7FC0, r)
    return r.astype(np.uint16)


def bf16_round_native_np(x):
    """float32 array -> uint16 bits as the native path rounds (:func:`bf16_round_np`
    except a NaN: its upper 16 bits with the quiet bit set)."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32)
    nan = (b & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((b >> 16) | 0x0040).astype(np.uint16), bf16_round_np(x))


def bf16_store_np(x):
    """float32 array -> uint16 bits as this process's kernels' bf16_store rounds."""
    return bf16_round_native_np(x) if BF16_NATIVE else bf16_round_np(x)


def bf16_to_f32_np(h):
    """uint16 bfloat16 bits -> float32 (NumPy)."""
    return (np.asarray(h, np.uint16).astype(np.uint32) << 16).view(np.float32)


# stochastic rounding's random bits, re-exported: the low-precision loops read them here.
from .sr import sr_bits, sr_key, sr_segment_key  # noqa: E402,F401

# 8-bit blockwise quantization, re-exported: the low-precision loops and tests read it here.
from .q8 import (Q8_BLOCK, Q8S_TABLE, Q8U_TABLE, inv_scale, q8s_decode,  # noqa: E402,F401
                 q8s_encode, q8u_decode, q8u_encode)
