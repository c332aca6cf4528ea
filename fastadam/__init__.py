"""fastadam: the Adam family (Kingma & Ba, 2014) as fast as a CPU allows.

Public API: :func:`adam_step` (functional, flat buffers), :class:`Adam`, :class:`AdamW`
(optimizer objects), :func:`flatten`, and thread controls.
"""
from .config import get_num_threads, set_num_threads, threading_layer, threads
from .flat import flatten
from .functional import adam_step, adamax_step
from .optimizer import Adam, Adamax, AdamW, Optimizer

__version__ = "0.1.0"

__all__ = ["Adam", "Adamax", "AdamW", "adamax_step", "Optimizer", "adam_step", "flatten", "get_num_threads",
           "set_num_threads", "threading_layer", "threads", "__version__"]
