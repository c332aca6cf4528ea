"""Functional API: one fused step on caller-owned flat buffers.

Validates, computes the step's scalars once in float64, casts them to the buffers'
dtype and launches the serial or parallel kernel; nothing else."""
from __future__ import annotations

import numpy as np

from . import _checks as C
from . import config
from .kernels import adam as K


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
    step = C.check_step(step)
    lr = C.check_lr(lr)
    b1, b2 = C.check_betas(betas)
    eps = C.check_eps(eps)
    wd = C.check_weight_decay(weight_decay)
    decoupled = C.check_bool("decoupled_weight_decay", decoupled_weight_decay)
    amsgrad = C.check_bool("amsgrad", amsgrad)
    maximize = C.check_bool("maximize", maximize)
    bias_correction = C.check_bool("bias_correction", bias_correction)
    eps_mode = C.check_eps_mode(eps_mode)

    C.check_array("param", param, writable=True, one_d=True)
    dt, shape = param.dtype, param.shape
    C.check_array("grad", grad, writable=False, dtype=dt, shape=shape)
    C.check_array("exp_avg", exp_avg, writable=True, dtype=dt, shape=shape)
    C.check_array("exp_avg_sq", exp_avg_sq, writable=True, dtype=dt, shape=shape)
    named = [("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
    if amsgrad:
        if max_exp_avg_sq is None:
            raise ValueError("max_exp_avg_sq is required when amsgrad=True "
                             "(an array of zeros before the first step)")
        C.check_array("max_exp_avg_sq", max_exp_avg_sq, writable=True, dtype=dt, shape=shape)
        named.append(("max_exp_avg_sq", max_exp_avg_sq))
        vmax = max_exp_avg_sq
    else:
        vmax = exp_avg_sq[:0]
    C.check_no_overlap(named)

    wd_mode = K.WD_NONE if wd == 0.0 else (K.WD_DECOUPLED if decoupled else K.WD_L2)
    sc = np.array(K.scalars(step=step, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd,
                            decoupled=decoupled, bias_correction=bias_correction,
                            eps_mode=eps_mode, grad_scale=-1.0 if maximize else 1.0),
                  dtype=dt)
    serial, parallel, _, _ = K.make_kernels(wd_mode, amsgrad, maximize, False)
    if config.use_parallel(param.shape[0]):
        with config.launch_lock():
            parallel(param, grad, exp_avg, exp_avg_sq, vmax, param[:0], sc)
    else:
        serial(param, grad, exp_avg, exp_avg_sq, vmax, param[:0], sc)
