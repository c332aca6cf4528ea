"""Low-precision state, decoded and converted: :func:`decode_state` (any state to float32
moments), :func:`encode_moments` (float32 moments to a state_dict's low-precision
arrays) and :func:`convert_state_dict` (an optimizer's state_dict from one
``state_dtype`` to another, the explicit conversion ``load_state_dict`` asks for).
Exported from :mod:`fastadam.lowp` as well.

Encoding rounds as the kernels store (kernels/lowp.py): bfloat16 to nearest even, int8
per block of ``Q8_BLOCK`` elements (absmax, then the nearest code); decoding is exact.
"""
from __future__ import annotations

import numpy as np

from .kernels.q8 import Q8_BLOCK


def decode_state(state):
    """(exp_avg, exp_avg_sq) of a state as float32 arrays (new arrays); of an AdaMax
    state (exp_avg, exp_inf)."""
    from .kernels.q8 import Q8S_TABLE, Q8U_TABLE
    m, v = state["exp_avg"], state["exp_inf" if "exp_inf" in state else "exp_avg_sq"]
    if m.dtype == np.int8:
        n = m.shape[0]
        sm = np.repeat(state["exp_avg_absmax"], Q8_BLOCK)[:n]
        sv = np.repeat(state["exp_avg_sq_absmax"], Q8_BLOCK)[:n]
        s = Q8U_TABLE[v] * sv
        return Q8S_TABLE[m.astype(np.int64) + 128] * sm, s * s
    return m.astype(np.float32), v.astype(np.float32)


def _nearest_code(table, x):
    """Index of the nearest value of the ascending ``table`` to each x (ties: lower)."""
    i = np.clip(np.searchsorted(table, x), 1, table.shape[0] - 1)
    lo, hi = table[i - 1], table[i]
    return np.where(np.abs(x - lo) <= np.abs(hi - x), i - 1, i)


def encode_moments(m, v, state_dtype):
    """Low-precision state arrays (as in an optimizer's state_dict: bfloat16 as uint16
    bits) of float32 moments ``m``, ``v`` (1-D). bfloat16: round to nearest even; int8:
    per block of ``Q8_BLOCK`` the absmax of m and of sqrt(v), then the nearest code."""
    from .kernels.lowp import bf16_round_np
    from .kernels.q8 import Q8S_TABLE, Q8U_TABLE
    m = np.ascontiguousarray(m, np.float32).reshape(-1)
    v = np.ascontiguousarray(v, np.float32).reshape(-1)
    if state_dtype == "float32":
        return {"exp_avg": m.copy(), "exp_avg_sq": v.copy()}
    if state_dtype == "bfloat16":
        return {"exp_avg": bf16_round_np(m), "exp_avg_sq": bf16_round_np(v)}
    from .lowp import q8_blocks
    n, nb = m.shape[0], q8_blocks(m.shape[0])
    pad = nb * Q8_BLOCK - n
    s = np.sqrt(v)
    out = {}
    for key, x, table, dt, off in (("exp_avg", m, Q8S_TABLE[1:], np.int8, -127),
                                   ("exp_avg_sq", s, Q8U_TABLE, np.uint8, 0)):
        blocks = np.concatenate([x, np.zeros(pad, np.float32)]).reshape(nb, Q8_BLOCK)
        absmax = np.abs(blocks).max(axis=1).astype(np.float32)
        inv = np.where(absmax > 0, np.float32(1) / np.where(absmax > 0, absmax, 1), 0)
        y = (blocks * inv[:, None].astype(np.float32)).reshape(-1)[:n]
        out[key] = (_nearest_code(table, y) + off).astype(dt)
        out[key + "_absmax"] = absmax
    return out


