"""torch.optim front end over fastadam's optimizer objects.

Each class here subclasses its ``torch.optim`` twin (constructor, argument checks,
defaults, ``__setstate__``, hooks, ``zero_grad``, ``state_dict``/``load_state_dict`` all
come from torch) and replaces ``step``: the parameters that have a gradient are stepped by
an *inner* fastadam optimizer (``fastadam.Adam`` ...) built over zero-copy NumPy views of
the tensors' memory, so every parameter of a dtype goes through one kernel launch.

How torch's semantics map onto the inner optimizer:

* **Which parameters step.** torch skips a parameter whose ``grad`` is None entirely: its
  state and step count do not advance. The inner optimizer is built over the parameters
  that have gradients ("the active set"); its param groups are the *cells* (torch group,
  step count), so parameters of one torch group that were skipped different numbers of
  times keep separate step counts, as in torch, and still share one kernel launch (the
  inner optimizer launches by kernel flags, not by group). While the active set stays the
  same (the usual case: all parameters, or all but some frozen ones) a step costs one
  NumPy view per gradient plus the kernel. When it changes, parameters are split into
  *blocks* that have had gradients together (each with its own inner optimizers): a step
  runs the blocks of the current set, a set seen before costs a dict lookup, a new one
  splits the blocks it cuts (state copied once). See ``_switch`` and docs/torch.md.
* **State.** ``self.state[p]`` holds torch tensors that *are* the inner optimizer's
  buffers (``torch.from_numpy`` of its views), and ``step`` is a 0-d view of one float
  buffer bumped once per step: ``opt.state[p]["exp_avg"]`` reads (and in-place writes)
  the live moments. Between rebuilds, ``self.state`` is the truth: a rebuild (after
  ``load_state_dict``, ``add_param_group``, a new active set...) reads it back.
* **Hyperparameters.** torch's keys are read from ``param_groups`` every step (one tuple
  comparison per group) and pushed to the inner groups when they change, so schedulers
  (including OneCycleLR's momentum cycling, which writes ``betas``) work.

Algorithms are described by :class:`Spec` (a few lines each); an algorithm appears when
fastadam has its optimizer class (``hasattr(fastadam, "NAdam")`` ...). SparseAdam has its
own ``step`` and layout (one inner ``fastadam.SparseAdam`` over every parameter).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import operator
from itertools import chain
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
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
from torch.optim import optimizer as _opt_mod

import fastadam as fa

# ----------------------------------------------------------------------------- dtypes
# The one place that maps a parameter dtype to a zero-copy NumPy view of its memory.
# Low-precision parameters (bfloat16 has no NumPy dtype: ``t.view(torch.int16).numpy()
# .view(ml_dtypes.bfloat16)``) plug in here once fastadam's kernels take them.


def _plain_view(t):
    return t.detach().numpy()


_NUMPY_VIEWS = {torch.float32: _plain_view, torch.float64: _plain_view}
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def check_dtype(t, name):
    """TypeError unless ``t``'s dtype is one fastadam.torch steps."""
    if t.dtype in _NUMPY_VIEWS:
        return
    if t.dtype in _LOW_PRECISION:
        raise TypeError(f"{name} has dtype {t.dtype}: low-precision parameters are not "
                        "supported by fastadam.torch yet; keep float32 parameters (e.g. "
                        "model.float(), with torch.autocast for bfloat16 compute) or use "
                        "torch.optim")
    raise TypeError(f"{name} has dtype {t.dtype}; fastadam.torch steps real floating-point "
                    "parameters of dtype float32 or float64")


def numpy_view(t, name="tensor"):
    """A NumPy array sharing ``t``'s memory (``t`` a contiguous CPU tensor)."""
    check_dtype(t, name)
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


# ----------------------------------------------------------------------------- layout
class _Layout:
    """The inner optimizers for one active set, and what the fast path needs."""

    __slots__ = ("group_params", "group_lens", "active", "active_ids", "inactive", "ptrs",
                 "inners", "single", "cells", "seen", "getter", "tensor_groups", "step_nps",
                 "gs_rows", "shapes2", "skipped", "views", "params", "gidx", "names",
                 "all_ptrs", "blocks", "block_of", "patterns")


def _twin_defaults(twin):
    sig = inspect.signature(twin.__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty}


