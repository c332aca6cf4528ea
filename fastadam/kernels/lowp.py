"""Low-precision storage helpers for the fused loops: bfloat16 in uint16, stochastic
rounding, blockwise 8-bit dynamic quantization.

Every helper is a scalar function inlined into a vectorised float32 loop (numba
``inline="always"``, or an LLVM intrinsic that LLVM inlines and vectorises). Arithmetic
stays float32; the integer work is done in 32-bit lanes by the intrinsics (numba would
promote uint32 arithmetic to 64 bits and halve the SIMD width).

bfloat16 (the upper 16 bits of a float32, stored as uint16; the bit layout of
``ml_dtypes.bfloat16``)::

    bf16_load(h)              -> float32    exact (a shift)
    bf16_store(x)             -> uint16     round to nearest, ties to even; NaN -> quiet
                                            NaN of the same sign (0x7FC0 | sign), +-inf
                                            kept, overflow -> inf: equal to ml_dtypes
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

Stochastic rounding draws its bits from a hash of (seed, step, element index), never from
a stream: the result is a function of the seed, the step and the data alone, identical
for any thread count or block split.

8-bit blockwise dynamic quantization (Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit
Optimizers via Block-wise Quantization", ICLR 2022): a state array is cut into blocks of
``Q8_BLOCK`` elements; each block stores its absolute maximum ``absmax`` (float32) and one
byte per element, the index of the nearest value of a fixed code map to x / absmax. The
maps are "dynamic" (a floating point format with a variable split between exponent and
fraction, base 10), written here from the paper's description:

* unsigned (second moment, uint8, 256 codes): code 0 is 0; a code c >= 1 whose highest
  set bit is bit f (k = 2**f) is in decade e = 7 - f and means
  ``(0.1 + 0.9 * (c - k + 1) / k) / 10**e``: 128 values in (0.1, 1], 64 in (0.01, 0.1],
  ..., one (1e-7) in (1e-8, 1e-7]. Largest 1.0, smallest non-zero 1e-7.
* signed (first moment, int8, codes -127..127, -128 unused): sign and magnitude, the
  magnitude on the same scheme with 7 bits: 64 values in (0.1, 1], 32 in (0.01, 0.1],
  ..., one (1e-6) in (1e-7, 1e-6].

The encoder is a closed form (no search): the decade is the number of thresholds
0.1, 0.01, ... that x does not exceed, then the nearest point of the decade's linear grid.
The grids of neighbouring decades meet (a decade's lower end is the next decade's top
value), so this finds the nearest code of the whole map (up to float32 rounding at exact
ties). The decoder reads a 256-entry float32 table.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..config import JIT_OPTIONS

_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_F32 = ir.FloatType()


def _to_i32(builder, v):
    """An integer LLVM value of any width as i32 (truncate or zero-extend)."""
    w = v.type.width
    if w > 32:
        return builder.trunc(v, _I32)
    if w < 32:
        return builder.zext(v, _I32)
    return v


def _to_i16(builder, v):
    """An integer LLVM value of any width as i16 (truncate or zero-extend): the bits of
    a 16-bit float passed as any integer type."""
    w = v.type.width
    if w > 16:
        return builder.trunc(v, _I16)
    if w < 16:
        return builder.zext(v, _I16)
    return v


def _c32(x):
    return ir.Constant(_I32, x)


# ---------------------------------------------------------------- vector width
_WIDE_ATTR = '"prefer-vector-width"="512"'


def _prefer_wide(builder):
    """Let LLVM vectorise the enclosing function with 512-bit vectors where the CPU has
    them (AVX-512; elsewhere the attribute changes nothing). The conversions of the
    low-precision layouts are several integer operations per element: 16 lanes instead
    of 8 per instruction halves their issue cost (measured: a bfloat16-state Adam loop
    in cache 0.79 -> 0.59 ns per element with the NaN test below). LLVM's default on
    AVX-512 CPUs is 256 bits. The string attribute is added the way approx.py adds its
    own."""
    attrs = builder.function.attributes
    if _WIDE_ATTR not in attrs:
        set.add(attrs, _WIDE_ATTR)


# ---------------------------------------------------------------- bfloat16
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


@intrinsic
def _f32_to_bf16_rne(typingctx, x):
    if x != types.float32:
        return None
    sig = types.uint16(x)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        b = builder.bitcast(args[0], _I32)
        lsb = builder.and_(builder.lshr(b, _c32(16)), _c32(1))
        r = builder.lshr(builder.add(builder.add(b, _c32(0x7FFF)), lsb), _c32(16))
        return _nan_select(builder, args[0], b, r)

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
def bf16_load(h):
    """bfloat16 bits (uint16) -> float32, exactly."""
    return _bf16_to_f32(h)


@njit(inline="always", **JIT_OPTIONS)
def bf16_store(x):
    """float32 -> bfloat16 bits, round to nearest even (= ml_dtypes, NaN quieted)."""
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


# ---------------------------------------------------------------- 8-bit dynamic codes
#: Elements per quantization block (one float32 absmax per block and state). 256: lower
#: error than 2048 (an outlier flattens fewer neighbours) at the same speed (measured,
#: docs/low_precision.md); the scales cost 4/256 = 0.016 B per element and state.
Q8_BLOCK = 256


def _magnitude_table(nbits):
    """Float32 values of the magnitude codes 0 .. 2**nbits - 1 (see module docstring):
    (1/8 + 7/8 * (c - k + 1) / k) / 8**e, k = 2**f the top bit of c, e = nbits - 1 - f.
    Every value is a dyadic rational, exact in float32."""
    out = np.zeros(1 << nbits, np.float64)
    for c in range(1, 1 << nbits):
        f = c.bit_length() - 1
        k = 1 << f
        e = nbits - 1 - f
        out[c] = (0.125 + 0.875 * (c - k + 1) / k) / 8.0 ** e
    assert np.array_equal(out.astype(np.float32).astype(np.float64), out)
    return out.astype(np.float32)


#: Unsigned map: value of code c (uint8) is Q8U_TABLE[c].
Q8U_TABLE = _magnitude_table(8)
_MAG7 = _magnitude_table(7)
#: Signed map: value of code c (int8) is Q8S_TABLE[c + 128] (c = -128 is never written
#: and decodes as 0).
Q8S_TABLE = np.concatenate([[np.float32(0.0)], -_MAG7[:0:-1], _MAG7]).astype(np.float32)
assert Q8S_TABLE.shape == (256,) and Q8S_TABLE[128] == 0.0 and Q8S_TABLE[255] == 1.0


def _octave_decade(builder, a, emax):
    """(8**e, 2**(emax - e)) as float32 for a in [0, 1], e = its decade clamped to emax:
    e = (-E - 1) // 3 for a in [2**E, 2**(E + 1)), from the exponent bits; the
    division by 3 is (n * 43) >> 7, exact for 0 <= n <= 24 (n is clamped there)."""
    b = builder.bitcast(a, _I32)
    n = builder.sub(_c32(126), builder.lshr(b, _c32(23)))          # -E - 1, E unbiased
    n = builder.select(builder.icmp_signed("<", n, _c32(0)), _c32(0), n)
    n = builder.select(builder.icmp_signed(">", n, _c32(24)), _c32(24), n)
    e = builder.lshr(builder.mul(n, _c32(43)), _c32(7))
    em = _to_i32(builder, emax)
    e = builder.select(builder.icmp_signed(">", e, em), em, e)
    p8 = builder.shl(builder.add(_c32(127), builder.mul(e, _c32(3))), _c32(23))
    k = builder.shl(builder.add(_c32(127), builder.sub(em, e)), _c32(23))
    return builder.bitcast(p8, _F32), builder.bitcast(k, _F32)


@intrinsic
def _pow8_of(typingctx, a, emax):
    if a != types.float32 or not isinstance(emax, types.Integer):
        return None
    sig = types.float32(a, emax)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        return _octave_decade(builder, args[0], args[1])[0]

    return sig, codegen


@intrinsic
def _grid_of(typingctx, a, emax):
    if a != types.float32 or not isinstance(emax, types.Integer):
        return None
    sig = types.float32(a, emax)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        return _octave_decade(builder, args[0], args[1])[1]

    return sig, codegen


@intrinsic
def _mag_decode(typingctx, c, emax):
    """Value of magnitude code c >= 0 (any integer type, < 2**(emax + 1)), closed form:
    (7c - 6k + 7) * 2**(2f - 3 - 3 emax) with k = 2**f the top bit of c (read from the
    exponent of float(c)); 0 for c = 0. Equals the tables bit for bit (tested)."""
    if not isinstance(c, types.Integer) or not isinstance(emax, types.Integer):
        return None
    sig = types.float32(c, emax)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        ci = args[0]
        if ci.type.width < 32:
            ci = (builder.sext if signature.args[0].signed else builder.zext)(ci, _I32)
        else:
            ci = builder.trunc(ci, _I32) if ci.type.width > 32 else ci
        cf = builder.sitofp(ci, _F32)
        eb = builder.lshr(builder.bitcast(cf, _I32), _c32(23))
        k = builder.bitcast(builder.shl(eb, _c32(23)), _F32)
        f = lambda x: ir.Constant(_F32, x)
        num = builder.fadd(builder.fsub(builder.fmul(cf, f(7.0)), builder.fmul(k, f(6.0))),
                           f(7.0))
        em3 = builder.mul(_to_i32(builder, args[1]), _c32(3))
        ex = builder.sub(builder.sub(builder.shl(eb, _c32(1)), _c32(130)), em3)
        scale = builder.bitcast(builder.shl(ex, _c32(23)), _F32)
        val = builder.fmul(num, scale)
        return builder.select(builder.icmp_signed("==", ci, _c32(0)), f(0.0), val)

    return sig, codegen


_F1 = np.float32(1.0)
_F0 = np.float32(0.0)
_HALF = np.float32(0.5)
_EIGHTH = np.float32(0.125)
_INV78 = np.float32(8.0 / 7.0)


@njit(inline="always", **JIT_OPTIONS)
def _mag_encode(a, nbits):
    """Nearest magnitude code (int32, 0 .. 2**nbits - 1) of a in [0, 1] (NaN -> 0, > 1 ->
    the top code). ``nbits`` is a compile-time constant (7 or 8).

    Closed form, no search and no branch: the decade e and its grid size k from the
    exponent bits (32-bit integer lanes), then the nearest point of the decade's grid."""
    a = a if a == a else _F0
    a = a if a <= _F1 else _F1
    emax = nbits - 1
    y = a * _pow8_of(a, emax)            # in [1/8, 1] except in the last decade
    k = _grid_of(a, emax)                # grid points in the decade (1 in the last)
    last = k == _F1                      # last decade: the values 0 and 8**-emax only
    t = y if last else (y - _EIGHTH) * (k * _INV78)
    j = np.floor(t + _HALF)
    j = j if j > _F0 else _F0
    j = j if j < k else k
    code = j if last else k + j - _F1
    return np.int32(code)


