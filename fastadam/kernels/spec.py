"""What an algorithm module declares, and the two flat rows the kernels read.

An algorithm is one module of this package (``adam.py``, ``adamax.py``, ...) that ends in
``ALGORITHM = Algorithm(...)``: its options with their defaults and checks, its state
arrays, how a param group selects its compiled variant, and the numba functions the
shared fused loop (``loop.py``) inlines. ``registry.py`` lists the modules; nothing else
branches on an algorithm's name.

Rows (one place defines each layout):

* the **hyperparameter row**, float64, one per param group, written by Python whenever a
  group changes: the fields every algorithm has (``H_*`` below), then the algorithm's own
  fields from ``H_ALG`` on, named in its module with :func:`hyper_fields`;
* the **scalars row**, in the buffer dtype, computed once per step inside the kernel from
  the hyperparameter row and the step (float64 math, rounded once): the shared fields
  (``S_*``), then the algorithm's own from ``S_ALG`` on (:func:`scalar_fields`).

A group may also carry **group scalars**: float64 values that evolve with the steps of
the group (NAdam's running product of momentum coefficients). They are updated once per
step by the algorithm's ``advance`` and exported per parameter in ``state_dict``, as
PyTorch does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Tuple

# ---------------------------------------------------------------- hyperparameter row
#: lr; weight decay coefficient; -1 for maximize else 1; this step's clipping factor
#: (1 when not clipping); temporal-averaging decay (0 when off).
H_LR, H_WEIGHT_DECAY, H_SIGN, H_CLIP, H_AVERAGE = range(5)
H_ALG = 5            # first field of the algorithm's own
N_HYPER = 12

# ---------------------------------------------------------------- scalars row
#: gradient factor (sign * clip); weight decay as the loop applies it (L2 coefficient, or
#: the decoupled factor 1 - lr * weight_decay); averaging b and 1 - b.
S_GRAD_SCALE, S_WD, S_AVG_B, S_OMAVG_B = range(4)
S_ALG = 4
N_SCALARS = 14

#: Group scalars per group (float64).
N_GROUP_SCALARS = 2

# ---------------------------------------------------------------- weight decay modes
WD_NONE, WD_L2, WD_DECOUPLED = 0, 1, 2


def wd_mode(weight_decay, decoupled):
    """The kernels' weight-decay mode (WD_*) of a group with ``weight_decay`` (a
    number) applied as L2 or ``decoupled`` (AdamW's)."""
    if weight_decay == 0.0:
        return WD_NONE
    return WD_DECOUPLED if decoupled else WD_L2


def reference_start(param, grad, hp):
    """The float64 (param, grad) every algorithm's ``reference`` starts from: the
    gradient negated for ``maximize``, then weight decay, decoupled (the parameter
    shrunk by lr * weight_decay) or L2 (weight_decay * param added to the gradient)."""
    p = param.astype("float64")
    g = grad.astype("float64")
    if hp["maximize"]:
        g = -g
    wd = hp["weight_decay"]
    if hp.get("decoupled"):
        p = p * (1.0 - hp["lr"] * wd)
    else:
        g = g + wd * p
    return p, g


def hyper_fields(n):
    """Indices of an algorithm's ``n`` own fields in the hyperparameter row."""
    if H_ALG + n > N_HYPER:
        raise ValueError(f"at most {N_HYPER - H_ALG} algorithm hyperparameters")
    return tuple(range(H_ALG, H_ALG + n))


def scalar_fields(n):
    """Indices of an algorithm's ``n`` own fields in the scalars row."""
    if S_ALG + n > N_SCALARS:
        raise ValueError(f"at most {N_SCALARS - S_ALG} algorithm scalars")
    return tuple(range(S_ALG, S_ALG + n))


@dataclass(frozen=True)
class Option:
    """A param-group option: its torch name, default, and a check ``(value, name) ->
    normalised value`` that raises TypeError/ValueError naming ``name``."""
    name: str
    default: Any
    check: Callable[[Any, str], Any]


@dataclass(frozen=True)
class Algorithm:
    """Everything the optimizer, functional API, launcher and state_dict need to know.

    ``options``: the group options this algorithm serves besides the shared ones (lr,
    weight_decay, maximize, max_grad_norm).
    ``state``: state_dict names of the per-element state rows, in row order; a group uses
    the first ``n_state(group)`` of them.
    ``variant(group) -> int``: the compile-time variant (e.g. amsgrad), part of the kernel
    key. ``decoupled(group) -> bool``: weight decay applied to the parameter (AdamW) rather
    than added to the gradient (L2).
    ``hyper(group) -> tuple``: the algorithm's fields of the hyperparameter row.
    ``group_scalars``: ((name, initial value), ...), see the module docstring.
    ``scalars(h, t, gs, out)``, ``advance(h, t, gs)``, ``consts(sc)``,
    ``element(variant, p, g, s0, s1, s2, k)``: numba functions (``inline="always"``), see
    ``loop.py`` (dense layout only). ``reference``: the slow float64 NumPy step, for tests.
    """
    name: str
    options: Tuple[Option, ...]
    state: Tuple[str, ...]
    n_state: Callable[[dict], int]
    variant: Callable[[dict], int]
    decoupled: Callable[[dict], bool]
    hyper: Callable[[dict], tuple]
    scalars: Any = None
    consts: Any = None
    element: Any = None
    advance: Any = None
    group_scalars: Tuple[Tuple[str, float], ...] = ()
    reference: Optional[Callable] = None
    doc: str = ""
    #: "dense": stepped by the shared fused loop (loop.py, launch.py); "rows": a sparse
    #: algorithm with kernels of its own that update the touched rows only.
    layout: str = "dense"
    #: Which of the shared options (lr, weight_decay, maximize, max_grad_norm) it serves.
    shared: Tuple[str, ...] = ("lr", "weight_decay", "maximize", "max_grad_norm")
    id: int = field(default=-1, compare=False)

    @property
    def max_state(self):
        return len(self.state)
