"""What the torch front end's modules share: zero-copy NumPy views of tensors and the
dtypes they cover, how numba's threads follow torch's, and :class:`Spec`, the few lines
that map one ``torch.optim`` algorithm onto a fastadam optimizer class."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
try:
    from torch.autograd.graph import increment_version as _increment_version
except ImportError:                                   # torch < 2.1
    raise ImportError("fastadam.torch needs torch >= 2.1 (pip install -U torch)") from None

try:                         # one call for a list of tensors (torch >= 2.4), else a loop
    _increment_version([torch.zeros(1)])
    increment_version = _increment_version
except TypeError:
    def increment_version(tensors):
        for t in tensors:
            _increment_version(t)

import fastadam as fa

# ----------------------------------------------------------------------------- dtypes
# The one place that maps a parameter dtype to a zero-copy NumPy view of its memory.
# bfloat16 has no NumPy dtype: ``t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)``;
# float16 is NumPy's own. Both are stepped by Adam / AdamW / NAdam / RAdam through
# fastadam.lowp (torch/_lowp.py).


def _plain_view(t):
    return t.detach().numpy()


def _bf16_view(t):
    import ml_dtypes
    return t.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)


_NUMPY_VIEWS = {torch.float32: _plain_view, torch.float64: _plain_view,
                torch.bfloat16: _bf16_view, torch.float16: _plain_view}
#: 16-bit parameter dtypes: float32 master weights and moments (fastadam.lowp).
LOW_PRECISION = (torch.bfloat16, torch.float16)


def check_dtype(t, name, lowp=False):
    """TypeError unless ``t``'s dtype is one fastadam.torch steps (bfloat16 and float16
    only where ``lowp``: Adam, AdamW, NAdam and RAdam, through fastadam.lowp)."""
    if t.dtype in (torch.float32, torch.float64) or (lowp and t.dtype in LOW_PRECISION):
        return
    if t.dtype in LOW_PRECISION:
        raise TypeError(f"{name} has dtype {t.dtype}: {t.dtype} parameters are supported by "
                        "fastadam.torch.Adam, AdamW, NAdam and RAdam only; keep float32 "
                        "parameters "
                        "(e.g. model.float(), with torch.autocast for low-precision "
                        "compute) or use torch.optim")
    raise TypeError(f"{name} has dtype {t.dtype}; fastadam.torch steps real floating-point "
                    "parameters of dtype float32 or float64 (bfloat16 and float16: Adam, "
                    "AdamW, NAdam and RAdam)")


def numpy_view(t, name="tensor"):
    """A NumPy array sharing ``t``'s memory (``t`` a contiguous CPU tensor; bfloat16 as
    ml_dtypes.bfloat16, float16 as numpy.float16)."""
    check_dtype(t, name, lowp=True)
    return _NUMPY_VIEWS[t.dtype](t)


def _scalar_dtype():
    # torch 2.x keeps state["step"] as a float32 tensor (float64 when that is the default dtype)
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- threads
# torch's intra-op pool and numba's pool never run at once here (the step runs between
# backward and the next forward), so both may use every core the user gave torch. What
# must not happen is the optimizer using more threads than torch was allowed: when torch's
# count changes (torch.set_num_threads), numba's is capped at it. A later
# fastadam.set_num_threads(n) stands until torch's count changes again. See docs/torch.md.
_threads_seen = [None]


def _share_threads():
    n = torch.get_num_threads()
    _threads_seen[0] = n
    if fa.get_num_threads() > n >= 1:
        fa.set_num_threads(n)


# ----------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Spec:
    """How one torch.optim algorithm maps onto a fastadam optimizer class.

    ``hparams``: torch param-group keys handed to the fastadam group under the same name
    (the fastadam classes take torch's names). ``state_keys``: torch's per-parameter state
    keys after "step", in torch's order; fastadam's ``state`` uses the same names.
    ``optional_state``: state key -> the group flag that makes it exist (AMSGrad's
    buffer). ``fa_class``: group -> name of the fastadam class (torch.optim.Adam with
    ``decoupled_weight_decay=True`` is AdamW). ``structural``: group keys whose change
    needs a rebuild rather than a hyperparameter update. ``sparse_grads``: the algorithm
    takes sparse gradients (its class overrides ``_grad_array``). ``scalar_keys``: state
    keys (among ``state_keys``) that torch keeps per parameter as 0-d tensors and fastadam
    as one float per param group (NAdam's ``mu_product``)."""

    fa_name: str
    hparams: tuple
    state_keys: tuple
    optional_state: dict = field(default_factory=dict)
    fa_class: Optional[Callable[[dict], str]] = None
    structural: tuple = ()
    sparse_grads: bool = False
    scalar_keys: tuple = ()
    lowp: bool = False

    def fa_class_name(self, group):
        return self.fa_class(group) if self.fa_class else self.fa_name


# torch switches that select an implementation, not an algorithm. capturable and
# differentiable ask for something a NumPy kernel cannot give: they must be False.
_IMPL_FLAGS = ("foreach", "fused")
_REFUSED_FLAGS = {
    "capturable": "capturable=True is for CUDA/XPU graph capture; fastadam.torch steps CPU "
                  "tensors and needs capturable=False",
    "differentiable": "differentiable=True (autograd through the optimizer step) is not "
                      "supported by fastadam.torch; use torch.optim for that",
}


def _float(x):
    return float(x) if isinstance(x, torch.Tensor) else x


def _fa_value(key, value):
    """A torch group value as fastadam expects it (tensors -> floats)."""
    if key == "betas":
        return tuple(_float(b) for b in value)
    return _float(value)



def _twin_defaults(twin):
    sig = inspect.signature(twin.__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty}


def _flatten(v):
    for x in v:
        if isinstance(x, (tuple, list)):
            yield from x
        else:
            yield x
