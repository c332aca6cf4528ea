"""Functional API for low-precision Adam: fewer bytes per parameter and step.

``init_lowp_state`` builds the state of one flat parameter buffer as a dict of named NumPy
arrays; ``adam_step_lowp`` steps it in one fused pass. The state's arrays are the whole
state (codes and scales included): saving them and loading them back resumes exactly.

Layouts (bytes moved per parameter and step; float32 Adam moves 28):

====================  =================  =========================  =================
param / grad          state_dtype        precision of the param     bytes / step
====================  =================  =========================  =================
float32               "float32"          --                         28
float32               "bfloat16"         --                         20
float32               "int8"             --                         16 (+ scales)
bfloat16              "float32"/...      rounding="nearest"         22 / 14 / 10
bfloat16              any                rounding="stochastic"      as nearest
bfloat16              any                compensation=True          + 4 (bf16 buffer)
bfloat16              any                master_weights=True        + 6 (float32 copy,
                                                                    param write-only)
====================  =================  =========================  =================

bfloat16 arrays are ``ml_dtypes.bfloat16`` (the dtype of JAX and TensorFlow). float16
parameters (``numpy.float16``, IEEE half) take the bfloat16 rows above (the compensation
buffer is float16). The kernels work on both as uint16 bits and compute in float32.

Design: a state *dict* instead of more positional arrays, because the arrays a layout
needs differ (two absmax arrays for int8, a master copy or a compensation buffer for
bfloat16 parameters); the dict's dtypes say which layout it is, so a step cannot be
called with a layout other than the one its state was built for, and the names are those
the optimizer's ``state_dict`` uses.
"""
from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from . import _checks as C
from . import config
from .kernels import adam_lowp as A
from .kernels.lowp import sr_key
from .kernels.q8 import Q8_BLOCK
# the layout decisions, read as fastadam.lowp.<name> too
from .lowp_layout import (ROUNDINGS, _bfloat16, _is_16bit,  # noqa: F401
                          _param_kind, check_precision_choice, check_rounding_seed, pmode_of,
                          state_kind)
from .kernels.spec import wd_mode

STATE_DTYPES = ("float32", "bfloat16", "int8")
_STATE_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_absmax", "exp_avg_sq_absmax", "master",
               "compensation")
#: The second state array of each algorithm with low-precision state (AdaMax: the
#: infinity norm, bfloat16 or float32 only; fastadam.lowp_adamax).
SECOND = {"adam": "exp_avg_sq", "adamw": "exp_avg_sq", "adamax": "exp_inf",
          "nadam": "exp_avg_sq", "radam": "exp_avg_sq"}
#: Algorithms without 8-bit state, and why.
NO_INT8 = {"adamax": "the 8-bit code maps are analysed for Adam's and NAdam's updates only",
           "radam": "measured: the final training loss of a digits MLP moves 3-5% from "
                    "float32 state's, beyond the 2% the other layouts keep"}
_INF = float("inf")


def q8_blocks(n):
    """Number of 8-bit quantization blocks (absmax entries) for n elements."""
    return (n + Q8_BLOCK - 1) // Q8_BLOCK


def _check_param(param, name="param"):
    if not isinstance(param, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(param).__name__}")
    if param.dtype != np.float32 and not _is_16bit(param.dtype):
        raise TypeError(f"{name} must have dtype float32, bfloat16 (ml_dtypes) or float16, got "
                        f"{param.dtype}; float64 parameters take fastadam.adam_step")
    if param.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {param.shape}")
    if not param.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; pass np.ascontiguousarray({name})")


