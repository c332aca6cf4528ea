"""Fast float32 division for the element updates: a hardware reciprocal estimate refined
with fused multiply-adds, instead of an exact divide.

``div(a, b)`` is ``a / b``. For float32 operands, on an x86 CPU with AVX2 and FMA (and
unless ``FASTADAM_EXACT=1``), it is computed as::

    r0 = rcp(b)                    # vrcpps / vrcp14ps / vrcpss: >= 11.4 correct bits
    e  = 1 - b * r0                # one fma: r0's relative error, exactly
    r  = r0 + r0 * (e + e * e)     # two fmas: relative error ~ e**3 < 2**-33
    q  = a * r

with explicit edge handling (below), so that an element update that divides with it is
within 2 ulp of the same update with an exact divide (``tests/test_approx.py`` sweeps
this). It replaces one ``vdivps`` (the slowest vector instruction after ``vsqrtps``) by
one estimate and four multiply/fma operations, which run on the two FMA ports while the
divider computes the square root. The square root itself stays exact: an estimate-based
square root with the edge handling it needs (0, denormals, inf) measured slower here.

Edges, all handled without branches (the loop stays vectorised):

* ``b`` outside [2**-64, 2**64] (zero, denormal, huge): the estimate would flush or
  overflow, so both operands are scaled by 2**64 or 2**-64 first (a / b is unchanged).
* ``b`` = ±0 or ±inf: the refinement produces NaN (0 * inf); ``r`` is then the raw
  estimate (±inf for ±0, ±0 for ±inf), so ``a * r`` is exactly IEEE's ``a / b``
  (±inf, ±0, or NaN for 0/0, inf/inf).
* NaN in either operand propagates.

Float64 always divides exactly (x86 has no double-precision estimate before AVX-512,
and ``rcp14pd`` plus the refinement it needs measured no faster than ``vdivpd``).

How it is emitted: numba has no way to ask for an estimate, and LLVM's fast-math flags
on a whole function also reorder the moment arithmetic and drop NaN semantics. The
intrinsic below emits a single ``fdiv arcp ninf afn float 1.0, %b`` (the only
instruction with fast-math flags) and gives the enclosing function the LLVM attribute
``reciprocal-estimates="divf:0,vec-divf:0"``: estimates enabled, with zero LLVM
refinement steps, so the raw estimate comes out and the refinement is ours. This is an
ordinary scalar instruction, so the loop vectoriser widens it (``vrcpps`` on ymm, or
``vrcp14ps`` on zmm). ``ninf`` is what lets the backend use the estimate; the edge cases
where it would not hold never reach the result (see above).

The exact path (plain ``a / b``) is used

* when the environment variable ``FASTADAM_EXACT=1`` is set (for the whole process);
* when the CPU has no estimate-plus-FMA instruction set numba targets (non-x86, x86
  without AVX2 and FMA), or numba is told to compile for another CPU
  (``NUMBA_CPU_NAME``).

``MODE`` says which path this process compiles; it is part of the launchers' cache key
(:data:`launch.SOURCE_HASH`), so a process never loads a cached kernel of the other path.
"""
from __future__ import annotations

import os
import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import config as _nb_config
from numba.extending import intrinsic, overload


def _host_has_estimates() -> bool:
    """Whether numba compiles for this x86 CPU and it has AVX2 and FMA."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if _nb_config.CPU_NAME:             # compiling for another (or generic) CPU
        return False
    try:
        import llvmlite.binding as llvm
        features = llvm.get_host_cpu_features()
    except Exception:                   # pragma: no cover - defensive
        return False
    return bool(features.get("avx2")) and bool(features.get("fma"))


def _choose_mode() -> str:
    if os.environ.get("FASTADAM_EXACT", "").strip() not in ("", "0"):
        return "exact"
    return "estimate" if _host_has_estimates() else "exact"


#: "estimate" (reciprocal estimate + refinement for float32) or "exact".
MODE: str = _choose_mode()
FAST: bool = MODE == "estimate"

_ESTIMATE_ATTRS = '"reciprocal-estimates"="divf:0,vec-divf:0"'
_F32 = np.float32
_TWO64 = _F32(2.0 ** 64)
_TWOM64 = _F32(2.0 ** -64)
_ONE = _F32(1.0)


@intrinsic
def rcp_estimate(typingctx, x):
    """The hardware reciprocal estimate of float32 ``x`` (about 12 bits on AVX2, 14 with
    AVX-512 vectors), unrefined. Only meaningful where :data:`FAST` holds."""
    if x != types.float32:
        return None
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        # String attributes are not in llvmlite's list of known ones; set.add bypasses
        # that check (the attribute is printed verbatim into the function's definition).
        attrs = builder.function.attributes
        if _ESTIMATE_ATTRS not in attrs:
            set.add(attrs, _ESTIMATE_ATTRS)
        one = ir.Constant(ir.FloatType(), 1.0)
        return builder.fdiv(one, args[0], flags=("arcp", "ninf", "afn"))

    return sig, codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma; an instruction where FMA exists)."""
    if not (a == b == c and isinstance(a, types.Float)):
        return None
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        t = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [t], ir.FunctionType(t, [t, t, t]))
        return builder.call(fn, list(args))

    return sig, codegen


def _div_estimate(a, b):
    # a / b = (a * k) / (b * k): k (a power of two) brings b into [2**-64, 2**64], where
    # the estimate neither flushes a denormal nor overflows. a * k overflows only when
    # a / b does, and underflows only when a / b is denormal anyway.
    ab = abs(b)
    k = _TWO64 if ab < _TWOM64 else (_TWOM64 if ab > _TWO64 else _ONE)
    bs = b * k
    r0 = rcp_estimate(bs)
    e = fma(-bs, r0, _ONE)              # relative error of r0, exactly
    r = fma(r0, fma(e, e, e), r0)       # r0 * (1 + e + e**2): error ~ e**3
    if r != r:                          # bs = 0 or inf (0 * inf above), or NaN
        r = r0
    return (a * k) * r


def div(a, b):
    """``a / b``; in compiled code float32 uses the estimate path when :data:`FAST`."""
    return a / b


@overload(div, inline="always")
def _div_overload(a, b):
    if FAST and a == types.float32 and b == types.float32:
        return _div_estimate
    return lambda a, b: a / b
