"""Functional API: one fused step on caller-owned flat buffers.

Validates, then launches the serial or parallel kernel, which computes the step's
scalars once in float64 and rounds them to the buffers' dtype; nothing else."""
from __future__ import annotations

import numpy as np

from . import _checks as C
from . import config
from .kernels import adam as _adam
from .kernels import adamax as _adamax
from .kernels import common as K

_INF = float("inf")
_FLOAT_DTYPES = C.FLOAT_DTYPES


def adam_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, betas=(0.9, 0.999),
              eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
              max_exp_avg_sq=None, maximize=False, bias_correction=True, eps_mode="paper"):
    r"""One Adam step, in place on 1-D C-contiguous arrays of one dtype (float32/float64).

    With g = grad (negated if ``maximize``), t = ``step`` (>= 1)::

        g = g + weight_decay * param                  (L2, decoupled_weight_decay=False)
        param = param * (1 - lr * weight_decay)       (AdamW, decoupled_weight_decay=True)
        exp_avg    = beta1 * exp_avg    + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
        v = max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq) if amsgrad else exp_avg_sq
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t         (1, 1 if not bias_correction)
        "paper": param -= lr / bc1 * exp_avg / (sqrt(v) / sqrt(bc2) + eps)   # = PyTorch
        "hat":   param -= lr * sqrt(bc2) / bc1 * exp_avg / (sqrt(v) + eps)   # = TF, sklearn

    ``eps_mode="paper"`` is Algorithm 1 of Kingma & Ba (and torch.optim.Adam);
    ``"hat"`` is the "epsilon hat" variant of the end of section 2. ``max_exp_avg_sq`` is
    required when ``amsgrad``. Raises TypeError/ValueError, changing nothing, on bad input.
    """
    step, lr, betas, eps, weight_decay = _check_hyper(step, lr, betas, eps, weight_decay)
    _check_flags(decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad,
                 maximize=maximize, bias_correction=bias_correction)
    if eps_mode != "paper" and eps_mode != "hat":
        C.check_eps_mode(eps_mode)
    _check_buffers(param, grad, (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)))
    if amsgrad:
        if max_exp_avg_sq is None:
            raise ValueError("max_exp_avg_sq is required when amsgrad=True "
                             "(an array of zeros before the first step)")
        _check_buffers(param, None, (("max_exp_avg_sq", max_exp_avg_sq),))
        vmax = max_exp_avg_sq
    else:
        vmax = param[:0]
    wd_mode = K.WD_NONE if weight_decay == 0.0 else (
        K.WD_DECOUPLED if decoupled_weight_decay else K.WD_L2)
    h = np.array(K.hyper_row(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps,
                             weight_decay=weight_decay, bias_correction=bias_correction,
                             eps_mode=eps_mode, maximize=maximize))
    kernels = _kernels(_adam, wd_mode, amsgrad, maximize)
    _launch(kernels, param, grad, exp_avg, exp_avg_sq, vmax, h, step, "exp_avg_sq")


def adamax_step(param, grad, exp_avg, exp_inf, *, step, lr=2e-3, betas=(0.9, 0.999),
                eps=1e-8, weight_decay=0.0, maximize=False):
    r"""One AdaMax step (Kingma & Ba, section 7.1; = torch.optim.Adamax), in place::

        g = g + weight_decay * param                  (L2; g negated first if maximize)
        exp_avg = beta1 * exp_avg + (1 - beta1) * g
        exp_inf = max(beta2 * exp_inf, |g| + eps)
        param  -= lr / (1 - beta1**t) * exp_avg / exp_inf

    Same array rules and errors as :func:`adam_step`."""
    step, lr, betas, eps, weight_decay = _check_hyper(step, lr, betas, eps, weight_decay)
    _check_flags(maximize=maximize)
    _check_buffers(param, grad, (("exp_avg", exp_avg), ("exp_inf", exp_inf)))
    wd_mode = K.WD_NONE if weight_decay == 0.0 else K.WD_L2
    h = np.array(K.hyper_row(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps,
                             weight_decay=weight_decay, maximize=maximize))
    kernels = _kernels(_adamax, wd_mode, False, maximize)
    _launch(kernels, param, grad, exp_avg, exp_inf, param[:0], h, step, "exp_inf")


def _check_hyper(step, lr, betas, eps, weight_decay):
    # Fast acceptance of the common cases; the checkers in _checks produce the messages.
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


def _check_flags(**flags):
    for name, flag in flags.items():
        if flag is not True and flag is not False:
            C.check_bool(name, flag)


def _ok(a, dtype, shape, writable):
    """Cheap acceptance test; False sends the array through C.check_array."""
    if type(a) is not np.ndarray:
        return False
    if dtype is None:
        if a.dtype not in _FLOAT_DTYPES:
            return False
    elif a.dtype is not dtype or a.shape != shape:
        return False
    f = a.flags
    return f.c_contiguous and (f.writeable or not writable)


def _check_buffers(param, grad, states):
    if not _ok(param, None, None, True) or param.ndim != 1:
        C.check_array("param", param, writable=True, one_d=True)
    dt, shape = param.dtype, param.shape
    if grad is not None and not _ok(grad, dt, shape, False):
        C.check_array("grad", grad, writable=False, dtype=dt, shape=shape)
    for name, a in states:
        if not _ok(a, dt, shape, True):
            C.check_array(name, a, writable=True, dtype=dt, shape=shape)


_KERNELS = {}


def _kernels(module, wd_mode, amsgrad, maximize):
    key = (module.__name__, wd_mode, amsgrad, maximize)
    k = _KERNELS.get(key)
    if k is None:
        k = _KERNELS[key] = module.make_kernels(wd_mode, amsgrad, maximize, False)
    return k


def _launch(kernels, param, grad, m, v, vmax, h, step, v_name):
    if config.use_parallel(param.shape[0]):
        with config.launch_lock():
            bad = kernels[1](param, grad, m, v, vmax, param[:0], h, step)
    else:
        bad = kernels[0](param, grad, m, v, vmax, param[:0], h, step)
    if bad >= 0:
        names = list(K.ARRAY_NAMES)
        names[3] = v_name
        raise ValueError(f"{names[bad // 6]} and {names[bad % 6]} share memory; every "
                         "parameter, gradient and state buffer must be a separate array")