class FastadamTorchOptimizer:
    """Mixin placed before a ``torch.optim`` class: ``class Adam(FastadamTorchOptimizer,
    torch.optim.Adam)``. Replaces ``step``; everything else is torch's."""

    _spec: Spec
    _twin_defaults: dict = {}
    _flag_keys: tuple = ()
    _watched: tuple = ()
    _layout = None          # built at the first step (we need to know which grads exist)

    # GradScaler steps "amp-aware" optimizers with scaled gradients (torch.optim.Adam
    # sets this when fused=True); we want them unscaled, like any other optimizer.
    @property
    def _step_supports_amp_scaling(self):
        return False

    @_step_supports_amp_scaling.setter
    def _step_supports_amp_scaling(self, value):
        pass

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        twin = next(b for b in cls.__mro__[1:] if issubclass(b, torch.optim.Optimizer)
                    and not issubclass(b, FastadamTorchOptimizer))
        cls._twin_defaults = _twin_defaults(twin)
        if "step" not in cls.__dict__:
            cls.step = FastadamTorchOptimizer._hooked(FastadamTorchOptimizer.step)
        cls._flag_keys = tuple(k for k in _IMPL_FLAGS + tuple(_REFUSED_FLAGS)
                               if k in cls._twin_defaults)
        # keys read every step: the forwarded hyperparameters first, then those whose
        # change means a rebuild (only keys this torch version has)
        spec = cls.__dict__.get("_spec")
        if spec is not None:
            later = [k for k in spec.structural + tuple(spec.optional_state.values())
                     if k in cls._twin_defaults]
            cls._watched = spec.hparams + tuple(later) + cls._flag_keys

    # ------------------------------------------------------------------ checks
    def _check_flags(self, g, gi):
        for key, msg in _REFUSED_FLAGS.items():
            if g.get(key, False):
                raise ValueError(f"param_groups[{gi}]: {msg}")
        if g.get("fused") and g.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        spec = self._spec
        handled = set(spec.hparams) | set(_IMPL_FLAGS) | set(_REFUSED_FLAGS) | \
            set(spec.structural) | set(spec.optional_state.values())
        for key, default in self._twin_defaults.items():   # a torch option we don't map
            if key not in handled and key in g and g[key] != default:
                raise ValueError(f"param_groups[{gi}][{key!r}]={g[key]!r} is not supported "
                                 f"by fastadam.torch.{type(self).__name__}")

    @staticmethod
    def _check_param(p, name):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(p).__name__}")
        if p.device.type != "cpu":
            raise ValueError(f"{name} is on device {p.device}: fastadam.torch steps CPU "
                             "tensors (move the model to the CPU, or use torch.optim "
                             "with fused=True on accelerators)")
        if p.layout != torch.strided:
            raise ValueError(f"{name} has layout {p.layout}; fastadam.torch steps dense "
                             "(strided) parameters")
        if p.is_complex():
            raise TypeError(f"{name} is complex ({p.dtype}); fastadam.torch steps real "
                            "parameters (use torch.view_as_real)")
        check_dtype(p, name)
        if not p.is_contiguous():
            raise ValueError(f"{name} is not contiguous (strides {p.stride()} for shape "
                             f"{tuple(p.shape)}); fastadam.torch steps contiguous "
                             "parameters: make it contiguous before building the optimizer "
                             "(p.data = p.data.contiguous())")

    def _check_group(self, g, gi):
        self._check_flags(g, gi)
        for k, p in enumerate(g["params"]):
            self._check_param(p, f"param_groups[{gi}]['params'][{k}]")

    # ------------------------------------------------------------------ torch API
    def add_param_group(self, param_group):
        n_before = len(self.param_groups)
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1], len(self.param_groups) - 1)
        except Exception:
            del self.param_groups[n_before:]
            raise
        self._layout = None

    def __setstate__(self, state):
        super().__setstate__(state)
        self._layout = None            # load_state_dict / unpickling: re-read self.state

    def __getstate__(self):
        st = super().__getstate__()
        st.pop("_layout", None)
        return st

    def state_dict(self):
        sd = super().state_dict()
        # torch hands out the live state; our step counters are views of one shared
        # buffer, so hand out separate step tensors (an optimizer loading this dict,
        # fastadam's or torch's, must not bump ours).
        shared = ("step",) + self._spec.scalar_keys
        sd["state"] = {k: ({**v, **{key: v[key].clone() for key in shared
                                    if isinstance(v.get(key), torch.Tensor)}}
                           if isinstance(v, dict) else v)
                       for k, v in sd["state"].items()}
        return sd

    def step(self, closure=None):
        """One optimization step for every parameter that has a gradient (torch
        semantics). ``closure`` re-evaluates the model and returns the loss; it runs under
        ``torch.enable_grad()``. Step pre/post hooks (per optimizer and global) fire as
        in torch."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.get_num_threads() != _threads_seen[0]:
            _share_threads()
        L = self._layout
        groups = self.param_groups
        if L is None or len(groups) != len(L.group_params):
            L = self._rebuild()
        # ---- hyperparameters: one tuple comparison per group
        get, seen = L.getter, L.seen
        for gi, g in enumerate(groups):
            gp = g["params"]
            if gp is not L.group_params[gi] or len(gp) != L.group_lens[gi]:
                L = self._rebuild()
                break
            vals = get(g)
            if vals != seen[gi] or gi in L.tensor_groups:
                if self._push(L, gi, g, vals):
                    L = self._rebuild()
                    break
        # ---- gradients: a NumPy view of each (fresh tensors after zero_grad(set_to_none))
        try:
            gl = [p.grad.numpy() for p in L.active]
        except (AttributeError, RuntimeError, TypeError):
            gl = None            # a missing, sparse or requires_grad gradient: slow path
        if gl is None or (L.inactive and any(p.grad is not None for p in L.inactive)) \
                or [p.data_ptr() for p in L.active] != L.ptrs:
            L, gl = self._slow_grads(L)
            if L is None:
                return loss      # no parameter has a gradient: nothing to do
        if L.single:
            inner = L.inners[0][0]
            try:
                inner.step(gl)
            except ValueError:
                if all(a.flags.c_contiguous for a in gl):
                    raise
                inner.step([np.ascontiguousarray(a) for a in gl])  # nothing was written
        else:
            if not all(a.flags.c_contiguous for a in gl):
                gl = [np.ascontiguousarray(a) for a in gl]
            for inner, lo, hi in L.inners:
                inner.step(gl[lo:hi])
        increment_version(L.active)      # in-place update, as torch's optimizers record
        for s in L.step_nps:
            np.add(s, 1, out=s)
        if L.gs_rows:
            _copy_group_scalars(L.gs_rows)
        return loss

    @staticmethod
    def _hooked(step):
        """torch.optim's step wrapper (step pre/post hooks, per optimizer then global, and
        the profiler's record_function) with the record_function entered only while a
        profiler runs: it costs ~10 us per step otherwise, on a step that may take 30."""
        @functools.wraps(step)
        def wrapper(self, *args, **kwargs):
            pre = _opt_mod.__dict__.get("_global_optimizer_pre_hooks", {})
            post = _opt_mod.__dict__.get("_global_optimizer_post_hooks", {})
            ctx = (torch.autograd.profiler.record_function(
                f"Optimizer.step#{type(self).__name__}.step")
                if torch.autograd._profiler_enabled() else contextlib.nullcontext())
            with ctx:
                for hook in chain(pre.values(), self._optimizer_step_pre_hooks.values()):
                    result = hook(self, args, kwargs)
                    if result is not None:
                        if isinstance(result, tuple) and len(result) == 2:
                            args, kwargs = result
                        else:
                            raise RuntimeError(f"{step} must return None or a tuple of "
                                               f"(new_args, new_kwargs), but got {result}.")
                out = step(self, *args, **kwargs)
                self._optimizer_step_code()
                for hook in chain(self._optimizer_step_post_hooks.values(), post.values()):
                    hook(self, args, kwargs)
                return out
        wrapper.hooked = True            # torch's _patch_step_function leaves it alone
        return wrapper

    # ------------------------------------------------------------------ internals
    def _push(self, L, gi, g, vals):
        """Adopt group ``gi``'s edited hyperparameters. True when the edit changes the
        structure (a rebuild is needed)."""
        old = L.seen[gi]
        n = len(self._spec.hparams)
        if vals[n:] != old[n:]:
            return True       # amsgrad, decoupled_weight_decay or a torch switch changed
        L.seen[gi] = vals
        hp = {k: _fa_value(k, v) for k, v in zip(self._spec.hparams, vals)}
        for ig in L.cells[gi]:
            ig.update(hp)
        return False

    def _slow_grads(self, L):
        """Gradients the fast path could not take: a changed active set, moved parameter
        memory, sparse / requires_grad / non-contiguous gradients."""
        params = [p for g in self.param_groups for p in g["params"]]
        have = [p.grad is not None for p in params]
        active = {id(p) for p, h in zip(params, have) if h}
        if not active:
            return None, None
        if [p.data_ptr() for p in L.active] != L.ptrs \
                or any(p.data_ptr() != q for p, q in zip(params, L.all_ptrs)):
            L = self._rebuild(have)
        elif active != L.active_ids:
            L = self._switch(have)
        return L, [self._grad_array(p.grad) for p in L.active]

    def _grad_array(self, g):
        """The gradient as the inner optimizer takes it: a C-contiguous NumPy array (a view
        when possible)."""
        if g.layout != torch.strided:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients"
                               + (", please consider SparseAdam instead"
                                  if "Adam" in type(self).__name__ else ""))
        g = g.detach()
        if g.is_neg() or g.is_conj():
            g = g.resolve_neg().resolve_conj()
        if not g.is_contiguous():
            g = g.contiguous()
        return g.numpy()

    def _read_state(self, p, name, group):
        """(step, {key: ndarray}) of parameter ``p`` from ``self.state`` (torch's dicts:
        ours, a loaded state_dict's, or a user's)."""
        st = dict.get(self.state, p)
        if not st:
            return 0, {}
        step = st.get("step", 0)
        if isinstance(step, torch.Tensor):
            step = step.item()
        step = float(step)
        if not (step >= 0 and step.is_integer()):
            raise ValueError(f"state of {name}: step must be a whole number >= 0, got {step}")
        arrays = {}
        optional = [k for k, flag in self._spec.optional_state.items() if group.get(flag)]
        keys = list(self._spec.state_keys) + optional
        for key in keys:
            if key not in st:
                continue
            v = st[key]
            if key in self._spec.scalar_keys:
                if isinstance(v, torch.Tensor) and v.numel() == 1:
                    v = v.item()
                if isinstance(v, bool) or not isinstance(v, (int, float)) \
                        or not np.isfinite(v):
                    raise ValueError(f"state of {name}: {key!r} must be a finite number "
                                     f"or a one-element tensor, got {v!r}")
                arrays[key] = float(v)
                continue
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"state of {name}: {key!r} must be a tensor, got "
                                f"{type(v).__name__}")
            if tuple(v.shape) != tuple(p.shape):
                raise ValueError(f"state of {name}: {key!r} has shape {tuple(v.shape)}, "
                                 f"the parameter {tuple(p.shape)}")
            v = v.detach().to(device="cpu", dtype=p.dtype).contiguous()
            arrays[key] = numpy_view(v, name)
        missing = [k for k in self._spec.state_keys if k not in arrays]
        if step > 0 and missing:
            raise ValueError(f"state of {name} is at step {int(step)} but lacks {missing}")
        for key in optional:      # switched on after the start (amsgrad): starts at zero
            if key not in arrays:
                arrays[key] = np.zeros(tuple(p.shape), dtype=numpy_view(p, name).dtype)
        return int(step), arrays

    @staticmethod
    def _inner_states(inner):
        return inner.state

    @staticmethod
    def _inner_state(inner, states, j):
        """{state key: live ndarray} of the inner optimizer's parameter ``j``."""
        return states[j]

    def _all_params(self):
        params, gidx, names = [], [], []
        for gi, g in enumerate(self.param_groups):
            self._check_group(g, gi)
            for k, p in enumerate(g["params"]):
                params.append(p)
                gidx.append(gi)
                names.append(f"param_groups[{gi}]['params'][{k}]")
        return params, gidx, names

    def _rebuild(self, have=None):
        """A fresh layout: one block (inner optimizers) over the parameters with gradients
        (or ``have``), every parameter's state read from ``self.state``."""
        params, gidx, names = self._all_params()
        groups = self.param_groups
        if have is None:
            have = [p.grad is not None for p in params]
        S = _Layout()
        S.params, S.gidx, S.names = params, gidx, names
        S.all_ptrs = [p.data_ptr() for p in params]
        S.group_params = [g["params"] for g in groups]
        S.group_lens = [len(g["params"]) for g in groups]
        S.getter = operator.itemgetter(*self._watched)
        S.seen = [S.getter(g) for g in groups]
        S.tensor_groups = {gi for gi, v in enumerate(S.seen)
                           if any(isinstance(x, torch.Tensor) for x in _flatten(v))}
        S.blocks, S.block_of, S.patterns = [], [None] * len(params), {}
        block = self._build_block(S, [i for i in range(len(params)) if have[i]])
        S.blocks.append(block)
        for i in block.order:
            S.block_of[i] = block
        _collect_cells(S)
        # parameters outside every block keep a copy of their state (not views that would
        # keep a previous layout's buffers alive)
        old = self._layout
        if old is not None and getattr(old, "blocks", None):
            old_ids = {id(p) for b in old.blocks for p in b.active}
            for i, p in enumerate(params):
                st = dict.get(self.state, p)
                if S.block_of[i] is None and st and id(p) in old_ids:
                    self.state[p] = {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                     for k, v in st.items()}
        self._layout = S
        _use_pattern(S, tuple(have))
        return S

    def _switch(self, have):
        """The set of parameters with gradients changed (memory and groups did not).
        Parameters live in *blocks*, each with its own inner optimizers and state, and a
        step runs the blocks whose parameters have gradients. A pattern seen before costs
        a dict lookup; a new one splits the blocks it cuts through (their state is copied
        once into the two halves) and builds a block for parameters never stepped."""
        S = self._layout
        key = tuple(have)
        if key in S.patterns:
            _use_pattern(S, key)
            return S
        blocks, changed = [], False
        for b in S.blocks:
            on = [i for i in b.order if have[i]]
            if on and len(on) < len(b.order):
                changed = True
                off = [i for i in b.order if not have[i]]
                blocks.append(self._build_block(S, on))
                blocks.append(self._build_block(S, off))
            else:
                blocks.append(b)
        new = [i for i, h in enumerate(have) if h and S.block_of[i] is None]
        if new:
            blocks.append(self._build_block(S, new))
        if len(blocks) > _MAX_BLOCKS:          # patterns too varied: one launch per block
            return self._rebuild(have)         # would cost more than an occasional rebuild
        S.blocks = blocks
        for b in blocks:
            for i in b.order:
                S.block_of[i] = b
        if changed:
            S.patterns.clear()
        _collect_cells(S)
        # the hyperparameters pushed so far apply to the new blocks too (they were read
        # from self.param_groups by _build_block)
        _use_pattern(S, key)
        return S

    def _build_block(self, S, idx):
        """Inner optimizer(s) over parameters ``idx`` (indices into ``S.params``), their
        state read from ``self.state`` and then published there as views of the inner
        buffers."""
        spec = self._spec
        groups = self.param_groups
        params, gidx, names = S.params, S.gidx, S.names
        # ---- read all state first: nothing changes if anything is invalid
        cells, steps, saved = {}, {}, {}
        for i in idx:
            p = params[i]
            step, arrays = self._read_state(p, names[i], groups[gidx[i]])
            steps[i], saved[i] = step, arrays
            # parameters share an inner group when they share step count and group
            # scalars (NAdam's mu_product depends on the betas of the steps they took)
            scal = tuple(arrays.get(k) for k in spec.scalar_keys) if step else ()
            key = (spec.fa_class_name(groups[gidx[i]]), gidx[i], step, scal)
            cells.setdefault(key, []).append(i)
        B = _Block()
        B.cells = {gi: [] for gi in range(len(groups))}
        B.inners, order = [], []
        sdt = _scalar_dtype()
        for cls_name in dict.fromkeys(k[0] for k in sorted(cells, key=lambda k: (k[1], k[2]))):
            keys = sorted((k for k in cells if k[0] == cls_name), key=lambda k: (k[1], k[2]))
            fa_groups, members = [], []
            for k in keys:
                g = groups[k[1]]
                hp = {h: _fa_value(h, g[h])
                      for h in spec.hparams + tuple(spec.optional_state.values())}
                fa_groups.append({"params": [numpy_view(params[i], names[i]) for i in cells[k]],
                                  **hp})
                members.extend(cells[k])
            inner = getattr(fa, cls_name)(fa_groups)
            index, pgroups = 0, []
            for g in fa_groups:                  # hyperparameters: the groups' own
                pgroups.append({"params": list(range(index, index + len(g["params"])))})
                index += len(g["params"])
            inner.load_state_dict({"param_groups": pgroups, "state": {
                j: {"step": steps[i], **saved[i]} for j, i in enumerate(members)}})
            for k, ig in zip(keys, inner.param_groups):
                B.cells[k[1]].append(ig)
            B.inners.append((inner, len(order), len(order) + len(members)))
            order.extend(members)
        B.order = order
        B.active = [params[i] for i in order]
        nsc = len(spec.scalar_keys)
        B.gs_buf = torch.zeros((len(order), nsc), dtype=sdt)
        gs_np = B.gs_buf.numpy()
        B.gs_rows = []
        if nsc:
            for inner, lo, hi in B.inners:
                rows = [gi for gi, g in enumerate(inner.param_groups) for _ in g["params"]]
                names_ = [n for n, _ in inner._alg.group_scalars]
                cols = [names_.index(k) for k in spec.scalar_keys]
                B.gs_rows.append((inner, gs_np[lo:hi],
                                  np.ix_(np.array(rows, dtype=np.intp), cols)))
            _copy_group_scalars(B.gs_rows)
        B.step_buf = torch.tensor([float(steps[i]) for i in order], dtype=sdt)
        B.step_np = B.step_buf.numpy()       # bumped in place after each step
        # ---- publish: self.state[p] now holds the inner buffers
        for inner, lo, hi in B.inners:
            ist = self._inner_states(inner)
            for j in range(hi - lo):
                i = order[lo + j]
                p = params[i]
                g = groups[gidx[i]]
                new = {"step": B.step_buf[lo + j]}
                arrays = self._inner_state(inner, ist, j)
                for key in spec.state_keys + tuple(k for k, flag in spec.optional_state.items()
                                                   if g.get(flag)):
                    if key in spec.scalar_keys:
                        new[key] = B.gs_buf[lo + j, spec.scalar_keys.index(key)]
                    else:
                        new[key] = torch.from_numpy(arrays[key]).view(p.shape)
                old = dict.get(self.state, p) or {}
                new.update({k: v for k, v in old.items() if k not in new})
                self.state[p] = new
        return B


