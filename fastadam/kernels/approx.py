"""The denominators of the element updates, in one place (``div_sqrt_eps``, ``div``):
fast float32 division for the element updates: a hardware reciprocal estimate refined
with fused multiply-adds, instead of an exact divide.

``div(a, b, lo)`` is ``a / b`` for a denominator ``b >= lo >= 0``. For float32
operands, on an x86 CPU with AVX2 and FMA (and unless ``FASTADAM_EXACT=1``), it is::

    r0 = rcp(b)                    # vrcpps / vrcp14ps / vrcpss: >= 11.4 correct bits
    e  = 1 - b * r0                # one fma: r0's relative error, exactly
    r  = r0 + r0 * (e + e * e)     # two fmas: relative error ~ e**3 < 2**-33
    q  = a * r

plus edge handling (below), so that an update that divides with it is within 2 ulp of
the same update with an exact divide (measured: within 1 ulp, about 1 element in 5 off
by one; ``tests/test_approx.py`` sweeps it). That replaces one ``vdivps`` (the slowest
vector instruction after ``vsqrtps``) by an estimate and six cheap vector operations
that run beside the divider computing the square root. The square root stays exact:
an estimate-based square root with the edge handling it needs (0, denormals, inf)
measured slower than ``vsqrtps`` here.

Edges, handled without per-element branches (the loop stays vectorised):

* ``b`` = ±0 or ±inf: the refinement produces NaN (0 * inf); its correction term is
  then replaced by 1 (one ``vminps``: ``min(t, 1)`` is 1 for NaN ``t``), so ``r`` is
  twice the raw estimate, i.e. the estimate itself (±inf for ±0, ±0 for ±inf), and
  ``a * r`` is exactly IEEE's ``a / b`` (±inf, ±0, or NaN for 0/0, inf/inf). NaN in
  either operand propagates.
* ``b`` denormal: the estimate flushes it to zero. Only possible when ``lo`` < 2**-126
  (eps = 0 or a denormal eps); then both operands below 2**-64 are first multiplied by
  2**64 (exact, a / b unchanged). ``lo`` is loop-invariant, so LLVM hoists that test
  out of the loop and compiles two loop versions: the usual eps > 0 never pays for it.
* ``b`` must be >= 0 (or -0, inf, NaN), as the updates' are (``sqrt(v) + eps``,
  AdaMax's ``u``), and at most 2**126 (8.5e37; above it the estimate flushes 1/b to
  zero): ``sqrt(v) + eps`` is below 2**65 for every float32 ``v`` and eps <= 1, and
  AdaMax's ``u`` exceeds 2**126 only for gradients that large.

Float64 always divides exactly (the double-precision estimate needs AVX-512 and more
refinement; not attempted).

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

* when the environment variable ``FASTADAM_EXACT=1`` is set (for the whole process; it
  also selects the exact bfloat16 rounding, kernels/lowp.py ``BF16_MODE``);
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
from numba import njit, types
from numba.core import config as _nb_config
from numba.extending import intrinsic, overload


def _host_has_estimates() -> bool:
    """Whether numba compiles for this x86 CPU and it has AVX2 and FMA."""
    features = host_cpu_features()
    return bool(features.get("avx2")) and bool(features.get("fma"))


def exact_requested() -> bool:
    """Whether ``FASTADAM_EXACT`` asks for the exact paths (division here, the bfloat16
    rounding in kernels/lowp.py) for this process."""
    return os.environ.get("FASTADAM_EXACT", "").strip() not in ("", "0")


def host_cpu_features() -> dict:
    """The features of the CPU numba compiles for, when that is this x86 CPU (those of
    ``NUMBA_CPU_FEATURES`` when it is set); else {} (non-x86, or ``NUMBA_CPU_NAME``
    naming another or a generic CPU)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    if _nb_config.CPU_NAME and _nb_config.CPU_NAME != "host":
        return {}                       # compiling for another (or a generic) CPU
    if _nb_config.CPU_FEATURES:         # NUMBA_CPU_FEATURES: what numba compiles with
        return {f[1:]: f[0] == "+" for f in _nb_config.CPU_FEATURES.split(",") if f[:1] in "+-"}
    try:
        import llvmlite.binding as llvm
        return dict(llvm.get_host_cpu_features())
    except Exception:                   # pragma: no cover - defensive
        return {}


def _choose_mode() -> str:
    if exact_requested():
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
_MIN_NORMAL = _F32(2.0 ** -126)


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


@njit(inline="always", error_model="numpy", nogil=True, cache=True)
def _refined_quotient(a, b):
    r0 = rcp_estimate(b)
    e = fma(-b, r0, _ONE)               # relative error of r0, exactly
    t = fma(e, e, e)                    # e + e**2, |t| < 2**-11
    # b = 0 or inf: e and t are NaN (0 * inf). Then t = 1, and r = 2 * r0 is r0 itself
    # (r0 = +-inf or +-0); NaN r0 (NaN b) stays NaN. One vminps (x86's min returns its
    # second operand for NaN), where a NaN test and a select would be two instructions.
    t = t if t < _ONE else _ONE
    return a * fma(r0, t, r0)           # r0 * (1 + e + e**2): error ~ e**3


def _div_estimate(a, b, lo):
    if lo >= _MIN_NORMAL:
        # b is normal (or inf / NaN). lo is loop-invariant, so LLVM hoists this test
        # out of the loop ("unswitching") and this loop version has no scaling at all.
        return _refined_quotient(a, b)
    # b may be denormal: a / b = (a * 2**64) / (b * 2**64), exact scalings, so the
    # estimate never sees a denormal (it would flush it to zero). a * 2**64 overflows
    # only where a / b does.
    if b < _TWOM64:
        a = a * _TWO64
        b = b * _TWO64
    return _refined_quotient(a, b)


def div(a, b, lo):
    """``a / b`` where ``b >= lo >= 0`` (or b is inf or NaN) and ``lo`` is the same for
    every element of a loop (Adam: b = sqrt(v) + eps >= eps; AdaMax: u >= eps). In
    compiled code float32 uses the estimate path when :data:`FAST`; ``lo`` only chooses
    between its two versions (``lo`` >= 2**-126: no denormal denominators)."""
    return a / b


@overload(div, inline="always")
def _div_overload(a, b, lo):
    if FAST and a == types.float32 and b == types.float32:
        return _div_estimate
    return lambda a, b, lo: a / b


@njit(inline="always", error_model="numpy", nogil=True, cache=True)
def div_sqrt_eps(m, d, eps):
    """``m / (sqrt(d) + eps)`` for d >= 0 (or inf/NaN) and eps >= 0: the denominator of
    Adam, NAdam and RAdam. The square root is exact; the division is :func:`div`."""
    return div(m, np.sqrt(d) + eps, eps)