@njit(inline="always", **JIT_OPTIONS)
def q8u_encode(x, inv_absmax):
    """uint8 code of x >= 0 in the block whose 1 / absmax is ``inv_absmax``."""
    return np.uint8(_mag_encode(x * inv_absmax, 8))


@njit(inline="always", **JIT_OPTIONS)
def q8s_encode(x, inv_absmax):
    """int8 code of x in the block whose 1 / absmax is ``inv_absmax``."""
    c = _mag_encode(abs(x) * inv_absmax, 7)
    return np.int8(-c if x < _F0 else c)


@njit(inline="always", **JIT_OPTIONS)
def q8u_decode(c, absmax):
    """Value of uint8 code ``c`` in a block with scale ``absmax`` (float32):
    Q8U_TABLE[c] * absmax, computed without a table read (no gather)."""
    return _mag_decode(c, 7) * absmax


@njit(inline="always", **JIT_OPTIONS)
def q8s_decode(c, absmax):
    """Value of int8 code ``c`` in a block with scale ``absmax`` (float32):
    Q8S_TABLE[c + 128] * absmax (c = -128 decodes as -0.0 * absmax here; never written)."""
    x = _mag_decode(abs(np.int32(c)) & 127, 6) * absmax
    return -x if c < 0 else x


@njit(inline="always", **JIT_OPTIONS)
def nan_max(a, x):
    """max(a, x) for the block absmax: NaN sticks (a NaN in a block makes its scale NaN,
    so the whole block reads back NaN: non-finite values are not hidden)."""
    return x if (x > a or x != x) else a


@njit(inline="always", **JIT_OPTIONS)
def inv_scale(absmax):
    """1 / absmax, 0 for an all-zero block (its codes are then all 0)."""
    return _F1 / absmax if absmax != _F0 else _F0


# ---------------------------------------------------------------- NumPy versions
def bf16_round_np(x):
    """float32 array -> uint16 bfloat16 bits, round to nearest even (NumPy; for tests)."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF
    nan = (b & 0x7FFFFFFF) > 0x7F800000
    r = np.where(nan, ((b >> 16) & 0x8000) | 0x7FC0, r)
    return r.astype(np.uint16)


def bf16_to_f32_np(h):
    """uint16 bfloat16 bits -> float32 (NumPy)."""
    return (np.asarray(h, np.uint16).astype(np.uint32) << 16).view(np.float32)
