"""The public optimizer classes: torch's constructor signatures over registry algorithms.
The formulas are documented once, in each algorithm's module under ``kernels/``."""
from __future__ import annotations

from .base import Optimizer

_EXTRAS_DOC = """
    Options beyond torch: ``max_grad_norm`` (per group: clip the group's global gradient
    norm inside the update, as ``clip_grad_norm_`` would), ``average=beta`` (temporal
    averaging of the parameters, paper section 7.2, see :meth:`averaged_params`),
    ``nonfinite`` ("propagate", the default: NaN/inf flow into the state as in torch and
    cost nothing; "skip": such a step changes nothing and is counted in
    ``skipped_steps``; "raise": ValueError, nothing changed). Adam and AdamW take
    ``state_dtype`` (None: the parameters' dtype; "bfloat16" or "int8": low-precision
    moments) and, for ``ml_dtypes.bfloat16`` or float16 parameters, ``master_weights``,
    ``compensation`` or ``rounding="stochastic"`` with ``seed``; see
    docs/low_precision.md. NAdam takes the same. Adamax and RAdam take the same with
    ``state_dtype`` None, "float32" or "bfloat16" ("int8" raises ValueError: not
    offered, docs/low_precision.md)."""


class Adam(Optimizer):
    __doc__ = r"""Adam (Kingma & Ba, 2014, Algorithm 1), the same algorithm as torch.optim.Adam.

    ``weight_decay`` is L2 (``g + weight_decay * p`` enters the moments) unless
    ``decoupled_weight_decay=True`` (then it is :class:`AdamW`). ``eps_mode="paper"``
    (default, = PyTorch) or ``"hat"`` (= TensorFlow/Keras, scikit-learn); see
    :mod:`fastadam.kernels.adam` for the exact formula. ``bias_correction=False`` drops
    the 1 - beta**t factors.""" + _EXTRAS_DOC

    algorithm = "adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False,
                 bias_correction=True, eps_mode="paper", max_grad_norm=None, average=None,
                 nonfinite="propagate", foreach=None, fused=None, capturable=False,
                 differentiable=False, state_dtype=None, master_weights=False,
                 compensation=False, rounding="nearest", seed=0):
        _torch_switches(capturable, differentiable)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay,
                         bias_correction=bias_correction, eps_mode=eps_mode,
                         max_grad_norm=max_grad_norm, average=average, nonfinite=nonfinite,
                         state_dtype=state_dtype,
                         lowp_options=dict(master_weights=master_weights,
                                           compensation=compensation, rounding=rounding,
                                           seed=seed))


class AdamW(Optimizer):
    __doc__ = r"""AdamW (Loshchilov & Hutter): Adam with decoupled weight decay,
    ``p = p * (1 - lr * weight_decay)`` before the Adam update; = torch.optim.AdamW.
    Options as :class:`Adam`.""" + _EXTRAS_DOC

    algorithm = "adamw"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, bias_correction=True, eps_mode="paper",
                 max_grad_norm=None, average=None, nonfinite="propagate", foreach=None,
                 fused=None, capturable=False, differentiable=False, state_dtype=None,
                 master_weights=False, compensation=False, rounding="nearest", seed=0):
        _torch_switches(capturable, differentiable)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, bias_correction=bias_correction,
                         eps_mode=eps_mode, max_grad_norm=max_grad_norm, average=average,
                         nonfinite=nonfinite, state_dtype=state_dtype,
                         lowp_options=dict(master_weights=master_weights,
                                           compensation=compensation, rounding=rounding,
                                           seed=seed))


class Adamax(Optimizer):
    __doc__ = r"""AdaMax (Kingma & Ba, section 7.1), the same algorithm as torch.optim.Adamax:
    u = max(b2 * u, |g| + eps); p -= lr / (1 - b1**t) * m / u. ``weight_decay`` is L2.
    State keys: ``exp_avg``, ``exp_inf``.""" + _EXTRAS_DOC

    algorithm = "adamax"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 foreach=None, *, maximize=False, max_grad_norm=None, average=None,
                 nonfinite="propagate", differentiable=False, capturable=False,
                 state_dtype=None, master_weights=False, compensation=False,
                 rounding="nearest", seed=0):
        _torch_switches(capturable, differentiable)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         maximize=maximize, max_grad_norm=max_grad_norm, average=average,
                         nonfinite=nonfinite, state_dtype=state_dtype,
                         lowp_options=dict(master_weights=master_weights,
                                           compensation=compensation, rounding=rounding,
                                           seed=seed))


class NAdam(Optimizer):
    __doc__ = r"""NAdam (Dozat, 2016): Adam with Nesterov momentum, the same algorithm and
    arguments as torch.optim.NAdam (``momentum_decay`` psi: mu_t = beta1 * (1 - 0.5 *
    0.96**(t * psi)); ``decoupled_weight_decay=True`` gives NAdamW). State keys:
    ``exp_avg``, ``exp_avg_sq``, ``mu_product``; see :mod:`fastadam.kernels.nadam`.""" \
        + _EXTRAS_DOC

    algorithm = "nadam"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, maximize=False,
                 max_grad_norm=None, average=None, nonfinite="propagate", foreach=None,
                 capturable=False, differentiable=False, state_dtype=None,
                 master_weights=False, compensation=False, rounding="nearest", seed=0):
        _torch_switches(capturable, differentiable)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         momentum_decay=momentum_decay,
                         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                         max_grad_norm=max_grad_norm, average=average, nonfinite=nonfinite,
                         state_dtype=state_dtype,
                         lowp_options=dict(master_weights=master_weights,
                                           compensation=compensation, rounding=rounding,
                                           seed=seed))


class RAdam(Optimizer):
    __doc__ = r"""RAdam (Liu et al., 2020): Adam with the variance of the adaptive learning
    rate rectified, the same algorithm and arguments as torch.optim.RAdam
    (``decoupled_weight_decay=True`` gives RAdamW). State keys: ``exp_avg``,
    ``exp_avg_sq``; see :mod:`fastadam.kernels.radam`.""" + _EXTRAS_DOC

    algorithm = "radam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, maximize=False, max_grad_norm=None,
                 average=None, nonfinite="propagate", foreach=None, capturable=False,
                 differentiable=False, state_dtype=None, master_weights=False,
                 compensation=False, rounding="nearest", seed=0):
        _torch_switches(capturable, differentiable)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                         max_grad_norm=max_grad_norm, average=average, nonfinite=nonfinite,
                         state_dtype=state_dtype,
                         lowp_options=dict(master_weights=master_weights,
                                           compensation=compensation, rounding=rounding,
                                           seed=seed))


def _torch_switches(capturable, differentiable):
    """torch's backend switches: ``foreach``/``fused`` choose an implementation and are
    accepted (fastadam always runs its fused kernel); ``capturable`` (CUDA graphs) and
    ``differentiable`` (autograd through the step) cannot be served."""
    if capturable:
        raise ValueError("capturable=True (CUDA graph capture) is not supported: fastadam "
                         "steps CPU arrays")
    if differentiable:
        raise ValueError("differentiable=True (autograd through the step) is not "
                         "supported: fastadam's step is not differentiable")
