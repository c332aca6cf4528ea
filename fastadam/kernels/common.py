"""What every algorithm's kernels share: table layouts, the step's scalars, memory
overlap checks, the gradient-norm reduction, and the launchers (flat buffers and chunk
tables, serial and parallel) built around an algorithm's element update.

Everything a cached kernel calls lives in this file or is inlined into a launcher
(``launch.py``), whose cache key carries a hash of the kernel sources: numba re-validates a
cache entry only against the defining file. The launchers are in ``launch.py``; each algorithm module supplies an element
update ``update(p, g, m, v, vmax, pbar, sc, <flags>)``: one pass over equal-length 1-D
arrays, reading its constants from the scalars row ``sc``.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..config import BLOCK, JIT_OPTIONS
from numba import types
from numba.extending import intrinsic

# ---------------------------------------------------------------- raw addresses
# The optimizer steps many separate arrays in one launch through a table of their data
# addresses; ``numba.carray(address_as_pointer(addr, like), n)`` views one of them. The
# caller keeps every addressed array alive for the duration of the call.

@intrinsic
def address_as_pointer(typingctx, addr, like):
    """Pointer to ``like.dtype`` at integer address ``addr``."""
    sig = types.CPointer(like.dtype)(addr, like)

    def codegen(context, builder, signature, args):
        ptr_type = context.get_value_type(signature.return_type)
        return builder.inttoptr(args[0], ptr_type)

    return sig, codegen


@intrinsic
def load_int64(typingctx, addr):
    """The int64 stored at integer address ``addr``."""
    sig = types.int64(addr)

    def codegen(context, builder, signature, args):
        ll_i64 = context.get_value_type(types.int64)
        ptr = builder.inttoptr(args[0], ll_i64.as_pointer())
        return builder.load(ptr)

    return sig, codegen


@intrinsic
def load_int32(typingctx, addr):
    """The C int stored at integer address ``addr``, as int64."""
    sig = types.int64(addr)

    def codegen(context, builder, signature, args):
        ll_i32 = context.get_value_type(types.int32)
        ptr = builder.inttoptr(args[0], ll_i32.as_pointer())
        return builder.sext(builder.load(ptr), context.get_value_type(types.int64))

    return sig, codegen


def _probe_array_layout():
    """Byte offsets of (type, data, nd, dimensions, descr, flags) inside a NumPy array
    object (PyArrayObject_fields: PyObject_HEAD, then data, nd, dimensions, strides,
    base, descr, flags), or None when this build lays it out differently.

    Reading them in compiled code replaces per-array Python work (``arr.ctypes.data``
    alone costs ~1.5 us) when many gradient arrays arrive each step. Verified here, at
    import, on arrays that differ in every way that could matter; without it callers use
    the Python path."""
    import ctypes

    import numpy as np

    word = ctypes.sizeof(ctypes.c_void_p)
    if word != 8 or ctypes.sizeof(ctypes.c_ssize_t) != 8:
        return None
    layout = dict(type=8, data=16, nd=24, dimensions=32, descr=56, flags=64)
    base = np.arange(64, dtype=np.float64)
    probes = [base, base[3:], base[5:40].reshape(5, 7), np.zeros(0, np.float32),
              np.ones(3, np.float32)[1:], np.empty((2, 3), np.float32),
              np.empty((4, 6), np.float32)[:, ::2], np.zeros((1, 1, 2))]

    def word_at(a, off):
        return ctypes.c_ssize_t.from_address(id(a) + off).value

    for a in probes:
        dims = word_at(a, layout["dimensions"])
        if (word_at(a, layout["type"]) != id(type(a))
                or word_at(a, layout["data"]) != a.ctypes.data
                or ctypes.c_int.from_address(id(a) + layout["nd"]).value != a.ndim
                or (a.ndim and [ctypes.c_ssize_t.from_address(dims + 8 * j).value
                                for j in range(a.ndim)] != list(a.shape))
                or word_at(a, layout["descr"]) != id(a.dtype)
                or bool(ctypes.c_int.from_address(id(a) + layout["flags"]).value & 1)
                != a.flags.c_contiguous):
            return None
    return layout


_layout = _probe_array_layout()
#: Whether kernels may read gradient arrays' fields from the array objects (see above).
HAVE_ARRAY_DATA_OFFSET = _layout is not None
_layout = _layout or dict(type=0, data=0, nd=0, dimensions=0, descr=0, flags=0)
ARRAY_DATA_OFFSET = _layout["data"]
_TYPE_OFFSET, _ND_OFFSET = _layout["type"], _layout["nd"]
_DIMS_OFFSET, _DESCR_OFFSET, _FLAGS_OFFSET = (_layout["dimensions"], _layout["descr"],
                                               _layout["flags"])
NPY_ARRAY_C_CONTIGUOUS = 0x0001


@njit(**JIT_OPTIONS)
def first_unlike(refs, expect, dims):
    """-1, or the first k whose array object (address ``refs[k]``) is not exactly an
    ndarray (type expect[k, 0]) of dtype object expect[k, 1], C-contiguous, with
    expect[k, 2] dimensions equal to dims[expect[k, 3]:...]. A cheap acceptance test:
    on a miss the caller checks that array in Python (which may still accept it)."""
    for k in range(refs.shape[0]):
        a = refs[k]
        if (load_int64(a + _TYPE_OFFSET) != expect[k, 0]
                or load_int64(a + _DESCR_OFFSET) != expect[k, 1]
                or (load_int32(a + _FLAGS_OFFSET) & NPY_ARRAY_C_CONTIGUOUS) == 0):
            return k
        nd = expect[k, 2]
        if load_int32(a + _ND_OFFSET) != nd:
            return k
        d = load_int64(a + _DIMS_OFFSET)
        s = expect[k, 3]
        for j in range(nd):
            if load_int64(d + 8 * j) != dims[s + j]:
                return k
    return -1


# ---------------------------------------------------------------- layouts
WD_NONE, WD_L2, WD_DECOUPLED = 0, 1, 2
ADAM, ADAMAX = 0, 1          # algorithm ids of the launchers

# Hyperparameters, one float64 row per param group. The kernels turn them into the
# step's scalars, so Python does no per-step arithmetic. H_GRAD_SCALE is -1 for maximize
# (else 1); H_CLIP_COEF is this step's clipping factor (1 when not clipping).
(H_LR, H_BETA1, H_BETA2, H_EPS, H_WEIGHT_DECAY, H_GRAD_SCALE, H_AVERAGE,
 H_BIAS_CORRECTION, H_EPS_HAT, H_CLIP_COEF) = range(10)
N_HYPER = 10

# The step's scalars in the buffer dtype, as the update loops read them.
B1, OMB1, B2, OMB2, STEP_SIZE, EPS_EFF, WD, GRAD_SCALE, AVG_B, OMAVG_B = range(10)
N_SCALARS = 10

# Columns of the chunk plan of the table kernels; rows of the state block.
P_ADDR, G_REF, LENGTH, OFFSET, GROUP = range(5)
M_ROW, V_ROW, VMAX_ROW = 0, 1, 2          # the parameter average is always the last row

ARRAY_NAMES = ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "param_avg")


def hyper_row(*, lr, beta1, beta2, eps, weight_decay, bias_correction=True,
              eps_mode="paper", maximize=False, average=0.0):
    """The float64 hyperparameter row (H_* layout) the kernels read."""
    return (lr, beta1, beta2, eps, weight_decay, -1.0 if maximize else 1.0, average,
            1.0 if bias_correction else 0.0, 1.0 if eps_mode == "hat" else 0.0, 1.0)


@njit(**JIT_OPTIONS)
def step_scalars(h, t, decoupled, adamax, out):
    """Write step t's scalars (float64 math, rounded once to out's dtype) into ``out``.

    bc1 = 1 - b1**t, bc2 = 1 - b2**t from the integer step with pow (no running product,
    so no drift over long runs). Adam: step_size = lr*sqrt(bc2)/bc1 and eps_eff =
    eps*sqrt(bc2) ("paper") or eps ("hat"). AdaMax: step_size = lr/bc1, eps_eff = eps."""
    lr = h[H_LR]
    b1 = h[H_BETA1]
    b2 = h[H_BETA2]
    eps = h[H_EPS]
    bc1 = 1.0
    bc2_sqrt = 1.0
    if h[H_BIAS_CORRECTION] != 0.0:
        tf = float(t)
        bc1 = 1.0 - b1 ** tf
        if not adamax:
            bc2_sqrt = np.sqrt(1.0 - b2 ** tf)
    out[B1] = b1
    out[OMB1] = 1.0 - b1
    out[B2] = b2
    out[OMB2] = 1.0 - b2
    out[STEP_SIZE] = lr * bc2_sqrt / bc1
    out[EPS_EFF] = eps if (adamax or h[H_EPS_HAT] != 0.0) else eps * bc2_sqrt
    out[WD] = 1.0 - lr * h[H_WEIGHT_DECAY] if decoupled else h[H_WEIGHT_DECAY]
    out[GRAD_SCALE] = h[H_GRAD_SCALE] * h[H_CLIP_COEF]
    out[AVG_B] = h[H_AVERAGE]
    out[OMAVG_B] = 1.0 - h[H_AVERAGE]


@njit(**JIT_OPTIONS)
def _grad_address(plan, k, g_from_object):
    a = plan[k, G_REF]
    if g_from_object:
        a = load_int64(a + ARRAY_DATA_OFFSET)
    return a


@njit(**JIT_OPTIONS)
def first_alias(plan, g_from_object, forbid, itemsize):
    """-1, or the first chunk whose gradient overlaps one of the sorted, disjoint
    [start, stop) byte ranges in ``forbid`` (parameters and state)."""
    if forbid.shape[0] == 0:
        return -1
    for k in range(plan.shape[0]):
        n = plan[k, LENGTH]
        if n == 0:
            continue
        a = _grad_address(plan, k, g_from_object)
        b = a + n * itemsize
        j = np.searchsorted(forbid[:, 0], b) - 1   # last range starting before b
        if j >= 0 and forbid[j, 1] > a:
            return k
    return -1


@njit(**JIT_OPTIONS)
def _span(a):
    return a.ctypes.data, a.ctypes.data + a.size * a.itemsize


@njit(**JIT_OPTIONS)
def first_overlap(p, g, m, v, vmax, pbar):
    """-1, or i * 6 + j for the first pair (i < j, ARRAY_NAMES order) of non-empty
    arrays whose memory overlaps."""
    lo = np.empty(6, np.int64)
    hi = np.empty(6, np.int64)
    lo[0], hi[0] = _span(p)
    lo[1], hi[1] = _span(g)
    lo[2], hi[2] = _span(m)
    lo[3], hi[3] = _span(v)
    lo[4], hi[4] = _span(vmax)
    lo[5], hi[5] = _span(pbar)
    for i in range(6):
        for j in range(i + 1, 6):
            if lo[i] < hi[i] and lo[j] < hi[j] and lo[i] < hi[j] and lo[j] < hi[i]:
                return i * 6 + j
    return -1


# ---------------------------------------------------------------- gradient norms
@njit(nogil=True, cache=True, error_model="numpy", boundscheck=False,
      fastmath={"reassoc", "contract"})
def _sumsq(g):
    # Sum of squares accumulated in float64; reassoc lets LLVM vectorise the reduction.
    # The order is fixed by the compiled code, so the result does not depend on threads.
    s = 0.0
    for i in range(g.shape[0]):
        x = np.float64(g[i])
        s += x * x
    return s


@njit(**JIT_OPTIONS)
def _block_sumsq(plan, blocks, b, g_from_object, like):
    k = blocks[b, 0]
    lo = blocks[b, 1]
    n = blocks[b, 2] - lo
    a = _grad_address(plan, k, g_from_object) + lo * like.itemsize
    return _sumsq(numba.carray(address_as_pointer(a, like), n))


@njit(**JIT_OPTIONS)
def _group_totals(plan, blocks, partial, out):
    for b in range(blocks.shape[0]):   # block order: deterministic for any thread count
        out[plan[blocks[b, 0], GROUP]] += partial[b]


@njit(**JIT_OPTIONS)
def grad_sumsq_serial(plan, g_from_object, blocks, like, out):
    """Add each group's sum of squared gradients (float64) into ``out[group]``."""
    partial = np.empty(blocks.shape[0])
    for b in range(blocks.shape[0]):
        partial[b] = _block_sumsq(plan, blocks, b, g_from_object, like)
    _group_totals(plan, blocks, partial, out)


@njit(parallel=True, **JIT_OPTIONS)
def grad_sumsq_parallel(plan, g_from_object, blocks, like, out):
    partial = np.empty(blocks.shape[0])
    for b in prange(blocks.shape[0]):
        partial[b] = _block_sumsq(plan, blocks, b, g_from_object, like)
    _group_totals(plan, blocks, partial, out)


def split_blocks(length):
    """(n_blocks x 3) int64 table (chunk, start, stop) covering every chunk in pieces of
    at most BLOCK elements: the parallel work split."""
    rows = []
    for k, n in enumerate(np.asarray(length).tolist()):
        for lo in range(0, n, BLOCK):
            rows.append((k, lo, min(lo + BLOCK, n)))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)
