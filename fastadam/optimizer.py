"""Former home of the optimizer classes, kept as an import path: they live in
:mod:`fastadam.optim`."""
from .optim import Adam, Adamax, AdamW, NAdam, Optimizer, ParamGroup, RAdam  # noqa: F401
from .checkpoint import read_checkpoint  # noqa: F401
