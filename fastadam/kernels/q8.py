"""Blockwise 8-bit dynamic quantization for the fused loops (Dettmers, Lewis, Shleifer &
Zettlemoyer, "8-bit Optimizers via Block-wise Quantization", ICLR 2022), written here from
the paper's description.

A state array is cut into blocks of ``Q8_BLOCK`` elements; each block stores its absolute
maximum ``absmax`` (float32) and one byte per element, the index of the nearest value of
a fixed code map to x / absmax. The maps are "dynamic" (a floating point format with a
variable split between exponent and fraction), with decades that are powers of 8 (the
paper's are powers of 10) so that the decade of a float32 is a shift of its exponent
bits (docs/low_precision.md, "Code maps"):

* unsigned (second moment, uint8, 256 codes): code 0 is 0; a code c >= 1 whose highest
  set bit is bit f (k = 2**f) is in decade e = 7 - f and means
  ``(1/8 + 7/8 * (c - k + 1) / k) / 8**e``: 128 values in (1/8, 1], 64 in (1/64, 1/8],
  ..., one (8**-7 = 4.8e-7) in (8**-8, 8**-7]. Largest 1.0.
* signed (first moment, int8, codes -127..127, -128 unused): sign and magnitude, the
  magnitude on the same scheme with 7 bits: 64 values in (1/8, 1], ..., smallest
  8**-6 = 3.8e-6.

The encoder is a closed form (no search): the decade from the exponent bits, then the
nearest point of the decade's linear grid. The grids of neighbouring decades meet (a
decade's lower end is the next decade's top value), so this finds the nearest code of the
whole map (an exact tie goes to the even code; float32 rounding can move a near-tie).
It is about 18 vector operations per element and state (:func:`_encode_ir`: the decade
from float(bits), the decade's scales by shifting it into an exponent field, rounding by
adding 2**23 + k - 1). The decoder is a closed form too (:func:`_mag_decode`,
:func:`_smag_decode`: 7 to 9 operations), equal to the tables ``Q8U_TABLE`` /
``Q8S_TABLE`` bit for bit.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..config import JIT_OPTIONS
from ._llvm import F32 as _F32, I32 as _I32, c32 as _c32, prefer_wide as _prefer_wide

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


def _fconst(x):
    return ir.Constant(_F32, float(x))


def _call(builder, name, *args):
    fn = builder.module.declare_intrinsic(name, [_F32],
                                          ir.FunctionType(_F32, [_F32] * len(args)))
    return builder.call(fn, list(args))


def _fmax(builder, a, b):
    """a if a > b else b: x86's maxps operand order (a NaN gives b), one instruction."""
    return builder.select(builder.fcmp_ordered(">", a, b), a, b)


def _pow2_bits(builder, t):
    """float32 with exponent field the integer in t's low mantissa bits: t = 2**23 + n
    (n < 256) gives 2**(n - 127). A shift of t's bits (the 2**23 bit leaves the word)."""
    return builder.bitcast(builder.shl(builder.bitcast(t, _I32), _c32(23)), _F32)


def _encode_ir(builder, a, emax):
    """Nearest magnitude code (i32) of a (> 1 -> top code), emax = nbits - 1. A NaN
    gives a value whose low byte (all the callers keep) is 0 for the default NaN.

    With C = 2**(-3 - 3 emax), decade f (0 .. emax, k = 2**f) holds the codes k - 1 ..
    2k - 1 (values k**3 C .. 8 k**3 C, step 7 k**2 C; code k - 1 is the top of decade
    f - 1, so neighbouring grids meet). For a in decade f, y = a / (k**2 C) is in [k, 8k]
    and the code is k - 1 + round((y - k) / 7). In float32 lanes:

    * f = floor(log2(a) / 3) + 1 + emax, clamped to [0, emax] by clamping a to
      [2**(-2 - 3 emax), 1]; log2 from float(bits(a)) / 2**23 - 127 (the fraction bits add
      less than 1/3). A small -eps keeps a = 1 in decade emax; it moves values within
      ~5e-4 (relative) of a decade boundary into the lower decade, whose formula
      gives the shared boundary code there (the half-step to the next code is >= 2.7%).
    * 1 / (k**2 C) and k from f by shifting f into an exponent field (_pow2_bits).
    * the last decade (f = 0) holds only 0 and 8C: code round((y - 1/2) / 7) puts the cut
      at y = 4 (the general (y - k) / 7 would put it at 4.5): k replaced by
      g = min(k, 2k - 3/2), i.e. 1/2 for k = 1 and k otherwise.
    * t = (y - k) / 7 in one fma (one rounding), then t + (2**23 + k - 1) rounds it to
      an integer (ties to even) and adds k - 1: the code is in the low mantissa bits.

    Errors: the roundings of 1/7 and of the fma, ~2**-24 relative each (y = a * P is
    exact), so only near-ties can pick the other neighbour."""
    f = _fconst
    # a > 1 -> 1; NaN stays NaN (select(a > 1, 1, a): one minps) and comes out as
    # the low bits of a NaN: 0 for the default NaN (see _mag_encode)
    a = builder.select(builder.fcmp_ordered(">", a, f(1.0)), f(1.0), a)
    lo = f(2.0 ** (-2 - 3 * emax))
    b = builder.bitcast(_fmax(builder, a, lo), _I32)
    u = builder.sitofp(b, _F32)
    eps = 2.0 ** -12
    q = _call(builder, "llvm.fma", u, f(np.float32(1.0 / 3.0) / 2.0 ** 23),
              f(np.float32((3 * emax - 124) / 3.0 - eps)))
    fl = _call(builder, "llvm.floor", q)                # decade f, float
    P = _pow2_bits(builder, _call(builder, "llvm.fma", fl, f(-2.0),
                                  f(2.0 ** 23 + 130 + 3 * emax)))   # 2**(3 + 3 emax - 2f)
    k = _pow2_bits(builder, builder.fadd(fl, f(2.0 ** 23 + 127)))  # 2**f
    r7 = np.float32(1.0 / 7.0)
    # -g/7 with g = k, or 1/2 in the last decade: g = min(k, 2k - 3/2)
    kr = _fmax(builder, builder.fmul(k, f(-r7)),
               _call(builder, "llvm.fma", k, f(-2 * r7), f(np.float32(1.5) * r7)))
    y = builder.fmul(a, P)
    t = _call(builder, "llvm.fma", y, f(r7), kr)
    w = builder.fadd(t, builder.fadd(k, f(2.0 ** 23 - 1)))
    return builder.sub(builder.bitcast(w, _I32), _c32(0x4B000000))