def init_lowp_state(param, *, state_dtype="bfloat16", master_weights=False,
                    compensation=False, algorithm="adam"):
    """The zero state of ``param`` (1-D float32, bfloat16 or float16) for :func:`adam_step_lowp`.

    ``state_dtype``: "float32", "bfloat16" (moments rounded to nearest even when stored)
    or "int8" (blockwise 8-bit codes: ``exp_avg`` int8 codes of m, ``exp_avg_sq`` uint8
    codes of sqrt(v), and a float32 absmax per block of ``kernels.lowp.Q8_BLOCK``
    elements in ``exp_avg_absmax`` (of m) / ``exp_avg_sq_absmax`` (of sqrt(v))).
    :func:`decode_state` turns any state back into float32 moments. For bfloat16 or
    float16 parameters, ``master_weights=True`` adds a float32 copy ``master``
    (initialised from param) that the step updates, ``compensation=True`` a Kahan buffer
    ``compensation`` (zeros) of the parameter's dtype.

    ``algorithm="adamax"``: the state of :func:`fastadam.adamax_step_lowp`, ``exp_avg``
    and ``exp_inf`` ("float32" or "bfloat16"; 8-bit AdaMax state is not provided).
    ``algorithm="nadam"`` / ``"radam"``: the state of :func:`fastadam.nadam_step_lowp` /
    :func:`fastadam.radam_step_lowp` (``exp_avg``, ``exp_avg_sq``; every parameter dtype
    and option above; "int8" for NAdam only: :data:`NO_INT8`)."""
    _check_param(param)
    if not isinstance(state_dtype, str) or state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be one of {STATE_DTYPES}, got {state_dtype!r}")
    if not isinstance(algorithm, str) or algorithm not in SECOND:
        raise ValueError(f"algorithm must be one of {tuple(SECOND)}, got {algorithm!r}")
    if algorithm in NO_INT8 and state_dtype == "int8":
        raise ValueError(f"state_dtype='int8' is not available for algorithm={algorithm!r} "
                         f"({NO_INT8[algorithm]}; see docs/low_precision.md): use "
                         "'bfloat16' or 'float32'")
    master_weights = C.check_bool("master_weights", master_weights)
    compensation = C.check_bool("compensation", compensation)
    if (master_weights or compensation) and not _is_16bit(param.dtype):
        name = "master_weights" if master_weights else "compensation"
        raise ValueError(f"{name}=True needs bfloat16 or float16 parameters (param is {param.dtype}: "
                         "float32 parameters are stepped exactly already)")
    check_precision_choice(master_weights, compensation, "nearest")
    n = param.shape[0]
    if state_dtype == "float32":
        state = {"exp_avg": np.zeros(n, np.float32), "exp_avg_sq": np.zeros(n, np.float32)}
    elif state_dtype == "bfloat16":
        bf = _bfloat16()
        state = {"exp_avg": np.zeros(n, bf), "exp_avg_sq": np.zeros(n, bf)}
    else:
        nb = q8_blocks(n)
        state = {"exp_avg": np.zeros(n, np.int8), "exp_avg_sq": np.zeros(n, np.uint8),
                 "exp_avg_absmax": np.zeros(nb, np.float32),
                 "exp_avg_sq_absmax": np.zeros(nb, np.float32)}
    if algorithm == "adamax":
        state["exp_inf"] = state.pop("exp_avg_sq")
    if master_weights:
        state["master"] = param.astype(np.float32)
    if compensation:
        state["compensation"] = np.zeros(n, param.dtype)
    return state


def state_bytes_per_param(state, n=None):
    """Bytes of optimizer state per parameter (the master copy and compensation buffer
    included, the parameters and gradients not)."""
    arrays = [a for a in state.values() if isinstance(a, np.ndarray)]
    if n is None:
        n = state["exp_avg"].shape[0]
    return sum(a.nbytes for a in arrays) / max(n, 1)


def _state_array(state, key, dtype, shape, label):
    a = state[key]
    name = f"state[{key!r}]"
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} ({label}), got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it must be writable to be updated in place")
    return a


