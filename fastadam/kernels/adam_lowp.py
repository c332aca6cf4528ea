"""Fused Adam / AdamW steps with low-precision storage, and their byte floors.

Layouts (compile-time constants of a generated kernel):

* parameters and gradients: float32 (``PARAM_F32``), bfloat16 bits in uint16
  (``PARAM_BF16``) or IEEE half bits in uint16 (``PARAM_F16``: numpy float16);
* moments ``exp_avg`` / ``exp_avg_sq``: float32 (``STATE_F32``), bfloat16 bits
  (``STATE_BF16``, round to nearest even on store) or blockwise 8-bit codes
  (``STATE_Q8``: int8 codes of m, uint8 codes of sqrt(v), a float32 absmax of each per
  ``lowp.Q8_BLOCK`` elements);
* how a 16-bit parameter keeps its precision (``PMODE_*``): round to nearest, stochastic
  rounding, Kahan compensation in a buffer ``c`` of the parameter's
  16-bit format, or a float32 master copy ``w``.

Every element is computed in float32 from the decoded values, with exactly the arithmetic
of ``kernels/adam.py`` (so a float32 master copy follows float32 Adam bit for bit), and
each stored value is rounded once. The code is split the way the shared loop of the
algorithm registry wants it:

* the per-element update, chosen at compile time by the algorithm's registry id
  (kernels/lowp_elem.py: ``lowp_elem``; Adam's is :func:`adam_elem`, the pure scalar
  update ``(p, g, m, v, scalars) -> (p_decayed, m, v, upd)`` with new parameter
  ``p_decayed - upd``, ``upd`` kept apart for Kahan; NAdam's and RAdam's are the
  registry's ``element``, kernels/nr_lowp.py builds their kernels);
* load/store helpers, one per array role, dispatching on the layout constants:
  :func:`load_param`, :func:`load_grad`, :func:`load_state`, :func:`store_state`,
  :func:`store_param`; for 8-bit state the block helper :func:`q8_block` (decode the
  block, update, find the new absmax, encode) replaces the plain element loop.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit, prange

from ..config import BLOCK, JIT_OPTIONS
from .loop import step_scalars as _step_scalars
from .spec import H_LR, H_WEIGHT_DECAY, N_SCALARS, WD_DECOUPLED, WD_L2
from .spec import S_GRAD_SCALE as GRAD_SCALE, S_WD as WD

from .lowp_elem import ADAM_ID as _ADAM_ID, adam_elem, lowp_consts, lowp_elem  # noqa: F401


@njit(inline="always", **JIT_OPTIONS)
def step_scalars(h, t, decoupled, adamax, out):
    """Adam's step scalars (kernels/adam.py, through the shared loop's step_scalars)."""
    _step_scalars(_ADAM_ID, h, t, h, decoupled, out)
from .lowp import (_absbits, _bits_f32, bf16_load, bf16_store, bf16_store_sr, f16_load,
                   f16_store, f16_store_sr, sr_bits, sr_segment_key)
from .q8 import Q8_BLOCK, inv_scale, q8s_decode, q8s_encode, q8u_decode, q8u_encode

PARAM_F32, PARAM_BF16, PARAM_F16 = 0, 1, 2
STATE_F32, STATE_BF16, STATE_Q8 = 0, 1, 2
PMODE_NEAREST, PMODE_STOCHASTIC, PMODE_KAHAN, PMODE_MASTER = 0, 1, 2, 3

#: Scalars row: spec.N_SCALARS (Adam's layout), then -lr * weight_decay (the decoupled decay as an
#: increment, for Kahan compensation; computed in float64, rounded once).
WDM1 = N_SCALARS
N_LOWP_SCALARS = N_SCALARS + 1

assert BLOCK % Q8_BLOCK == 0   # parallel work items start on quantization-block boundaries


# ---------------------------------------------------------------- loads and stores
@njit(inline="always", **JIT_OPTIONS)
def p16_load(h, param_kind):
    """A 16-bit parameter, gradient or compensation value -> float32, exactly."""
    if param_kind == PARAM_F16:
        return f16_load(h)
    return bf16_load(h)


@njit(inline="always", **JIT_OPTIONS)
def p16_store(x, param_kind):
    """float32 -> the 16-bit format of ``param_kind``, round to nearest even."""
    if param_kind == PARAM_F16:
        return f16_store(x)
    return bf16_store(x)


@njit(inline="always", **JIT_OPTIONS)
def load_param(p, w, i, param_kind, pmode):
    """The working (float32) value of parameter i: p[i], its master copy w[i], or p[i]
    decoded from its 16-bit format."""
    if param_kind == PARAM_F32:
        return p[i]
    if pmode == PMODE_MASTER:
        return w[i]
    return p16_load(p[i], param_kind)


@njit(inline="always", **JIT_OPTIONS)
def load_grad(g, i, param_kind):
    if param_kind == PARAM_F32:
        return g[i]
    return p16_load(g[i], param_kind)


@njit(inline="always", **JIT_OPTIONS)
def load_state(s, i, state_kind):
    """Element i of a float32 or bfloat16 state array (8-bit state: see q8_block)."""
    if state_kind == STATE_BF16:
        return bf16_load(s[i])
    return s[i]


@njit(inline="always", **JIT_OPTIONS)
def store_state(s, i, x, state_kind):
    if state_kind == STATE_BF16:
        s[i] = bf16_store(x)
    else:
        s[i] = x


@njit(inline="always", **JIT_OPTIONS)
def store_param(p, w, c, i, p_old, p_dec, upd, wdm1, key, gi, param_kind, pmode, decoupled):
    """Store the new parameter ``p_dec - upd`` (p_old: value before the step; gi: global
    element index and key: the segment's key (lowp.sr_segment_key), for stochastic
    rounding)."""
    if param_kind == PARAM_F32:
        p[i] = p_dec - upd
    elif pmode == PMODE_MASTER:
        x = p_dec - upd
        w[i] = x
        p[i] = p16_store(x, param_kind)
    elif pmode == PMODE_NEAREST:
        p[i] = p16_store(p_dec - upd, param_kind)
    elif pmode == PMODE_STOCHASTIC:
        if param_kind == PARAM_F16:
            p[i] = f16_store_sr(p_dec - upd, sr_bits(key, gi))
        else:
            p[i] = bf16_store_sr(p_dec - upd, sr_bits(key, gi))
    else:  # PMODE_KAHAN: c holds what the 16-bit parameter has not absorbed yet
        delta = -upd
        if decoupled:
            delta = p_old * wdm1 - upd
        cc = p16_load(c[i], param_kind) + delta
        pn = p16_store(p_old + cc, param_kind)
        c[i] = p16_store(cc + (p_old - p16_load(pn, param_kind)), param_kind)
        p[i] = pn


# ---------------------------------------------------------------- loops
@njit(inline="always", **JIT_OPTIONS)
def plain_loop(alg, p, g, m, v, w, c, sc, key, base, param_kind, state_kind, pmode, wd_mode,
               scale_grad):
    """Equal-length segments; ``base`` is the global index of element 0; ``alg``: the
    registry id of the algorithm (kernels/lowp_elem.py)."""
    k = lowp_consts(alg, sc)
    wd, gs, wdm1 = sc[WD], sc[GRAD_SCALE], sc[WDM1]
    decoupled = wd_mode == WD_DECOUPLED
    kahan = pmode == PMODE_KAHAN and param_kind != PARAM_F32
    key = sr_segment_key(key, base)
    for i in range(g.shape[0]):
        pi = load_param(p, w, i, param_kind, pmode)
        pd, mi, vi, upd = lowp_elem(alg, kahan, pi, load_grad(g, i, param_kind),
                                    load_state(m, i, state_kind), load_state(v, i, state_kind),
                                    k, gs, wd, wd_mode, scale_grad)
        store_state(m, i, mi, state_kind)
        store_state(v, i, vi, state_kind)
        store_param(p, w, c, i, pi, pd, upd, wdm1, key, base + i, param_kind, pmode, decoupled)


@njit(inline="always", **JIT_OPTIONS)
def q8_block(alg, p, g, mq, vq, w, c, ms, vs, j, tm, tv, sc, key, base, param_kind, pmode,
             wd_mode, scale_grad):
    """One quantization block (at most Q8_BLOCK elements, scale index j): decode, update,
    store the parameters and keep the new moments in the float32 scratch tm / tv while
    finding their absmax (an integer max over the magnitude bits: vectorises, and NaN's
    bits exceed inf's, so a NaN makes the scale NaN), then encode.

    The second moment is stored as sqrt(v) (codes and absmax of sqrt(v); decoded and
    squared): half the dynamic range in log terms, so small v in a block with a large one
    no longer round to 0 (which made m / sqrt(v) blow up), and sqrt(v) is what the
    update uses anyway (docs/low_precision.md)."""
    k = lowp_consts(alg, sc)
    wd, gs, wdm1 = sc[WD], sc[GRAD_SCALE], sc[WDM1]
    decoupled = wd_mode == WD_DECOUPLED
    kahan = pmode == PMODE_KAHAN and param_kind != PARAM_F32
    key = sr_segment_key(key, base)
    am = ms[j]
    av = vs[j]
    bm = np.int32(0)
    bv = np.int32(0)
    for i in range(g.shape[0]):
        pi = load_param(p, w, i, param_kind, pmode)
        si = q8u_decode(vq[i], av)
        pd, mi, vi, upd = lowp_elem(alg, kahan, pi, load_grad(g, i, param_kind),
                                    q8s_decode(mq[i], am), si * si, k, gs, wd, wd_mode,
                                    scale_grad)
        si = np.sqrt(vi)
        tm[i] = mi
        tv[i] = si
        xm = _absbits(mi)
        xv = _absbits(si)
        bm = xm if xm > bm else bm
        bv = xv if xv > bv else bv
        store_param(p, w, c, i, pi, pd, upd, wdm1, key, base + i, param_kind, pmode, decoupled)
    am = _bits_f32(bm)
    av = _bits_f32(bv)
    ms[j] = am
    vs[j] = av
    im = inv_scale(am)
    iv = inv_scale(av)
    for i in range(g.shape[0]):
        mq[i] = q8s_encode(tm[i], im)
        vq[i] = q8u_encode(tv[i], iv)


@njit(inline="always", **JIT_OPTIONS)
def segment_plain(alg, p, g, m, v, w, c, ms, vs, sc, key, lo, hi, param_kind, state_kind,
                  pmode, wd_mode, scale_grad):
    """Elements [lo, hi) of the flat buffers, float32 or bfloat16 state."""
    master = pmode == PMODE_MASTER and param_kind != PARAM_F32
    kahan = pmode == PMODE_KAHAN and param_kind != PARAM_F32
    plain_loop(alg, p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], w[lo:hi] if master else w[:0],
               c[lo:hi] if kahan else c[:0], sc, key, lo, param_kind, state_kind, pmode,
               wd_mode, scale_grad)


@njit(inline="always", **JIT_OPTIONS)
def segment_q8(alg, p, g, m, v, w, c, ms, vs, sc, key, lo, hi, param_kind, state_kind, pmode,
               wd_mode, scale_grad):
    """Elements [lo, hi) of the flat buffers (lo a multiple of Q8_BLOCK), 8-bit state."""
    master = pmode == PMODE_MASTER and param_kind != PARAM_F32
    kahan = pmode == PMODE_KAHAN and param_kind != PARAM_F32
    tm = np.empty(Q8_BLOCK, np.float32)
    tv = np.empty(Q8_BLOCK, np.float32)
    for a in range(lo, hi, Q8_BLOCK):
        b = min(a + Q8_BLOCK, hi)
        q8_block(alg, p[a:b], g[a:b], m[a:b], v[a:b], w[a:b] if master else w[:0],
                 c[a:b] if kahan else c[:0], ms, vs, a // Q8_BLOCK, tm[:b - a], tv[:b - a],
                 sc, key, a, param_kind, pmode, wd_mode, scale_grad)


# The kernels call segment_q8 or segment_plain under a branch on a closure constant
# (``q8``), which numba prunes before it inlines: a kernel compiles only its own loop
# (numba does not prune the branches of an inlined function on the caller's constants;
# compiling both loops took about twice the time).


@njit(inline="always", **JIT_OPTIONS)
def lowp_scalars(h, t):
    sc = np.empty(N_LOWP_SCALARS, np.float32)
    step_scalars(h, t, True, False, sc[:N_SCALARS])    # decoupled: sc[WD] = 1 - lr * wd
    sc[WDM1] = -h[H_LR] * h[H_WEIGHT_DECAY]
    return sc


@lru_cache(maxsize=None)
def build(param_kind, state_kind, pmode, wd_mode, scale_grad):
    """(serial, parallel) kernels ``k(p, g, m, v, w, c, ms, vs, h, t, key)`` for one layout.

    p, g: float32 or uint16 (bfloat16 or float16 bits); m, v: float32, uint16, or int8 / uint8 codes
    with their absmax arrays ms, vs (float32, one per Q8_BLOCK); w: float32 master copy;
    c: uint16 compensation (the parameter's 16-bit format); unused arrays may be empty. h: float64 hyperparameter row
    (kernels/spec.py layout, Adam's fields), t: the step (>= 1), key: stochastic rounding key (lowp.sr_key)."""
    from .launch import SOURCE_HASH
    param_kind, state_kind, pmode, wd_mode = (int(param_kind), int(state_kind), int(pmode),
                                              int(wd_mode))
    scale_grad = bool(scale_grad)
    l2 = wd_mode == WD_L2
    q8 = state_kind == STATE_Q8
    alg = _ADAM_ID
    source = SOURCE_HASH      # a closure cell: part of numba's cache key (see launch.py)

    @njit(**JIT_OPTIONS)
    def serial(p, g, m, v, w, c, ms, vs, h, t, key):
        if source < 0:
            return
        sc = lowp_scalars(h, t)
        if l2:
            sc[WD] = h[H_WEIGHT_DECAY]
        if q8:
            segment_q8(alg, p, g, m, v, w, c, ms, vs, sc, key, 0, g.shape[0], param_kind,
                       state_kind, pmode, wd_mode, scale_grad)
        else:
            segment_plain(alg, p, g, m, v, w, c, ms, vs, sc, key, 0, g.shape[0], param_kind,
                          state_kind, pmode, wd_mode, scale_grad)

    @njit(parallel=True, **JIT_OPTIONS)
    def parallel(p, g, m, v, w, c, ms, vs, h, t, key):
        if source < 0:
            return
        sc = lowp_scalars(h, t)
        if l2:
            sc[WD] = h[H_WEIGHT_DECAY]
        n = g.shape[0]
        for b in prange((n + BLOCK - 1) // BLOCK):
            lo = b * BLOCK
            hi = min(lo + BLOCK, n)
            if q8:
                segment_q8(alg, p, g, m, v, w, c, ms, vs, sc, key, lo, hi, param_kind,
                           state_kind, pmode, wd_mode, scale_grad)
            else:
                segment_plain(alg, p, g, m, v, w, c, ms, vs, sc, key, lo, hi, param_kind,
                              state_kind, pmode, wd_mode, scale_grad)

    return serial, parallel


# ---------------------------------------------------------------- byte floors
@njit(inline="always", **JIT_OPTIONS)
def _touch(p, g, m, v, w, c, z, zi, param_kind, state_kind, pmode):
    # Reads and writes exactly the layout's bytes with trivial, value-preserving math
    # (z = 0.0 and zi = 0 at run time, so the compiler cannot drop the stores).
    master = pmode == PMODE_MASTER and param_kind != PARAM_F32
    kahan = pmode == PMODE_KAHAN and param_kind != PARAM_F32
    for i in range(g.shape[0]):
        if param_kind == PARAM_F32:
            gi = g[i]
            p[i] = p[i] + z * gi
        else:
            gi = g[i]
            if master:
                w[i] = w[i] + z * np.float32(gi)
                p[i] = zi
            else:
                p[i] = p[i] + zi * gi
            if kahan:
                c[i] = c[i] + zi * gi
        if state_kind == STATE_F32:
            m[i] = m[i] + z
            v[i] = v[i] + z
        else:
            m[i] = m[i] + zi
            v[i] = v[i] + zi


@njit(inline="always", **JIT_OPTIONS)
def _floor_segment(p, g, m, v, w, c, ms, vs, lo, hi, z, zi, param_kind, state_kind, pmode):
    master = pmode == PMODE_MASTER and param_kind != PARAM_F32
    kahan = pmode == PMODE_KAHAN and param_kind != PARAM_F32
    _touch(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], w[lo:hi] if master else w[:0],
           c[lo:hi] if kahan else c[:0], z, zi, param_kind, state_kind, pmode)
    if state_kind == STATE_Q8:
        for j in range(lo // Q8_BLOCK, (hi + Q8_BLOCK - 1) // Q8_BLOCK):
            ms[j] = ms[j] + z
            vs[j] = vs[j] + z


@lru_cache(maxsize=None)
def build_floor(param_kind, state_kind, pmode):
    """(serial, parallel) floor kernels with the arguments of :func:`build` (h, t, key
    ignored): the same bytes as that layout's step, trivial math, the same launch split."""
    from .launch import SOURCE_HASH
    param_kind, state_kind, pmode = int(param_kind), int(state_kind), int(pmode)
    source = SOURCE_HASH

    @njit(**JIT_OPTIONS)
    def serial(p, g, m, v, w, c, ms, vs, h, t, key):
        if source < 0:
            return
        z = np.float32(h[0] * 0.0)
        zi = np.int8(t * 0)
        _floor_segment(p, g, m, v, w, c, ms, vs, 0, g.shape[0], z, zi, param_kind,
                       state_kind, pmode)

    @njit(parallel=True, **JIT_OPTIONS)
    def parallel(p, g, m, v, w, c, ms, vs, h, t, key):
        if source < 0:
            return
        z = np.float32(h[0] * 0.0)
        zi = np.int8(t * 0)
        n = g.shape[0]
        for b in prange((n + BLOCK - 1) // BLOCK):
            lo = b * BLOCK
            _floor_segment(p, g, m, v, w, c, ms, vs, lo, min(lo + BLOCK, n), z, zi,
                           param_kind, state_kind, pmode)

    return serial, parallel
