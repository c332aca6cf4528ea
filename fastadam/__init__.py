"""fastadam: the Adam family (Kingma & Ba, 2014) as fast as a CPU allows.

Public API: :func:`adam_step`, :func:`adamax_step`, :func:`nadam_step`,
:func:`radam_step` (functional, flat buffers), :class:`Adam`, :class:`AdamW`,
:class:`Adamax`, :class:`NAdam`, :class:`RAdam` (optimizer objects), :func:`flatten`,
:func:`sparse_adam_step` and :class:`SparseAdam` (lazy Adam on touched rows),
:func:`adam_step_lowp` / :func:`adamax_step_lowp` / :func:`init_lowp_state` (bfloat16 /
int8 state, bfloat16 params),
learning-rate schedules (:mod:`fastadam.schedules`), thread controls. scikit-learn
estimators live in :mod:`fastadam.sklearn` (imported on demand).
"""
from .config import get_num_threads, set_num_threads, threading_layer, threads
from .flat import flatten
from .functional import adam_step, adamax_step, nadam_step, radam_step
from .optim import Adam, Adamax, AdamW, NAdam, Optimizer, RAdam
from .lowp import adam_step_lowp, init_lowp_state
from .lowp_adamax import adamax_step_lowp
from .lowp_nr import nadam_step_lowp, radam_step_lowp
from .sparse import SparseAdam, sparse_adam_step
from . import schedules
from .schedules import (CosineAnnealingLR, ExponentialLR, InverseSqrtLR, LambdaLR, LinearLR,
                        LRScheduler, OneCycleLR, SequentialLR, StepLR)

__version__ = "0.1.0"

__all__ = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Optimizer", "adam_step", "adamax_step",
           "nadam_step", "radam_step", "flatten", "SparseAdam", "sparse_adam_step",
           "adam_step_lowp", "adamax_step_lowp", "nadam_step_lowp", "radam_step_lowp", "init_lowp_state",
           "schedules", "LRScheduler", "LambdaLR", "StepLR", "ExponentialLR",
           "CosineAnnealingLR", "LinearLR", "OneCycleLR", "SequentialLR", "InverseSqrtLR",
           "get_num_threads", "set_num_threads", "threading_layer", "threads", "__version__"]