class _Block:
    """Inner optimizers over a set of parameters that (so far) always had gradients
    together."""

    __slots__ = ("cells", "inners", "order", "active", "gs_buf", "gs_rows", "step_buf",
                 "step_np")


_MAX_BLOCKS = 16


def _copy_group_scalars(gs_rows):
    """Publish the inner optimizers' group scalars (NAdam's mu_product, advanced by the
    kernel) into the per-parameter 0-d tensors of ``self.state``."""
    for inner, dst, rows in gs_rows:
        dst[...] = inner._gscal[rows]


def _collect_cells(S):
    S.cells = {gi: [ig for b in S.blocks for ig in b.cells[gi]]
               for gi in range(len(S.group_params))}


def _use_pattern(S, key):
    """Point the layout's step fields at the blocks of pattern ``key`` (grad presence
    per parameter), computing them on first use."""
    P = S.patterns.get(key)
    if P is None:
        blocks = [b for b in S.blocks if b.order and key[b.order[0]]]
        active, inners, step_nps, gs_rows = [], [], [], []
        for b in blocks:
            off = len(active)
            inners.extend((inner, lo + off, hi + off) for inner, lo, hi in b.inners)
            active.extend(b.active)
            step_nps.append(b.step_np)
            gs_rows.extend(b.gs_rows)
        ids = {id(p) for p in active}
        P = (active, ids, [p for p in S.params if id(p) not in ids], inners, step_nps, gs_rows)
        S.patterns[key] = P
    S.active, S.active_ids, S.inactive, S.inners, S.step_nps, S.gs_rows = P
    S.single = len(S.inners) == 1
    S.ptrs = [p.data_ptr() for p in S.active]


