"""Functional API: one fused step on caller-owned flat buffers, for every algorithm of the
registry.

Each public function validates its arguments (a cheap acceptance test, falling back to
the checks of ``_checks.py`` for the message), looks up the hyperparameter row and the
kernels of its settings (cached), and launches the serial or parallel kernel, which
computes the step's scalars in float64 and rounds them once to the buffers' dtype."""
from __future__ import annotations

import numpy as np

from . import _checks as C
from . import config
from .kernels import registry
from numba import types

from .kernels.launch import CTX_F32, CTX_F64, CTX_HYPER, CTX_LEN, CTX_NDARRAY, build_launchers
from .kernels.memory import ARRAY_NAMES
from .kernels.unsafe import OBJECT_CALLS, entry_point
from .kernels.spec import (H_ALG, H_CLIP, H_LR, H_SIGN, H_WEIGHT_DECAY, N_GROUP_SCALARS,
                           N_HYPER, wd_mode)
from .optim.groups import Validator

_INF = float("inf")
_FLOAT_DTYPES = C.FLOAT_DTYPES
_NO_GROUP_SCALARS = np.zeros(N_GROUP_SCALARS)       # read-only use: algorithms without
_MAX_STEP = C.MAX_STEP
_NO_GS = id(_NO_GROUP_SCALARS)
_OBJ_SIG = (types.int64,) * 9       # obj_serial's arguments: all ints
#: Option types whose values cannot change in place: only such options are remembered by
#: identity (a list of betas edited between two calls is validated again).
_IMMUTABLE = frozenset({float, int, bool, str, np.float64, np.float32, np.float16,
                        np.int64, np.int32, np.bool_})


class _Setup:
    """What one (algorithm, options) pair needs for a call: the hyperparameter row and
    the serial/parallel flat kernels."""

    __slots__ = ("h", "serial", "parallel", "obj", "ctx", "ctx_addr", "n_state")

    def __init__(self, alg, values):
        wd = wd_mode(values["weight_decay"], alg.decoupled(values))
        h = np.zeros(N_HYPER)
        h[H_LR] = values["lr"]
        h[H_WEIGHT_DECAY] = values["weight_decay"]
        h[H_SIGN] = -1.0 if values["maximize"] else 1.0
        h[H_CLIP] = 1.0
        own = alg.hyper(values)
        h[H_ALG:H_ALG + len(own)] = own
        h.flags.writeable = False
        self.h = h
        self.n_state = alg.n_state(values)
        k = build_launchers(alg.id, alg.variant(values), self.n_state, wd,
                            values["maximize"], False)
        self.serial, self.parallel = k[0], k[1]
        self.obj = None
        if OBJECT_CALLS:        # the object-reading launcher and its context (kept alive)
            ctx = np.zeros(CTX_LEN, np.int64)
            ctx[CTX_NDARRAY] = id(np.ndarray)
            ctx[CTX_F32], ctx[CTX_F64] = id(np.dtype(np.float32)), id(np.dtype(np.float64))
            ctx[CTX_HYPER] = h.ctypes.data
            self.ctx, self.ctx_addr = ctx, ctx.ctypes.data
            kernel = k[4]

            def first_call(*args):
                # compiled at the first call, not here: the low-precision functions set
                # up only for the hyperparameter row (they never call this launcher)
                self.obj = entry_point(kernel, _OBJ_SIG)
                return self.obj(*args)

            self.obj = first_call