@intrinsic
def _mag_encode(typingctx, a, nbits):
    """Nearest magnitude code (int32, 0 .. 2**nbits - 1) of a in [0, 1] (> 1 -> the top
    code; the default NaN -> a value whose low byte is 0, i.e. code 0 once stored as a
    byte). ``nbits`` is a compile-time constant (7 or 8). Closed form, no search and no
    branch, in 32-bit lanes (see _encode_ir)."""
    if a != types.float32 or not isinstance(nbits, types.IntegerLiteral):
        return None
    emax = nbits.literal_value - 1
    sig = types.int32(a, nbits)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        return _encode_ir(builder, args[0], emax)

    return sig, codegen


@intrinsic
def _smag_decode(typingctx, c, emax):
    """Value of signed code c (int8, -127 .. 127; -128, never written, reads as 0 as in
    the table) of the
    magnitude map with top exponent ``emax``: _mag_decode's closed form on the signed
    value, sign(c) (7|c| + 7 - 6k) k**2 C = (7c + 7 sign(c) - 6 s k) ..., with k = the
    signed top bit of c (float(c) with its fraction bits masked) and 7 sign(c) by a
    copysign; 0 for c = 0 (k = 0). Equals -(the magnitude's value) for c < 0 exactly."""
    if c != types.int8 or not isinstance(emax, types.IntegerLiteral):
        return None
    sig = types.float32(c, emax)
    C = 2.0 ** (-3 - 3 * emax.literal_value)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        ci = args[0]
        lo = ir.Constant(ci.type, -128)
        ci = builder.select(builder.icmp_signed("==", ci, lo), ir.Constant(ci.type, 0), ci)
        cf = builder.sitofp(builder.sext(ci, _I32), _F32)
        cb = builder.bitcast(cf, _I32)
        k = builder.bitcast(builder.and_(cb, _c32(-(1 << 23))), _F32)     # keeps the sign
        s7 = builder.or_(builder.and_(cb, _c32(-(1 << 31))),
                         builder.bitcast(_fconst(7.0 * C), _I32))
        n = _call(builder, "llvm.fma", k, _fconst(-6.0 * C),
                  _call(builder, "llvm.fma", cf, _fconst(7.0 * C), builder.bitcast(s7, _F32)))
        return builder.fmul(n, builder.fmul(k, k))

    return sig, codegen


@intrinsic
def _mag_decode(typingctx, c, emax):
    """Value of magnitude code c >= 0 (any integer type, < 2**(emax + 1)), closed form:
    (7c + 7 - 6k) * k**2 * 2**(-3 - 3 emax) with k = 2**f the top bit of c (read from
    float(c) by masking its fraction bits); 0 for c = 0 (then k = 0). Every partial
    result is exact, so this equals the tables bit for bit (tested)."""
    if not isinstance(c, types.Integer) or not isinstance(emax, types.IntegerLiteral):
        return None
    sig = types.float32(c, emax)
    C = 2.0 ** (-3 - 3 * emax.literal_value)

    def codegen(context, builder, signature, args):
        _prefer_wide(builder)
        ci = args[0]
        if ci.type.width < 32:
            ci = (builder.sext if signature.args[0].signed else builder.zext)(ci, _I32)
        else:
            ci = builder.trunc(ci, _I32) if ci.type.width > 32 else ci
        cf = builder.sitofp(ci, _F32)
        k = builder.bitcast(builder.and_(builder.bitcast(cf, _I32), _c32(-(1 << 23))), _F32)
        n = _call(builder, "llvm.fma", k, _fconst(-6.0 * C),
                  _call(builder, "llvm.fma", cf, _fconst(7.0 * C), _fconst(7.0 * C)))
        return builder.fmul(n, builder.fmul(k, k))

    return sig, codegen


_F1 = np.float32(1.0)
_F0 = np.float32(0.0)


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
    Q8S_TABLE[c + 128] * absmax (c = -128 is never written and decodes as 0)."""
    return _smag_decode(c, 6) * absmax


@njit(inline="always", **JIT_OPTIONS)
def inv_scale(absmax):
    """1 / absmax, 0 for an all-zero block (its codes are then all 0)."""
    return _F1 / absmax if absmax != _F0 else _F0