def _flatten(v):
    for x in v:
        if isinstance(x, (tuple, list)):
            yield from x
        else:
            yield x


# ----------------------------------------------------------------------------- classes
_ADAM_STATE = ("exp_avg", "exp_avg_sq")
_AMSGRAD = {"max_exp_avg_sq": "amsgrad"}


class Adam(FastadamTorchOptimizer, torch.optim.Adam):
    __doc__ = ("torch.optim.Adam with fastadam's fused CPU step (same arguments, results, "
               "state_dict). ``decoupled_weight_decay=True`` gives AdamW.\n\n"
               + (torch.optim.Adam.__doc__ or ""))
    _spec = Spec("Adam", ("lr", "betas", "eps", "weight_decay", "maximize"), _ADAM_STATE,
                 _AMSGRAD, structural=("decoupled_weight_decay",),
                 fa_class=lambda g: "AdamW" if g.get("decoupled_weight_decay") else "Adam")


class AdamW(FastadamTorchOptimizer, torch.optim.AdamW):
    __doc__ = ("torch.optim.AdamW with fastadam's fused CPU step (same arguments, results, "
               "state_dict).\n\n" + (torch.optim.AdamW.__doc__ or ""))
    _spec = Spec("AdamW", ("lr", "betas", "eps", "weight_decay", "maximize"), _ADAM_STATE,
                 _AMSGRAD, structural=("decoupled_weight_decay",),
                 fa_class=lambda g: "AdamW" if g.get("decoupled_weight_decay", True) else "Adam")


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
                     ("mu_product", "exp_avg", "exp_avg_sq"), scalar_keys=("mu_product",))