class _Front:
    """The functional step of one algorithm: validation and a cache of setups.

    ``flags`` names the options after (lr, betas, eps, weight_decay), in call order, with
    the exact type a valid value has (bool, str or float). A call whose options all have
    exactly those types is looked up directly; any other call is validated first
    (TypeError/ValueError naming the argument) and looked up in normalised form. Only
    validated keys enter the cache, so a hit is a valid call."""

    def __init__(self, name, **flags):
        self.alg = registry.get(name)
        self.validate = Validator(self.alg)
        self.names = tuple(flags)
        self.kinds = tuple(flags.values())
        self.cache = {}
        #: (lr, betas, eps, weight_decay, *flags, setup) of the last call whose options
        #: are all immutable: a call passing the very same objects has that setup. The
        #: public functions test it inline (no call, no packing: the small-call path).
        self.last = (object(),) * (5 + len(flags))

    def setup(self, lr, betas, eps, weight_decay, *flags):
        s = self._lookup(lr, betas, eps, weight_decay, flags)
        if (type(betas) is tuple and type(lr) in _IMMUTABLE and type(eps) in _IMMUTABLE
                and type(weight_decay) in _IMMUTABLE
                and all(type(b) in _IMMUTABLE for b in betas)
                and all(type(f) in _IMMUTABLE for f in flags)):
            self.last = (lr, betas, eps, weight_decay) + flags + (s,)
        return s

    def _lookup(self, lr, betas, eps, weight_decay, flags):
        if (type(lr) is float and type(eps) is float and type(weight_decay) is float
                and type(betas) is tuple and len(betas) == 2 and type(betas[0]) is float
                and type(betas[1]) is float
                and all(type(f) is k for f, k in zip(flags, self.kinds))):
            s = self.cache.get((lr, betas, eps, weight_decay) + flags)
            if s is not None:
                return s
        group = dict(zip(self.names, flags), lr=lr, betas=betas, eps=eps,
                     weight_decay=weight_decay, max_grad_norm=None)
        values = self.validate(group, where="")
        key = (values["lr"], tuple(values["betas"]), values["eps"],
               values["weight_decay"]) + tuple(values[k] for k in self.names)
        s = self.cache.get(key)
        if s is None:
            s = _Setup(self.alg, values)
            if len(self.cache) > 1024:
                self.cache.clear()
            self.cache[key] = s
        return s


def _ok(a, dtype, shape, writable):
    """Cheap acceptance test; False sends the array through C.check_array."""
    if type(a) is not np.ndarray:
        return False
    if dtype is None:
        if a.dtype not in _FLOAT_DTYPES:
            return False
    elif a.dtype is not dtype or a.shape != shape:
        return False
    f = a.flags
    return f.c_contiguous and (f.writeable or not writable)


def _check_buffers(param, grad, states):
    if not _ok(param, None, None, True) or param.ndim != 1:
        C.check_array("param", param, writable=True, one_d=True)
    dt, shape = param.dtype, param.shape
    if not _ok(grad, dt, shape, False):
        C.check_array("grad", grad, writable=False, dtype=dt, shape=shape)
    for name, a in states:
        if not _ok(a, dt, shape, True):
            C.check_array(name, a, writable=True, dtype=dt, shape=shape)


def _call(s, param, grad, s0, s1, s2, step, gs, names, bad=-5):
    """The step: through the object-reading launcher when it accepts the arrays
    (kernels/unsafe.py, shortcut 3), else checked in Python and launched. ``gs``: the
    group scalars (float64 ndarray of N_GROUP_SCALARS, advanced in place); s1 / s2 None
    when the algorithm has no such state. ``bad`` < -3: that launcher was not tried;
    else what it returned when the caller tried it (-3: an array failed its checks,
    -4: parallel size, >= 0: overlap)."""
    if not (type(step) is int and 1 <= step <= _MAX_STEP):
        step = C.check_step(step)
    if bad < -3 and s.obj is not None:
        bad = s.obj(id(param), id(grad), id(s0), id(s1), id(s2), step, id(gs), s.ctx_addr,
                    config.PARALLEL_THRESHOLD)
        if bad == -1:
            return
    if bad >= 0:
        _overlap_error(bad, names)
    _check_buffers(param, grad, [(n, a) for n, a in zip(names, (s0, s1, s2)) if a is not None])
    _launch(s, param, grad, s0, s1 if s1 is not None else param[:0],
            s2 if s2 is not None else param[:0], step, gs, names)


