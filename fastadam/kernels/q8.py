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
whole map (up to float32 rounding at exact ties). The decoder is a closed form too
(:func:`_mag_decode`), equal to the tables ``Q8U_TABLE`` / ``Q8S_TABLE`` bit for bit.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..config import JIT_OPTIONS
from ._llvm import F32 as _F32, I32 as _I32, c32 as _c32, prefer_wide as _prefer_wide, to_i32 as _to_i32

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
def inv_scale(absmax):
    """1 / absmax, 0 for an all-zero block (its codes are then all 0)."""
    return _F1 / absmax if absmax != _F0 else _F0
