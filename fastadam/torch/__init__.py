"""PyTorch drop-in optimizers: swap one import, keep the training loop.

    from fastadam.torch import Adam        # instead of: from torch.optim import Adam

``Adam``, ``AdamW``, ``Adamax``, ``NAdam``, ``RAdam`` and ``SparseAdam`` subclass their
``torch.optim`` twins (so they take exactly torch's arguments, are ``isinstance`` of them and of ``torch.optim.Optimizer``,
and work with every ``torch.optim.lr_scheduler``, step hooks and state-dict hooks), and
step the parameters' memory in place with fastadam's fused kernels: one kernel launch
per parameter dtype over zero-copy NumPy views of the CPU tensors. ``state_dict()`` is in
torch's format, so checkpoints move both ways between fastadam and ``torch.optim``.

Importing this module imports torch; ``import fastadam`` does not. See docs/torch.md.
"""
from ._common import Spec
from ._frontend import FastadamTorchOptimizer
from ._classes import Adam, AdamW, Adamax
from ._threads import get_step_threads, set_step_threads
from . import _classes, _sparse

__all__ = ["Adam", "AdamW", "Adamax", "FastadamTorchOptimizer", "Spec", "get_step_threads",
           "set_step_threads"]

for _name in ("NAdam", "RAdam", "SparseAdam"):     # present once fastadam has them
    _mod = _sparse if _name == "SparseAdam" else _classes
    if hasattr(_mod, _name):
        globals()[_name] = getattr(_mod, _name)
        __all__.append(_name)
del _name, _mod