def _overlap_error(bad, names):
    labels = dict(zip(ARRAY_NAMES, ("param", "grad") + names + ("",)))
    raise ValueError(f"{labels[ARRAY_NAMES[bad // 6]]} and {labels[ARRAY_NAMES[bad % 6]]}"
                     " share memory; every parameter, gradient and state buffer must "
                     "be a separate array")


def _launch(s, param, grad, s0, s1, s2, step, gs, names):
    empty = param[:0]
    if config.use_parallel(param.shape[0]):
        with config.launch_lock():
            bad = s.parallel(param, grad, s0, s1, s2, empty, s.h, step, gs)
    else:
        bad = s.serial(param, grad, s0, s1, s2, empty, s.h, step, gs)
    if bad >= 0:
        _overlap_error(bad, names)


_ADAM = _Front("adam", decoupled_weight_decay=bool, amsgrad=bool, maximize=bool,
               bias_correction=bool, eps_mode=str)
_ADAMAX = _Front("adamax", maximize=bool)
_NADAM = _Front("nadam", momentum_decay=float, decoupled_weight_decay=bool, maximize=bool)
_RADAM = _Front("radam", decoupled_weight_decay=bool, maximize=bool)


def adam_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, betas=(0.9, 0.999),
              eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
              max_exp_avg_sq=None, maximize=False, bias_correction=True, eps_mode="paper"):
    r"""One Adam step, in place on 1-D C-contiguous arrays of one dtype (float32/float64).

    With g = grad (negated if ``maximize``), t = ``step`` (>= 1)::

        g = g + weight_decay * param                  (L2, decoupled_weight_decay=False)
        param = param * (1 - lr * weight_decay)       (AdamW, decoupled_weight_decay=True)
        exp_avg    = beta1 * exp_avg    + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
        v = max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq) if amsgrad else exp_avg_sq
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t         (1, 1 if not bias_correction)
        "paper": param -= lr / bc1 * exp_avg / (sqrt(v) / sqrt(bc2) + eps)   # = PyTorch
        "hat":   param -= lr * sqrt(bc2) / bc1 * exp_avg / (sqrt(v) + eps)   # = TF, sklearn

    ``eps_mode="paper"`` is Algorithm 1 of Kingma & Ba (and torch.optim.Adam);
    ``"hat"`` is the "epsilon hat" variant of the end of section 2. ``max_exp_avg_sq`` is
    required when ``amsgrad``. Raises TypeError/ValueError, changing nothing, on bad input.
    """
    a, b, c, d, e, f, g, h, i, s = _ADAM.last      # the small-call path: see _Front
    if not (lr is a and betas is b and eps is c and weight_decay is d
            and decoupled_weight_decay is e and amsgrad is f and maximize is g
            and bias_correction is h and eps_mode is i):
        s = _ADAM.setup(lr, betas, eps, weight_decay, decoupled_weight_decay, amsgrad,
                        maximize, bias_correction, eps_mode)
    if amsgrad and max_exp_avg_sq is None:
        raise ValueError("max_exp_avg_sq is required when amsgrad=True "
                         "(an array of zeros before the first step)")
    bad = -5
    if s.obj is not None and type(step) is int and 0 < step <= _MAX_STEP:
        bad = s.obj(id(param), id(grad), id(exp_avg), id(exp_avg_sq), id(max_exp_avg_sq),
                    step, _NO_GS, s.ctx_addr, config.PARALLEL_THRESHOLD)
        if bad == -1:
            return
    _call(s, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq if amsgrad else None, step,
          _NO_GROUP_SCALARS, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), bad)


