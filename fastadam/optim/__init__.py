"""Optimizer objects over lists of arrays or torch-style param groups.

``base.py`` is the one optimizer class; ``classes.py`` gives it torch's constructor
signatures per algorithm; ``groups.py`` validates param groups; ``plan.py`` lays out state
and launches; ``guard.py`` computes gradient norms (clipping, non-finite policy);
``state.py`` holds state_dict/load_state_dict."""
from .base import Optimizer
from .classes import Adam, Adamax, AdamW, NAdam, RAdam
from .groups import ParamGroup

__all__ = ["Optimizer", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "ParamGroup"]
