"""Functional API for AdaMax with bfloat16 state (and bfloat16 parameters).

``init_lowp_state(param, state_dtype="bfloat16", algorithm="adamax")`` builds the state
(``exp_avg`` and the infinity norm ``exp_inf``); :func:`adamax_step_lowp` steps it in
one fused pass (kernels/adamax_lowp.py). Bytes per parameter and step are Adam's:
28 with float32 state, 20 with bfloat16 state (float32 parameters), 14 with bfloat16
parameters and state. 8-bit AdaMax state is not provided (docs/low_precision.md).
"""
from __future__ import annotations

from . import _checks as C
from .kernels import adam_lowp as A
from .kernels import adamax_lowp as X
from .kernels.lowp import sr_key
from .lowp import _check_hyper, _checked_layout, _precision_arrays, _u16, launch


def adamax_step_lowp(param, grad, state, *, step, lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
                     weight_decay=0.0, maximize=False, rounding="nearest", seed=0):
    r"""One fused AdaMax step on a flat float32 or bfloat16 ``param`` with the state of
    ``init_lowp_state(param, state_dtype=..., algorithm="adamax")``, in place.

    The formulas and hyperparameters are :func:`fastadam.adamax_step`'s. Every element
    is computed in float32 from the decoded parameter, gradient and state with the
    arithmetic of the float32 AdaMax kernel; each value is rounded once when stored:
    bfloat16 ``exp_avg`` / ``exp_inf`` to nearest even; a bfloat16 parameter as
    ``rounding`` and the state's ``master`` / ``compensation`` say (as in
    :func:`fastadam.adam_step_lowp`). With float32 state and a master copy, the master
    follows float32 AdaMax bit for bit given the same gradients.

    Raises TypeError/ValueError naming the argument, changing nothing, on bad input.
    """
    kernels, n, head, tail, sr_seed, _ = prepare_adamax_lowp(
        param, grad, state, step=step, lr=lr, betas=betas, eps=eps,
        weight_decay=weight_decay, maximize=maximize, rounding=rounding, seed=seed)
    launch(kernels, n, *head, _u16(grad), *tail, step,
           0 if sr_seed is None else sr_key(sr_seed, step))


def prepare_adamax_lowp(param, grad, state, *, step, lr, betas, eps, weight_decay,
                        maximize, rounding="nearest", seed=0, layout=None):
    """Every check of :func:`adamax_step_lowp` and its launch without the per-step
    values, as :func:`fastadam.lowp.prepare_adam_lowp` returns it (and takes
    ``layout``)."""
    step, lr, betas, eps, weight_decay = _check_hyper(step, lr, betas, eps, weight_decay)
    if maximize is not True and maximize is not False:
        C.check_bool("maximize", maximize)
    if layout is None:
        layout = _checked_layout(param, grad, state, rounding, seed, "exp_inf")
    param_kind, state_kind, arrays, pmode = layout
    from .functional import _ADAMAX          # AdaMax's validated hyperparameter row
    h = _ADAMAX.setup(lr, tuple(betas), eps, weight_decay, maximize).h
    w, c = _precision_arrays(arrays)
    kernels = X.build(param_kind, state_kind, pmode, weight_decay != 0.0, maximize)
    sr_seed = int(seed) if pmode == A.PMODE_STOCHASTIC else None
    return (kernels, param.shape[0], (_u16(param),),
            (_u16(arrays["exp_avg"]), _u16(arrays["exp_inf"]), w, c, h), sr_seed, layout)