def _layout(param, grad, state, second="exp_avg_sq"):
    """Validate and return (param_kind, state_kind, named arrays). ``second``: the name of
    the second state array (SECOND)."""
    _check_param(param)
    if not param.flags.writeable:
        raise ValueError("param is read-only; it must be writable to be updated in place")
    if not isinstance(grad, np.ndarray):
        raise TypeError(f"grad must be a numpy.ndarray, got {type(grad).__name__}")
    if grad.dtype != param.dtype:
        raise TypeError(f"grad must have dtype {param.dtype} (like its parameter), got "
                        f"{grad.dtype}; mixed parameter and gradient dtypes are not supported")
    if grad.shape != param.shape:
        raise ValueError(f"grad must have shape {param.shape}, got {grad.shape}")
    if not grad.flags.c_contiguous:
        raise ValueError("grad must be C-contiguous; pass np.ascontiguousarray(grad)")
    if not isinstance(state, MutableMapping):
        raise TypeError(f"state must be a dict from init_lowp_state, got {type(state).__name__}")
    known = _STATE_KEYS if second == "exp_avg_sq" else (
        "exp_avg", second, "master", "compensation")
    for key in state:
        if key not in known:
            raise ValueError(f"state has an unknown entry {key!r}; expected keys among "
                             f"{known}")
    for key in ("exp_avg", second):
        if key not in state:
            raise ValueError(f"state has no {key!r}; build it with init_lowp_state")
    n = param.shape[0]
    m0 = state["exp_avg"]
    if not isinstance(m0, np.ndarray):
        raise TypeError(f"state['exp_avg'] must be a numpy.ndarray, got {type(m0).__name__}")
    kind = state_kind(m0.dtype)
    if kind is None or (kind == A.STATE_Q8 and second != "exp_avg_sq"):
        raise TypeError(f"state['exp_avg'] has dtype {m0.dtype}; the state dtypes are "
                        f"{STATE_DTYPES} (see init_lowp_state)")
    dts = {A.STATE_F32: (np.dtype(np.float32),) * 2, A.STATE_BF16: (m0.dtype, m0.dtype),
           A.STATE_Q8: (np.dtype(np.int8), np.dtype(np.uint8))}[kind]
    label = {A.STATE_F32: "float32 state", A.STATE_BF16: "bfloat16 state",
             A.STATE_Q8: "int8 state: exp_avg int8, exp_avg_sq uint8"}[kind]
    arrays = {"exp_avg": _state_array(state, "exp_avg", dts[0], (n,), label),
              second: _state_array(state, second, dts[1], (n,), label)}
    q8_keys = ("exp_avg_absmax", "exp_avg_sq_absmax")
    for key in q8_keys:
        if kind == A.STATE_Q8:
            if key not in state:
                raise ValueError(f"state has no {key!r}, which int8 state needs")
            arrays[key] = _state_array(state, key, np.dtype(np.float32), (q8_blocks(n),),
                                       "the per-block scales of int8 state")
        elif key in state:
            raise ValueError(f"state[{key!r}] belongs to int8 state, but state['exp_avg'] "
                             f"is {m0.dtype}")
    param_kind = _param_kind(param.dtype)
    for key in ("master", "compensation"):
        if key in state:
            if param_kind == A.PARAM_F32:
                raise ValueError(f"state[{key!r}] is for bfloat16 or float16 parameters; "
                                 f"param is {param.dtype}")
            dt = np.dtype(np.float32) if key == "master" else param.dtype
            arrays[key] = _state_array(state, key, dt, (n,), f"the {key} of {param.dtype} params")
    if "master" in arrays and "compensation" in arrays:
        raise ValueError("state has both 'master' and 'compensation'; use one of them")
    return param_kind, kind, arrays