def _moments_of(st, state_dtype, where, second="exp_avg_sq"):
    """float32 (m, v), 1-D, of one parameter's state in a state_dict (v: the array named
    ``second``)."""
    from .kernels.lowp import bf16_to_f32_np
    m, v = st.get("exp_avg"), st.get(second)
    if not isinstance(m, np.ndarray) or not isinstance(v, np.ndarray):
        raise ValueError(f"{where} needs numpy arrays 'exp_avg' and {second!r}")
    if state_dtype == "float32":
        if m.dtype != np.float32 or v.dtype != np.float32:
            raise TypeError(f"{where}: float32 state must have float32 moments, got "
                            f"{m.dtype}/{v.dtype}")
        return m.reshape(-1), v.reshape(-1)
    if state_dtype == "bfloat16":
        return bf16_to_f32_np(m.view(np.uint16)), bf16_to_f32_np(v.view(np.uint16))
    return decode_state({k: st[k] for k in ("exp_avg", "exp_avg_sq", "exp_avg_absmax",
                                            "exp_avg_sq_absmax")})


def convert_state_dict(state_dict, *, state_dtype, shapes=None):
    """A new state_dict of an Adam/AdamW optimizer with its moments in ``state_dtype``
    ("float32", "bfloat16" or "int8"; of an Adamax optimizer: "float32" or "bfloat16",
    ``exp_avg`` and ``exp_inf``; of NAdam: as Adam's, ``mu_product`` carried over
    unchanged; of RAdam: "float32" or "bfloat16"): the explicit conversion an optimizer requires
    before loading a state of another state_dtype. Decoding (to float32) is exact;
    encoding to fewer bits rounds as the optimizer's step would (bfloat16: nearest even;
    int8: per-block absmax, nearest code). Low-precision arrays are 1-D; converting to
    "float32" gives 1-D moments too unless ``shapes`` (the parameters' shapes, in order)
    is given, which ``load_state_dict`` of a float32 optimizer requires.
    The input is not modified."""
    from .lowp import SECOND
    from .optim.lowp import STATE_DTYPES as _SD, layout_name, state_dtype_of
    if not isinstance(state_dict, dict) or "state" not in state_dict:
        raise TypeError("state_dict must be an optimizer state_dict (a dict with 'state')")
    if not isinstance(state_dtype, str) or state_dtype not in _SD:
        raise ValueError(f"state_dtype must be one of {_SD}, got {state_dtype!r}")
    algorithm = state_dict.get("algorithm", "adam")
    if algorithm not in SECOND:
        raise ValueError(f"state_dict is from a {algorithm!r} optimizer; conversion is for "
                         f"{tuple(SECOND)}")
    second = SECOND[algorithm]
    from .lowp import NO_INT8
    if algorithm in NO_INT8 and state_dtype == "int8":
        raise ValueError(f"state_dtype='int8' is not available for {algorithm!r} state "
                         "(use 'bfloat16' or 'float32')")
    have = state_dtype_of(state_dict)
    if have not in _SD:
        raise ValueError(f"state_dict['state_dtype'] is {have!r}, not one of {_SD}")
    if state_dtype == "float32" and shapes is None:
        raise ValueError("shapes (the parameters' shapes) is needed to convert to float32 "
                         "state")
    state = {}
    for i, st in state_dict["state"].items():
        where = f"state_dict['state'][{i!r}]"
        if not isinstance(st, dict):
            raise TypeError(f"{where} must be a dict")
        if "exp_avg" not in st:
            state[i] = dict(st)
            continue
        if "max_exp_avg_sq" in st or "param_avg" in st:
            raise ValueError(f"{where} holds AMSGrad or averaging state, which low-precision "
                             "state does not have")
        m, v = _moments_of(st, have, where, second)
        new = {k: val for k, val in st.items() if not isinstance(val, np.ndarray)}
        enc = encode_moments(m, v, state_dtype)
        if second != "exp_avg_sq":
            enc[second] = enc.pop("exp_avg_sq")
        if state_dtype == "float32":
            shape = tuple(shapes[int(i)])
            enc = {k: a.reshape(shape) for k, a in enc.items()}
        new.update(enc)
        state[i] = new
    out = {k: v for k, v in state_dict.items() if k not in ("state", "state_dtype",
                                                            "state_layout")}
    out["state"] = state
    out["param_groups"] = [dict(g) for g in state_dict.get("param_groups", [])]
    if state_dtype != "float32":
        out["state_dtype"] = state_dtype
        out["state_layout"] = layout_name(state_dtype)
    return out