def adamax_step(param, grad, exp_avg, exp_inf, *, step, lr=2e-3, betas=(0.9, 0.999),
                eps=1e-8, weight_decay=0.0, maximize=False):
    r"""One AdaMax step (Kingma & Ba, section 7.1; = torch.optim.Adamax), in place::

        g = g + weight_decay * param                  (L2; g negated first if maximize)
        exp_avg = beta1 * exp_avg + (1 - beta1) * g
        exp_inf = max(beta2 * exp_inf, |g| + eps)
        param  -= lr / (1 - beta1**t) * exp_avg / exp_inf

    Same array rules and errors as :func:`adam_step`."""
    a, b, c, d, e, s = _ADAMAX.last
    if not (lr is a and betas is b and eps is c and weight_decay is d and maximize is e):
        s = _ADAMAX.setup(lr, betas, eps, weight_decay, maximize)
    bad = -5
    if s.obj is not None and type(step) is int and 0 < step <= _MAX_STEP:
        bad = s.obj(id(param), id(grad), id(exp_avg), id(exp_inf), 0, step, _NO_GS,
                    s.ctx_addr, config.PARALLEL_THRESHOLD)
        if bad == -1:
            return
    _call(s, param, grad, exp_avg, exp_inf, None, step, _NO_GROUP_SCALARS,
          ("exp_avg", "exp_inf", ""), bad)


def nadam_step(param, grad, exp_avg, exp_avg_sq, *, step, mu_product, lr=2e-3,
               betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
               decoupled_weight_decay=False, maximize=False):
    r"""One NAdam step (Dozat, 2016; = torch.optim.NAdam), in place. Returns the new
    ``mu_product`` (pass 1.0 at the first step, then what the previous call returned)::

        mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay));  mu_product *= mu_t
        exp_avg    = beta1 * exp_avg    + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
        denom = sqrt(exp_avg_sq / (1 - beta2**t)) + eps
        param -= lr * (1 - mu_t) / (1 - mu_product) * g / denom
               + lr * mu_{t+1} / (1 - mu_product * mu_{t+1}) * exp_avg / denom

    Weight decay is L2, or decoupled (``param *= 1 - lr * weight_decay``) with
    ``decoupled_weight_decay``. Same array rules and errors as :func:`adam_step`."""
    a, b, c, d, e, f, g, s = _NADAM.last
    if not (lr is a and betas is b and eps is c and weight_decay is d and momentum_decay is e
            and decoupled_weight_decay is f and maximize is g):
        s = _NADAM.setup(lr, betas, eps, weight_decay, momentum_decay,
                         decoupled_weight_decay, maximize)
    mp = C._number("mu_product", mu_product)
    if not (0.0 <= mp <= 1.0):
        raise ValueError(f"mu_product must be in [0, 1] (1.0 before the first step), got "
                         f"{mu_product!r}")
    gs = np.array([mp] + [0.0] * (N_GROUP_SCALARS - 1))   # read by address: full length
    _call(s, param, grad, exp_avg, exp_avg_sq, None, step, gs, ("exp_avg", "exp_avg_sq", ""))
    return float(gs[0])


def radam_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, betas=(0.9, 0.999),
               eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, maximize=False):
    r"""One RAdam step (Liu et al., 2020; = torch.optim.RAdam), in place. With
    rho_inf = 2 / (1 - beta2) - 1 and rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)::

        exp_avg    = beta1 * exp_avg    + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
        rho_t > 5: r = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))
                   param -= lr * r * sqrt(1 - beta2**t) / (1 - beta1**t)
                            * exp_avg / (sqrt(exp_avg_sq) + eps)
        otherwise: param -= lr / (1 - beta1**t) * exp_avg

    Weight decay is L2, or decoupled with ``decoupled_weight_decay``. Same array rules
    and errors as :func:`adam_step`."""
    a, b, c, d, e, f, s = _RADAM.last
    if not (lr is a and betas is b and eps is c and weight_decay is d
            and decoupled_weight_decay is e and maximize is f):
        s = _RADAM.setup(lr, betas, eps, weight_decay, decoupled_weight_decay, maximize)
    bad = -5
    if s.obj is not None and type(step) is int and 0 < step <= _MAX_STEP:
        bad = s.obj(id(param), id(grad), id(exp_avg), id(exp_avg_sq), 0, step, _NO_GS,
                    s.ctx_addr, config.PARALLEL_THRESHOLD)
        if bad == -1:
            return
    _call(s, param, grad, exp_avg, exp_avg_sq, None, step, _NO_GROUP_SCALARS,
          ("exp_avg", "exp_avg_sq", ""), bad)