def _check_hyper(step, lr, betas, eps, weight_decay):
    if not (type(step) is int and 1 <= step <= C.MAX_STEP):
        step = C.check_step(step)
    if not (type(lr) is float and 0.0 <= lr < _INF):
        lr = C.check_lr(lr)
    if not (type(betas) is tuple and len(betas) == 2 and type(betas[0]) is float
            and type(betas[1]) is float and 0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        betas = C.check_betas(betas)
    if not (type(eps) is float and 0.0 <= eps < _INF):
        eps = C.check_eps(eps)
    if not (type(weight_decay) is float and 0.0 <= weight_decay < _INF):
        weight_decay = C.check_weight_decay(weight_decay)
    return step, lr, betas, eps, weight_decay


_EMPTY32 = np.empty(0, np.float32)
_EMPTY16 = np.empty(0, np.uint16)


def _u16(a):
    return a.view(np.uint16) if a.dtype.itemsize == 2 and a.dtype.kind != "u" else a


def adam_step_lowp(param, grad, state, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                   weight_decay=0.0, decoupled_weight_decay=False, maximize=False,
                   bias_correction=True, eps_mode="paper", rounding="nearest", seed=0):
    r"""One fused Adam / AdamW step on a flat float32, bfloat16 or float16 ``param``
    with the low-precision ``state`` of :func:`init_lowp_state`, in place.

    The formulas and hyperparameters are :func:`fastadam.adam_step`'s (no amsgrad).
    Every element is computed in float32 from the decoded parameter, gradient and
    moments; each value is rounded once when it is stored: bfloat16 moments to nearest
    even; int8 moments block by block (the block's new values, their absmax, then the
    nearest code); the parameter as ``rounding`` says for bfloat16 and float16
    parameters:

    * ``"nearest"``: round to nearest even. Updates smaller than half a bfloat16 ulp of
      the parameter (|p| * 2**-9; float16: |p| * 2**-12) are lost, every step: training
      stalls once lr is small relative to |p| / 256 (float16: |p| / 2048). Use one of
      the three below for long runs;
    * ``"stochastic"``: rounds up with probability equal to the remainder, so the
      expected stored value is the exact one. The random bits are a hash of
      (``seed``, ``step``, element index): reproducible for a seed, identical for any
      thread count;
    * ``state["compensation"]`` (init with compensation=True): Kahan summation, the part
      of each update the parameter could not absorb is kept in a buffer of the
      parameter's dtype;
    * ``state["master"]`` (init with master_weights=True): a float32 copy is stepped
      exactly as float32 Adam would (bit for bit given the same gradients) and the
      parameter receives its rounded value in the same pass.

    Raises TypeError/ValueError naming the argument, changing nothing, on bad input.
    """
    kernels, n, head, tail, sr_seed, _ = prepare_adam_lowp(
        param, grad, state, step=step, lr=lr, betas=betas, eps=eps,
        weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize, bias_correction=bias_correction, eps_mode=eps_mode,
        rounding=rounding, seed=seed)
    launch(kernels, n, *head, _u16(grad), *tail, step,
           0 if sr_seed is None else sr_key(sr_seed, step))


def prepare_adam_lowp(param, grad, state, *, step, lr, betas, eps, weight_decay,
                      decoupled_weight_decay, maximize, bias_correction, eps_mode,
                      rounding="nearest", seed=0, layout=None):
    """Every check of :func:`adam_step_lowp`, and its launch without the per-step values:
    (kernels, n, head, tail, sr_seed, layout); the step runs
    ``launch(kernels, n, *head, grad_bits, *tail, step, key)`` with ``key`` =
    ``sr_key(sr_seed, step)`` (0 when ``sr_seed`` is None: no stochastic rounding).
    The optimizer keeps this and checks only the gradients at each step (optim/lowp.py).
    ``layout``: the one returned for the same arrays, rounding and seed, which skips
    their checks (the optimizer's hyperparameter edits); the hyperparameters are always
    checked."""
    step, lr, betas, eps, weight_decay = _check_hyper(step, lr, betas, eps, weight_decay)
    for name, flag in (("decoupled_weight_decay", decoupled_weight_decay),
                       ("maximize", maximize), ("bias_correction", bias_correction)):
        if flag is not True and flag is not False:
            C.check_bool(name, flag)
    C.check_eps_mode(eps_mode)
    if layout is None:
        layout = _checked_layout(param, grad, state, rounding, seed, "exp_avg_sq")
    param_kind, kind, arrays, pmode = layout
    from .functional import _ADAM           # Adam's validated hyperparameter row
    h = _ADAM.setup(lr, tuple(betas), eps, weight_decay, decoupled_weight_decay, False,
                    maximize, bias_correction, eps_mode).h
    m, v = _u16(arrays["exp_avg"]), _u16(arrays["exp_avg_sq"])
    ms = arrays.get("exp_avg_absmax", _EMPTY32)
    vs = arrays.get("exp_avg_sq_absmax", _EMPTY32)
    w, c = _precision_arrays(arrays)
    kernels = A.build(param_kind, kind, pmode,
                      wd_mode(weight_decay, decoupled_weight_decay), maximize)
    sr_seed = int(seed) if pmode == A.PMODE_STOCHASTIC else None
    return kernels, param.shape[0], (_u16(param),), (m, v, w, c, ms, vs, h), sr_seed, layout


def launch(kernels, n, *args):
    """Run the (serial, parallel) pair on n elements (the parallel one under the launch
    lock)."""
    if config.use_parallel(n):
        with config.launch_lock():
            kernels[1](*args)
    else:
        kernels[0](*args)


def _precision_arrays(arrays):
    """(master, compensation as uint16) of a validated state, empty where absent."""
    w = arrays.get("master", _EMPTY32)
    c = _u16(arrays["compensation"]) if "compensation" in arrays else _EMPTY16
    return w, c


def _checked_layout(param, grad, state, rounding, seed, second):
    """rounding/seed and the arrays checked: (param_kind, state_kind, arrays, pmode)."""
    check_rounding_seed(rounding, seed)
    param_kind, kind, arrays = _layout(param, grad, state, second)
    pmode = pmode_of(param_kind, arrays, rounding)
    if param_kind != A.PARAM_F32:
        if rounding == "stochastic" and pmode != A.PMODE_STOCHASTIC:
            raise ValueError("rounding='stochastic' cannot be combined with "
                             f"state[{'master' if pmode == A.PMODE_MASTER else 'compensation'!r}]"
                             ": choose one way to keep the parameter's precision")
    elif rounding != "nearest":
        raise ValueError("rounding='stochastic' needs bfloat16 or float16 parameters "
                         "(float32 parameters are not rounded)")
    C.check_no_overlap([("param", param), ("grad", grad)]
                       + [(f"state[{k!r}]", a) for k, a in arrays.items()])
    return param_kind, kind, arrays, pmode


# state_dict conversion and decoding (fastadam/lowp_convert.py), exported here too; at the
# end because that module reads this one's layout helpers.
from .lowp_convert import convert_state_dict, decode_state, encode_moments  # noqa: E402,F401

# the benchmarks' byte floor of a layout (fastadam/lowp_floor.py), read here as before
from .lowp_floor import floor_lowp, prepare_floor  # noqa: E402,F401
