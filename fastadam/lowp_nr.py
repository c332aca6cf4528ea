"""Functional API for NAdam and RAdam with low-precision state and parameters.

``init_lowp_state(param, state_dtype=..., algorithm="nadam" | "radam", ...)`` builds the
state (``exp_avg``, ``exp_avg_sq``, and for 16-bit parameters ``master`` or
``compensation`` if asked for); :func:`nadam_step_lowp` / :func:`radam_step_lowp` step
it in one fused pass (kernels/nr_lowp.py, adam_lowp's loops). The layouts, and the bytes
they move, are :func:`fastadam.adam_step_lowp`'s (fastadam/lowp.py), except 8-bit
state for RAdam, which is not offered (measured, docs/low_precision.md).
"""
from __future__ import annotations

import numpy as np

from . import _checks as C
from .kernels import adam_lowp as A
from .kernels import nr_lowp as K
from .kernels.spec import N_GROUP_SCALARS
from .kernels.lowp import sr_key
from .lowp import (NO_INT8, _EMPTY32, _check_hyper, _checked_layout, _precision_arrays,
                   _u16, launch, wd_mode)


def nadam_step_lowp(param, grad, state, *, step, mu_product, lr=2e-3, betas=(0.9, 0.999),
                    eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                    decoupled_weight_decay=False, maximize=False, rounding="nearest", seed=0):
    r"""One fused NAdam step on a flat float32, bfloat16 or float16 ``param`` with the
    state of ``init_lowp_state(param, state_dtype=..., algorithm="nadam")``, in place;
    returns the new ``mu_product`` (pass 1.0 at the first step), as
    :func:`fastadam.nadam_step`.

    The formulas and hyperparameters are :func:`fastadam.nadam_step`'s; ``rounding`` and
    ``seed`` are :func:`fastadam.adam_step_lowp`'s (16-bit parameters). Every element is
    computed in float32 from the decoded parameter, gradient and state with the float32
    NAdam kernel's arithmetic and each stored value is rounded once, as
    :func:`fastadam.adam_step_lowp` describes (bfloat16 moments to nearest even, int8
    block by block, 16-bit parameters by ``rounding`` or the state's master copy or
    compensation buffer). With float32 state and parameters the step is float32 NAdam's
    bit for bit; a master copy follows float32 NAdam bit for bit.

    Raises TypeError/ValueError naming the argument, changing nothing, on bad input.
    """
    mp = C._number("mu_product", mu_product)
    if not 0.0 <= mp <= 1.0:
        raise ValueError(f"mu_product must be in [0, 1] (1.0 before the first step), got "
                         f"{mu_product!r}")
    gs = np.zeros(N_GROUP_SCALARS)
    gs[0] = mp
    kernels, n, head, tail, sr_seed, _ = prepare_nr_lowp(
        "nadam", param, grad, state, step=step, lr=lr, betas=betas, eps=eps,
        weight_decay=weight_decay, maximize=maximize,
        decoupled_weight_decay=decoupled_weight_decay, momentum_decay=momentum_decay,
        rounding=rounding, seed=seed)
    step = int(step)
    launch(kernels, n, *head, _u16(grad), *tail, step,
           0 if sr_seed is None else sr_key(sr_seed, step), gs)
    K.advance_group("nadam", tail[-1], step, gs)
    return float(gs[0])


def radam_step_lowp(param, grad, state, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                    weight_decay=0.0, decoupled_weight_decay=False, maximize=False,
                    rounding="nearest", seed=0):
    r"""One fused RAdam step on a flat float32, bfloat16 or float16 ``param`` with the
    state of ``init_lowp_state(param, state_dtype=..., algorithm="radam")`` ("float32"
    or "bfloat16"), in place. The formulas and hyperparameters are
    :func:`fastadam.radam_step`'s; the arithmetic, rounding and ``rounding`` / ``seed`` as
    :func:`nadam_step_lowp` says."""
    kernels, n, head, tail, sr_seed, _ = prepare_nr_lowp(
        "radam", param, grad, state, step=step, lr=lr, betas=betas, eps=eps,
        weight_decay=weight_decay, maximize=maximize,
        decoupled_weight_decay=decoupled_weight_decay, rounding=rounding, seed=seed)
    step = int(step)
    launch(kernels, n, *head, _u16(grad), *tail, step,
           0 if sr_seed is None else sr_key(sr_seed, step), np.zeros(N_GROUP_SCALARS))


def prepare_nr_lowp(name, param, grad, state, *, step, lr, betas, eps, weight_decay,
                    maximize, decoupled_weight_decay=False, momentum_decay=4e-3,
                    rounding="nearest", seed=0, layout=None, **ignored):
    """Every check of the step and its launch without the per-step values, in the form
    of :func:`fastadam.lowp.prepare_adam_lowp`: (kernels, n, head, tail, sr_seed,
    layout); the step runs ``launch(kernels, n, *head, grad_bits, *tail, step, key,
    gs)`` (``key``: ``sr_key(sr_seed, step)``, 0 when ``sr_seed`` is None; ``gs``: the
    group scalars) and ``tail[-1]`` is the hyperparameter row. ``layout``: a previous
    call's, to skip the arrays' checks (the hyperparameters are checked again)."""
    step, lr, betas, eps, weight_decay = _check_hyper(step, lr, betas, eps, weight_decay)
    maximize = C.check_bool("maximize", maximize)
    decoupled = C.check_bool("decoupled_weight_decay", decoupled_weight_decay)
    if layout is None:
        layout = _checked_layout(param, grad, state, rounding, seed, "exp_avg_sq")
        if layout[1] == A.STATE_Q8 and name in NO_INT8:
            raise ValueError(f"state is int8 state; 8-bit state is not available for {name} "
                             f"({NO_INT8[name]}): use 'bfloat16' or 'float32'")
    param_kind, state_kind, arrays, pmode = layout
    from . import functional as F  # the algorithm's validated hyperparameter row
    if name == "nadam":
        h = F._NADAM.setup(lr, tuple(betas), eps, weight_decay, momentum_decay, decoupled,
                           maximize).h
    else:
        h = F._RADAM.setup(lr, tuple(betas), eps, weight_decay, decoupled, maximize).h
    kernels = K.build(name, param_kind, state_kind, pmode, wd_mode(weight_decay, decoupled),
                      maximize)
    w, c = _precision_arrays(arrays)
    tail = (_u16(arrays["exp_avg"]), _u16(arrays["exp_avg_sq"]), w, c,
            arrays.get("exp_avg_absmax", _EMPTY32), arrays.get("exp_avg_sq_absmax", _EMPTY32),
            h)
    sr_seed = int(seed) if pmode == A.PMODE_STOCHASTIC else None
    return kernels, param.shape[0], (_u16(param),), tail, sr_seed, layout
