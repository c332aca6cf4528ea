"""ShardedOptimizer: construction, agreement across ranks, param groups and the step."""
from __future__ import annotations

import time
import zlib

import numpy as np

from .. import _checks as C
from ..optim import Adam, ParamGroup
from ..optim.groups import normalize_params, validate_groups
from ._norms import _NormsMixin
from ._space import _Space, _all_finite, _mpi
from ._state import _ERRORS, _StateMixin


class ShardedOptimizer(_StateMixin, _NormsMixin):
    """A fastadam optimizer whose state is sharded over the ranks of an MPI communicator
    (ZeRO stage 1/2). Every rank calls every method (they are collective), with its own
    local gradients; every rank ends each step with identical parameters, equal to one
    process stepping on the mean of the ranks' gradients.

    ``params``: arrays or param-group dicts, exactly as for ``optimizer_class``, the same
    shapes, dtypes and hyperparameters on every rank (checked when built; rank 0's
    parameter values are broadcast to the others, as data-parallel training requires).
    ``optimizer_class``: any fastadam optimizer (``fa.Adam``, ``fa.AdamW``,
    ``fa.Adamax``, ...); ``**defaults`` are its keyword arguments (``lr``, ``betas``,
    ``max_grad_norm``, ``average``, ``nonfinite`` ...). ``comm``: an mpi4py
    communicator, default ``MPI.COMM_WORLD``. ``grad_reduction``: "mean" (default) or
    "sum" of the ranks' gradients.

    Parameters that are consecutive views of one buffer (``fa.flatten``) are gathered
    into in place; otherwise the optimizer keeps a flat copy and writes the parameters
    back after each step.
    """

    def __init__(self, params, optimizer_class=Adam, comm=None, *, grad_reduction="mean",
                 **defaults):
        MPI = self._MPI = _mpi()
        self._comm = MPI.COMM_WORLD if comm is None else comm
        self._rank, self._size = self._comm.Get_rank(), self._comm.Get_size()
        self.optimizer_class = optimizer_class
        self._inner = None
        err = None
        try:
            self._setup(params, optimizer_class, grad_reduction, defaults)
        except Exception as e:      # agree first: a rank that raises alone hangs the rest
            err = e
        self._agree(err)
        self._check_same_everywhere()
        for sp in self._spaces:     # rank 0's parameters everywhere, then the shards
            self._comm.Bcast([sp.flat, self._mpitype(sp.dtype)], root=0)
            if sp.own_copy:
                sp.push()
        err = None
        try:
            self._build_inner()
        except Exception as e:
            err = e
        self._agree(err)

    # ------------------------------------------------------------------ construction
    def _setup(self, params, optimizer_class, grad_reduction, defaults):
        if not (isinstance(optimizer_class, type) and hasattr(optimizer_class, "step")
                and hasattr(optimizer_class, "load_state_dict")):
            raise TypeError("optimizer_class must be a fastadam optimizer class (fa.Adam, "
                            f"fa.AdamW, fa.Adamax, ...), got {optimizer_class!r}")
        if grad_reduction not in ("mean", "sum"):
            raise ValueError(f"grad_reduction must be 'mean' or 'sum', got {grad_reduction!r}")
        self.grad_reduction = grad_reduction
        defaults = dict(defaults)
        self.nonfinite = C.check_nonfinite(defaults.pop("nonfinite", "propagate"))
        self._average = C.check_average(defaults.pop("average", None))
        self._user_defaults = defaults
        # A one-element optimizer of the class: validates defaults and hyperparameter
        # edits, and names the algorithm.
        self._proto = optimizer_class([np.zeros(1)], average=self._average,
                                      nonfinite="propagate", **defaults)
        self.defaults = dict(self._proto.defaults)
        self._hkeys = list(self.defaults)
        self._algorithm = self._proto.state_dict()["algorithm"]
        self.param_groups = [ParamGroup(g) for g in self._normalize(params)]
        self._group_params = [g["params"] for g in self.param_groups]
        self._params = [p for g in self.param_groups for p in g["params"]]
        self._group_of = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]
        by_dtype = {}
        for i, p in enumerate(self._params):
            by_dtype.setdefault(p.dtype, []).append((i, self._group_of[i], p))
        self._spaces = [_Space(dt, mem, self._rank, self._size) for dt, mem in by_dtype.items()]
        self.grads = [None] * len(self._params)
        for sp in self._spaces:
            for k, (i, _, _) in enumerate(sp.members):
                self.grads[i] = sp.grad_views[k]
        self._steps = np.zeros(len(self.param_groups), dtype=np.int64)
        #: Steps skipped on every rank because the gradient was not finite ("skip").
        self.skipped_steps = 0
        #: Per-group global norm of the reduced gradient at the last step, when computed
        #: (max_grad_norm set or nonfinite != "propagate"); else None.
        self.last_grad_norms = [None] * len(self.param_groups)
        self._groups_seen = None
        self._hyper_hash = 0
        self._consolidated = None
        #: Bytes this rank sent in the last step, by kind, for bandwidth-optimal (ring)
        #: collectives: a reduce-scatter or all-gather of S bytes sends (N-1)/N * S per
        #: rank; "control" counts the small allreduces (agreement, norms) as 2x payload.
        self.comm_bytes = {}
        #: Seconds spent in each phase of the last step on this rank.
        self.last_step_times = {}
        self._adopt_groups(self._validate_groups())

    def _normalize(self, params):
        out = []
        groups = normalize_params(params, lambda name, p: C.check_array(name, p, writable=True))
        for gi, g in enumerate(groups):
            full = dict(self.defaults)
            full.update({k: v for k, v in g.items() if k != "params"})
            full.update(self._check_hparams(full, f"param_groups[{gi}]"))
            full["params"] = g["params"]
            out.append(full)
        return out

    def _check_hparams(self, h, where):
        # The algorithm's own validation (the one place this module reaches into the
        # optimizer class beyond its public interface).
        return self._proto._validate(h, where=where)

    def _check_same_everywhere(self):
        """Every rank must describe the same optimizer: compare a hash of the layout and
        hyperparameters (one allreduce); on a mismatch name the first differing rank."""
        sig = repr((self._algorithm, self.grad_reduction, self.nonfinite, self._average,
                    [(p.dtype.str, p.shape) for p in self._params],
                    [len(g["params"]) for g in self.param_groups],
                    [self._hparams_of(g) for g in self.param_groups]))
        h = zlib.crc32(sig.encode())
        mm = np.array([h, -h], dtype=np.int64)
        self._comm.Allreduce(self._MPI.IN_PLACE, mm, op=self._MPI.MIN)
        if mm[0] != -mm[1]:
            sigs = self._comm.allgather(sig)
            bad = next(r for r, s in enumerate(sigs) if s != sigs[0])
            raise ValueError(f"rank {bad} built a different optimizer than rank 0 "
                             "(parameter shapes/dtypes, param groups or hyperparameters "
                             "differ); every rank must pass the same layout")

    def _hparams_of(self, g, inner=False):
        h = {k: g[k] for k in self._hkeys}
        if inner:
            h["max_grad_norm"] = None   # clipping is done here, with the global norm
        return h

    def _mpitype(self, dtype):
        # Predefined types: reductions are defined on them (a duplicated type is not).
        MPI = self._MPI
        t = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE}.get(dtype)
        if t is None:
            from mpi4py.util import dtlib
            t = dtlib.from_numpy_dtype(dtype)
        return t

    def _build_inner(self):
        """The inner optimizer over views of this rank's shard: one inner group per
        outer group that has elements here, holding the pieces of every dtype."""
        pieces_of = {}                    # outer group -> [1-D views]
        self._inner_params = []           # (space, group, lo, hi) in inner order
        for gi in range(len(self.param_groups)):
            for sp in self._spaces:
                if gi not in sp.group_range:
                    continue
                glo, ghi = sp.group_range[gi]
                lo, hi = max(glo, sp.lo), min(ghi, sp.hi)
                if hi > lo:
                    pieces_of.setdefault(gi, []).append(sp.flat[lo:hi])
                    self._inner_params.append((sp, gi, lo, hi))
        for sp in self._spaces:
            sp.pieces = [(g, lo, hi) for s, g, lo, hi in self._inner_params if s is sp]
        self._inner_groups = sorted(pieces_of)        # outer index of each inner group
        if not pieces_of:
            self._inner = None
            for sp in self._spaces:
                sp.shard_grad = np.zeros(0, sp.dtype)
            return
        groups = [dict(self._hparams_of(self.param_groups[gi], inner=True),
                       params=pieces_of[gi]) for gi in self._inner_groups]
        kw = dict(self._user_defaults)
        kw["max_grad_norm"] = None
        self._inner = self.optimizer_class(groups, average=self._average,
                                           nonfinite="propagate", **kw)
        order = []
        for sp, _, _, _ in self._inner_params:
            if sp.dtype not in order:
                order.append(sp.dtype)
        bufs = dict(zip(order, self._inner.grad_buffers))
        first = {}
        for j, (sp, _, _, _) in enumerate(self._inner_params):
            first.setdefault(sp.dtype, j)
        for sp in self._spaces:
            sp.shard_grad = bufs.get(sp.dtype, np.zeros(0, sp.dtype))
            # The layout this module relies on: per dtype, one flat gradient buffer whose
            # views are the inner optimizer's grads, in order (so it is the shard's).
            if sp.shard_grad.size != sp.hi - sp.lo or sp.shard_grad.dtype != sp.dtype or (
                    sp.dtype in first and self._inner.grads[first[sp.dtype]].ctypes.data
                    != sp.shard_grad.ctypes.data):
                raise RuntimeError("the inner optimizer's gradient buffers do not match "
                                   "the shard layout")

    # ------------------------------------------------------------------ agreement
    def _agree(self, exc):
        """Collective: if any rank holds an exception, every rank raises the first
        failing rank's error (same type and message)."""
        MPI = self._MPI
        flag = np.array([self._rank if exc is not None else self._size], dtype=np.int64)
        self._comm.Allreduce(MPI.IN_PLACE, flag, op=MPI.MIN)
        self._raise_first(int(flag[0]), exc)

    def _raise_first(self, first, exc):
        if first >= self._size:
            return
        payload = (type(exc).__name__, str(exc)) if self._rank == first else None
        kind, msg = self._comm.bcast(payload, root=first)
        where = f" (on rank {first} of {self._size})" if self._size > 1 else ""
        err = _ERRORS.get(kind, RuntimeError)(f"{msg}{where}")
        if self._rank == first and exc is not None:
            raise err from exc
        raise err

    # ------------------------------------------------------------------ param groups
    def _groups_changed(self):
        groups = self.param_groups
        if groups is not self._groups_seen or len(groups) != len(self._group_params):
            return True
        return any(type(g) is not ParamGroup or g.dirty for g in groups)

    def _validate_groups(self):
        """Check edited param groups (no writes); return the validated values."""
        return validate_groups(self.param_groups, self._group_params, self._check_hparams)

    def _adopt_groups(self, values):
        """Write validated hyperparameters into the groups and the inner groups."""
        for gi, v in enumerate(values):
            g = self.param_groups[gi]
            if type(g) is not ParamGroup:
                g = self.param_groups[gi] = ParamGroup(g)
            g.update(v)
            g.dirty = False
        if self._inner is not None:
            for j, gi in enumerate(self._inner_groups):
                self._inner.param_groups[j].update(
                    self._hparams_of(self.param_groups[gi], inner=True))
        self._clip = [g["max_grad_norm"] for g in self.param_groups]
        self._hyper_hash = self._hash(self.param_groups)
        self._groups_seen = self.param_groups

    def _hash(self, groups):
        """A hash of the groups' hyperparameters, the same on ranks that agree."""
        values = [{k: g[k] for k in self._hkeys} for g in groups]
        return zlib.crc32(repr(values).encode()) & 0x3FFFFFFF

    # ------------------------------------------------------------------ step
    def _check_grads(self, grads):
        if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
            raise TypeError("grads must be a list of arrays, one per parameter, got "
                            f"{type(grads).__name__}")
        if len(grads) != len(self._params):
            raise ValueError(f"grads has {len(grads)} arrays, expected {len(self._params)} "
                             "(one per parameter, in param_groups order)")
        for i, (g, p) in enumerate(zip(grads, self._params)):
            C.check_array(f"grads[{i}]", g, writable=False, dtype=p.dtype, shape=p.shape)

    def step(self, grads=None):
        """One step (collective). ``grads``: this rank's gradients, a list of arrays in
        param_groups order (like ``fa.Adam.step``), or None to use ``self.grads``. Bad
        input on any rank raises the same TypeError/ValueError on every rank, with
        parameters and state unchanged everywhere."""
        MPI, comm = self._MPI, self._comm
        if grads is not None and len(grads) == len(self.grads) and all(
                a is b for a, b in zip(grads, self.grads)):
            grads = None                                 # opt.grads passed explicitly
        clock = time.perf_counter
        t0 = clock()
        err = new_groups = None
        try:
            if self._groups_changed():
                new_groups = self._validate_groups()
            if grads is not None:
                self._check_grads(grads)
            if self.nonfinite == "raise":
                arrays = self.grads if grads is None else grads
                for i, g in enumerate(arrays):
                    if not _all_finite(g.reshape(-1)):
                        err = ValueError(f"grads[{i}] contains NaN or inf; nothing was "
                                         "updated (nonfinite='raise')")
                        break
        except Exception as e:
            err = e
        if new_groups is not None and err is None:
            h = self._hash(new_groups)
        else:
            h = self._hyper_hash
        # One allreduce: first failing rank, and min/max of the hyperparameter hash.
        flags = np.array([self._rank if err is not None else self._size, h, -h],
                         dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MIN)
        self._raise_first(int(flags[0]), err)
        if flags[1] != -flags[2]:
            raise ValueError("ranks disagree on hyperparameters: every rank must edit "
                             "param_groups (schedules) identically; nothing was updated")
        if new_groups is not None:
            self._adopt_groups(new_groups)
        times = self.last_step_times = {}
        t1 = clock()
        times["agree"] = t1 - t0
        stats = {"reduce_scatter": 0, "allgather": 0, "control": 2 * flags.nbytes}
        n = self._size
        # ---- reduce-scatter the gradients into the inner optimizer's buffers
        for k, sp in enumerate(self._spaces):
            if grads is not None:
                for (i, _, _), view in zip(sp.members, sp.grad_views):
                    np.copyto(view, grads[i])
            t = self._mpitype(sp.dtype)
            if sp.even:
                comm.Reduce_scatter_block([sp.grad_flat, t], [sp.shard_grad, t], op=MPI.SUM)
            else:
                comm.Reduce_scatter([sp.grad_flat, t], [sp.shard_grad, t],
                                    recvcounts=sp.counts, op=MPI.SUM)
            if self.grad_reduction == "mean" and n > 1:
                np.divide(sp.shard_grad, sp.dtype.type(n), out=sp.shard_grad)
            stats["reduce_scatter"] += sp.size * sp.dtype.itemsize * (n - 1) // n
        t2 = clock()
        times["reduce_scatter"] = t2 - t1
        # ---- global norms: clipping and the non-finite policy
        if self.nonfinite != "propagate" or any(c is not None for c in self._clip):
            if not self._norms_and_clip(stats):
                self.comm_bytes = stats
                return
        t3 = clock()
        times["norms"] = t3 - t2
        if self._inner is not None:
            self._inner.step()
        self._steps += 1
        self._consolidated = None
        t4 = clock()
        times["local_step"] = t4 - t3
        # ---- all-gather the updated shards
        for sp in self._spaces:
            t = self._mpitype(sp.dtype)
            comm.Allgatherv(MPI.IN_PLACE, [sp.flat, (sp.counts, sp.bounds[:-1]), t])
            if sp.own_copy:
                sp.push()
            stats["allgather"] += sp.size * sp.dtype.itemsize * (n - 1) // n
        times["allgather"] = clock() - t4
        self.comm_bytes = stats

    # ------------------------------------------------------------------ grads, averages
    def zero_grad(self):
        """Set this rank's gradients ``self.grads`` to zero."""
        for sp in self._spaces:
            sp.grad_flat.fill(0)

    @property
    def grad_buffers(self):
        """This rank's flat gradient buffers behind ``self.grads``, one per dtype."""
        return [sp.grad_flat for sp in self._spaces]

    @property
    def local_optimizer(self):
        """The optimizer stepping this rank's shard (None when the shard is empty)."""
        return self._inner

    @property
    def shard_ranges(self):
        """{dtype: (start, stop)} of this rank's shard in each dtype's flat space."""
        return {sp.dtype: (sp.lo, sp.hi) for sp in self._spaces}

    def averaged_params(self):
        """Temporal averages of the parameters (collective), as ``Optimizer.averaged_params``:
        new arrays of the parameters' shapes on every rank. Needs ``average=beta``."""
        if self._average is None:
            raise ValueError("averaged_params() needs the optimizer built with "
                             "average=beta (e.g. average=0.999)")
        local = self._inner.averaged_params() if self._inner is not None else []
        out = [None] * len(self._params)
        for sp in self._spaces:
            full = np.empty(sp.size, sp.dtype)
            mine = [a.reshape(-1) for a, (s, _, _, _) in zip(local, self._inner_params)
                    if s is sp]
            if mine:
                full[sp.lo:sp.hi] = np.concatenate(mine)
            t = self._mpitype(sp.dtype)
            self._comm.Allgatherv(self._MPI.IN_PLACE, [full, (sp.counts, sp.bounds[:-1]), t])
            for (i, _, p), o in zip(sp.members, sp.offsets):
                out[i] = full[o:o + p.size].reshape(p.shape).copy()
        return out

    def __reduce_ex__(self, protocol):
        raise TypeError("a ShardedOptimizer holds an MPI communicator and cannot be copied "
                        "or pickled; checkpoint it with save_sharded() or "
                        "consolidate_state_dict() + state_dict()")

    def __repr__(self):
        return (f"ShardedOptimizer({self.optimizer_class.__name__}, rank {self._rank} of "
                f"{self._size}, shards {self.shard_ranges})")

