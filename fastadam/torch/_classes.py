"""The dense torch.optim twins: each is a :class:`Spec` over the shared front end."""
from __future__ import annotations

import torch

import fastadam as fa

from ._common import Spec
from ._frontend import FastadamTorchOptimizer

_ADAM_STATE = ("exp_avg", "exp_avg_sq")
_AMSGRAD = {"max_exp_avg_sq": "amsgrad"}


_LOWP_DOC = """
bfloat16 and float16 parameters: float32 moments and float32 master weights by default;
``opt.set_low_precision(compensation=True)`` (Kahan compensation in a buffer of the
parameter's dtype), ``set_low_precision(rounding="stochastic", seed=0)`` or
``set_low_precision(master_weights=False)`` (round to nearest) choose another way to keep
their precision. The constructor, defaults and state_dict format are torch's. See
docs/torch.md.

"""


class Adam(FastadamTorchOptimizer, torch.optim.Adam):
    __doc__ = ("torch.optim.Adam with fastadam's fused CPU step (same arguments, results, "
               "state_dict). ``decoupled_weight_decay=True`` gives AdamW.\n" + _LOWP_DOC
               + (torch.optim.Adam.__doc__ or ""))
    _spec = Spec("Adam", ("lr", "betas", "eps", "weight_decay", "maximize"), _ADAM_STATE,
                 _AMSGRAD, structural=("decoupled_weight_decay",),
                 fa_class=lambda g: "AdamW" if g.get("decoupled_weight_decay") else "Adam",
                 lowp=True)


class AdamW(FastadamTorchOptimizer, torch.optim.AdamW):
    __doc__ = ("torch.optim.AdamW with fastadam's fused CPU step (same arguments, results, "
               "state_dict).\n" + _LOWP_DOC + (torch.optim.AdamW.__doc__ or ""))
    _spec = Spec("AdamW", ("lr", "betas", "eps", "weight_decay", "maximize"), _ADAM_STATE,
                 _AMSGRAD, structural=("decoupled_weight_decay",),
                 fa_class=lambda g: "AdamW" if g.get("decoupled_weight_decay", True) else "Adam",
                 lowp=True)


class Adamax(FastadamTorchOptimizer, torch.optim.Adamax):
    __doc__ = ("torch.optim.Adamax with fastadam's fused CPU step (same arguments, results, "
               "state_dict).\n\n" + (torch.optim.Adamax.__doc__ or ""))
    _spec = Spec("Adamax", ("lr", "betas", "eps", "weight_decay", "maximize"),
                 ("exp_avg", "exp_inf"))


# Algorithms that activate when fastadam provides them (with torch's argument names).
if hasattr(fa, "NAdam"):
    class NAdam(FastadamTorchOptimizer, torch.optim.NAdam):
        __doc__ = "torch.optim.NAdam with fastadam's fused CPU step.\n\n" + \
            (torch.optim.NAdam.__doc__ or "")
        _spec = Spec("NAdam", ("lr", "betas", "eps", "weight_decay", "momentum_decay",
                               "decoupled_weight_decay", "maximize"),
                     ("mu_product", "exp_avg", "exp_avg_sq"), scalar_keys=("mu_product",),
                     lowp=True)

if hasattr(fa, "RAdam"):
    class RAdam(FastadamTorchOptimizer, torch.optim.RAdam):
        __doc__ = "torch.optim.RAdam with fastadam's fused CPU step.\n\n" + \
            (torch.optim.RAdam.__doc__ or "")
        _spec = Spec("RAdam", ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay",
                               "maximize"), ("exp_avg", "exp_avg_sq"), lowp=True)