if hasattr(fa, "RAdam"):
    class RAdam(FastadamTorchOptimizer, torch.optim.RAdam):
        __doc__ = "torch.optim.RAdam with fastadam's fused CPU step.\n\n" + \
            (torch.optim.RAdam.__doc__ or "")
        _spec = Spec("RAdam", ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay",
                               "maximize"), ("exp_avg", "exp_avg_sq"))

if hasattr(fa, "SparseAdam"):
    class SparseAdam(FastadamTorchOptimizer, torch.optim.SparseAdam):
        __doc__ = ("torch.optim.SparseAdam with fastadam's fused CPU step over the touched "
                   "rows (same arguments, results, state_dict).\n\n"
                   + (torch.optim.SparseAdam.__doc__ or ""))
        _spec = Spec("SparseAdam", ("lr", "betas", "eps", "maximize"),
                     ("exp_avg", "exp_avg_sq"), sparse_grads=True)

        # One inner fastadam.SparseAdam over *every* parameter (it keeps a step count per
        # parameter and takes None for "no gradient"), built once: a changing set of
        # parameters with gradients costs nothing. torch keeps ``state["step"]`` as a
        # Python int here, so it is written after each step for the parameters stepped.

        def step(self, closure=None):
            """One step for every parameter that has a (sparse COO) gradient, as
            torch.optim.SparseAdam: duplicate indices are summed, only the touched rows
            of the parameter and its moments change, the step count advances."""
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if torch.get_num_threads() != _threads_seen[0]:
                _share_threads()
            L = self._layout
            groups = self.param_groups
            if L is None or len(groups) != len(L.group_params) or any(
                    g["params"] is not gp or len(gp) != n
                    for g, gp, n in zip(groups, L.group_params, L.group_lens)) \
                    or [p.data_ptr() for p in L.active] != L.ptrs:
                L = self._rebuild()
            for gi, g in enumerate(groups):
                vals = L.getter(g)
                if vals != L.seen[gi] or gi in L.tensor_groups:
                    if self._push(L, gi, g, vals):
                        L = self._rebuild()
            grads, stepped = [], []
            for j, p in enumerate(L.active):
                g = p.grad
                if g is None:
                    grads.append(None)
                    continue
                grads.append(self._sparse_pair(g, p, L.shapes2[j]))
                stepped.append(j)
            if not stepped:
                return loss
            inner = L.inners[0][0]
            inner.step(grads)
            if inner.skipped_steps != L.skipped:     # nonfinite policy: nothing changed
                L.skipped = inner.skipped_steps
                return loss
            increment_version([L.active[j] for j in stepped])
            state, steps = self.state, inner._steps
            for j in stepped:
                p = L.active[j]
                st = dict.get(state, p)
                if not st or "exp_avg" not in st or st["exp_avg"] is not L.views[j][0]:
                    st = state[p] = {"step": 0, "exp_avg": L.views[j][0],
                                     "exp_avg_sq": L.views[j][1]}
                st["step"] = steps[j]
            return loss

        step = FastadamTorchOptimizer._hooked(step)

        @staticmethod
        def _sparse_pair(g, p, shape2):
            """(row indices, values) NumPy views of a sparse COO gradient, uncoalesced
            (the kernel sums duplicate rows)."""
            if g.layout != torch.sparse_coo:
                raise RuntimeError("SparseAdam does not support dense gradients, please "
                                   "consider Adam instead")
            if g.dtype != p.dtype or tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"a gradient of dtype {g.dtype} and shape "
                                 f"{tuple(g.shape)} for a parameter of dtype {p.dtype} and "
                                 f"shape {tuple(p.shape)}")
            g = g.detach()
            if g.sparse_dim() != 1:        # sparse along several dims: rows of dim 0
                g = g.coalesce().to_dense().to_sparse(1)
            idx, vals = g._indices()[0], g._values()
            if not vals.is_contiguous():
                vals = vals.contiguous()
            vals = vals.numpy()
            if shape2 is not None:
                vals = vals.reshape(vals.shape[0], shape2[1])
            return idx.numpy(), vals

        def _rebuild(self, have=None):
            spec = self._spec
            groups = self.param_groups
            params, names, gidx = [], [], []
            for gi, g in enumerate(groups):
                self._check_group(g, gi)
                for k, p in enumerate(g["params"]):
                    name = f"param_groups[{gi}]['params'][{k}]"
                    if p.dim() == 0:
                        raise ValueError(f"{name} is 0-d; fastadam.torch.SparseAdam steps "
                                         "parameters with rows (1-D or more)")
                    params.append(p)
                    names.append(name)
                    gidx.append(gi)
            saved = {}
            for i, p in enumerate(params):
                step, arrays = self._read_state(p, names[i], groups[gidx[i]])
                if step or arrays:
                    saved[i] = {"step": step, **{k: a if a.ndim <= 2 else a.reshape(a.shape[0], -1)
                                                for k, a in arrays.items()}}
            shapes2 = [None if p.dim() <= 2 else (p.shape[0], p[0].numel()) for p in params]
            views = [numpy_view(p, n) if s is None else numpy_view(p, n).reshape(s)
                     for p, n, s in zip(params, names, shapes2)]
            fa_groups, index = [], 0
            for g in groups:
                n = len(g["params"])
                fa_groups.append({"params": views[index:index + n],
                                  **{h: _fa_value(h, g[h]) for h in spec.hparams}})
                index += n
            inner = fa.SparseAdam(fa_groups)
            pgroups, index = [], 0
            for g in groups:
                pgroups.append({"params": list(range(index, index + len(g["params"])))})
                index += len(g["params"])
            inner.load_state_dict({"param_groups": pgroups, "state": saved})
            L = _Layout()
            L.group_params = [g["params"] for g in groups]
            L.group_lens = [len(g["params"]) for g in groups]
            L.getter = operator.itemgetter(*self._watched)
            L.seen = [L.getter(g) for g in groups]
            L.tensor_groups = {gi for gi, v in enumerate(L.seen)
                               if any(isinstance(x, torch.Tensor) for x in _flatten(v))}
            L.cells = {gi: [ig] for gi, ig in enumerate(inner.param_groups)}
            L.inners = [(inner, 0, len(params))]
            L.active = params
            L.ptrs = [p.data_ptr() for p in params]
            L.shapes2 = shapes2
            L.skipped = inner.skipped_steps
            L.views = [(torch.from_numpy(inner._m[j]).view(p.shape),
                        torch.from_numpy(inner._v[j]).view(p.shape))
                       for j, p in enumerate(params)]
            # publish: self.state[p] holds the inner buffers (parameters that have state)
            for i, p in enumerate(params):
                if i in saved:
                    old = dict.get(self.state, p) or {}
                    new = {"step": saved[i]["step"], "exp_avg": L.views[i][0],
                           "exp_avg_sq": L.views[i][1]}
                    new.update({k: v for k, v in old.items() if k not in new})
                    self.state[p] = new
            self._layout = L
            return L
