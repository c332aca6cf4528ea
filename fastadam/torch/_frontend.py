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

import numpy as np
import torch

from . import _blocks, _threads
from ._blocks import _copy_group_scalars
from ._common import (_IMPL_FLAGS, _REFUSED_FLAGS, LOW_PRECISION, Spec, _bf16_view, _fa_value,
                      _share_threads, _threads_seen, _twin_defaults, check_dtype,
                      increment_version, numpy_view)
from ._hooks import hooked
from ._lowp import LowpOptions, precision_key

class FastadamTorchOptimizer(LowpOptions):
    """Mixin placed before a ``torch.optim`` class: ``class Adam(FastadamTorchOptimizer,
    torch.optim.Adam)``. Replaces ``step``; everything else is torch's (plus
    ``set_low_precision`` for Adam / AdamW: _lowp.LowpOptions)."""

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
            cls.step = hooked(FastadamTorchOptimizer.step)
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

    def _check_param(self, p, name):
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
        check_dtype(p, name, lowp=self._spec.lowp)
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
        if self._lowp_options is not None:
            st["_lowp_options"] = dict(self._lowp_options)
        return st

    def load_state_dict(self, state_dict):
        """torch's load_state_dict; for bfloat16 and float16 parameters the float32 state
        (moments, master weights) is kept in float32 (torch casts state to the parameter's
        dtype), as copies (the compensation buffer too: not the saved tensors)."""
        keep = {}
        try:
            saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
            mine = [p for g in self.param_groups for p in g["params"]]
            for i, p in zip(saved_ids, mine):
                st = state_dict["state"].get(i)
                if p.dtype in LOW_PRECISION and isinstance(st, dict):
                    keep[p] = {k: v.detach().to(device="cpu", copy=True, dtype=(
                        p.dtype if k == "compensation" else torch.float32))
                               for k, v in st.items() if k != "step"
                               and isinstance(v, torch.Tensor) and v.is_floating_point()}
        except (KeyError, TypeError, AttributeError):
            keep = {}                       # malformed: torch's own checks report it
        super().load_state_dict(state_dict)
        for p, d in keep.items():
            if p in self.state:
                self.state[p].update(d)
        if keep:
            self._layout = None

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
        # ---- gradients (fresh tensors after zero_grad(set_to_none)): their data addresses
        # when one fastadam optimizer steps them all and each is dense, C-contiguous, of
        # its parameter's dtype and size and not a negated view (torch's grad setter keeps
        # dtype, size and device, but ``grad.data = ...`` can change dtype and size);
        # otherwise a NumPy view of each
        refs = gl = None
        if L.by_addr:
            try:
                refs = [g.data_ptr() if g.dtype is dt and g.numel() == n and not g.is_neg()
                        and g.is_contiguous() else 0
                        for g, dt, n in zip([p.grad for p in L.active], L.gdtypes, L.gnumels)]
            except (AttributeError, RuntimeError):
                refs = None      # a missing or sparse gradient
            else:
                if 0 in refs:
                    refs = None
        if refs is None:
            try:
                gl = [p.grad.numpy() for p in L.active]
            except (AttributeError, RuntimeError, TypeError):
                gl = None        # a missing, sparse or requires_grad gradient: slow path
        if (refs is None and gl is None) \
                or (L.inactive and any(p.grad is not None for p in L.inactive)) \
                or [p.data_ptr() for p in L.active] != L.ptrs:
            L, gl = self._slow_grads(L)
            if L is None:
                return loss      # no parameter has a gradient: nothing to do
            refs = None
        if refs is None or not _threads.run(L.numel, L.inners[0][0]._step_refs,
                                            np.array(refs, dtype=np.int64)):
            if gl is None:
                gl = [self._grad_array(p.grad) for p in L.active]
            _threads.run(L.numel, self._run_inners, L, gl)   # threads: _threads.py
        increment_version(L.active)      # in-place update, as torch's optimizers record
        for s in L.step_nps:
            np.add(s, 1, out=s)
        if L.gs_rows:
            _copy_group_scalars(L.gs_rows)
        return loss

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _run_inners(L, gl):
        """Step the inner optimizers of layout ``L`` with gradients ``gl``."""
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
        if g.dtype == torch.bfloat16:
            return _bf16_view(g)
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
        # bfloat16 / float16 parameters: float32 moments, and float32 master weights or a
        # compensation buffer of the parameter's dtype (fastadam.lowp)
        lowp = p.dtype in LOW_PRECISION
        extra = precision_key(self._lowp_resolved()) if lowp else None
        if extra:
            keys.append(extra)
        sdt = torch.float32 if lowp else p.dtype
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
            v = v.detach().to(device="cpu", dtype=p.dtype if key == "compensation" else sdt)
            v = v.contiguous()
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
        """A fresh layout over the parameters with gradients (``_blocks.rebuild``)."""
        return _blocks.rebuild(self, have)

    def _switch(self, have):
        """Follow a changed set of parameters with gradients (``_blocks.switch``)."""
        return _blocks.switch(self, have)

