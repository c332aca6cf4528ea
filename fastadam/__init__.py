"""fastadam: the Adam family (Kingma & Ba, 2014) as fast as a CPU allows.

Public API: :func:`adam_step`, :func:`adamax_step` (functional, flat buffers),
:func:`adam_step_lowp` / :func:`init_lowp_state` (bfloat16 / int8 state, bfloat16 params),
:class:`Adam`, :class:`AdamW`, :class:`Adamax` (optimizer objects), :func:`flatten`,
learning-rate schedules (:mod:`fastadam.schedules`), thread controls. scikit-learn
estimators live in :mod:`fastadam.sklearn` (imported on demand).
"""
from .config import get_num_threads, set_num_threads, threading_layer, threads
from .flat import flatten
from .functional import adam_step, adamax_step
from .lowp import adam_step_lowp, init_lowp_state
from .optimizer import Adam, Adamax, AdamW, Optimizer
from . import schedules
from .schedules import (CosineAnnealingLR, ExponentialLR, InverseSqrtLR, LambdaLR, LinearLR,
                        LRScheduler, OneCycleLR, SequentialLR, StepLR)

__version__ = "0.1.0"

__all__ = ["Adam", "AdamW", "Adamax", "Optimizer", "adam_step", "adamax_step", "flatten",
           "adam_step_lowp", "init_lowp_state",
           "schedules", "LRScheduler", "LambdaLR", "StepLR", "ExponentialLR",
           "CosineAnnealingLR", "LinearLR", "OneCycleLR", "SequentialLR", "InverseSqrtLR",
           "get_num_threads", "set_num_threads", "threading_layer", "threads", "__version__"]
