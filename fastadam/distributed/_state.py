"""ShardedOptimizer's state: consolidation to one rank, loading a full state_dict on any
world size, and sharded checkpoints (one file per rank and a manifest written last)."""
from __future__ import annotations

import os
import re
import secrets

import numpy as np

from .. import _checks as C
from .. import checkpoint as _ckpt
from ..optim.state import check_header, dict_groups, loaded_groups


_MANIFEST = "manifest.npz"
_SHARD_RE = re.compile(r"^shard-([0-9a-f]+)-(\d+)-of-(\d+)\.npz$")
_ERRORS = {"TypeError": TypeError, "ValueError": ValueError, "OSError": OSError,
           "FileNotFoundError": FileNotFoundError, "PermissionError": PermissionError,
           "MemoryError": MemoryError, "NotImplementedError": NotImplementedError}




class _StateMixin:
    """The state methods of :class:`ShardedOptimizer`."""

    def _local_rows(self):
        """{dtype: {state key: this rank's shard row (1-D copy)}}, with the same keys on
        every rank (collective: the union of the keys; zeros where a rank lacks one)."""
        local = {}
        st = self._inner.state if self._inner is not None else {}
        for j, (sp, _, lo, hi) in enumerate(self._inner_params):
            for key, arr in st[j].items():
                if key != "step":
                    local.setdefault(sp.dtype.str, {}).setdefault(key, []).append(arr.reshape(-1))
        names = self._comm.allgather({d: list(k) for d, k in local.items()})
        rows = {}
        for sp in self._spaces:
            keys = []
            for r in names:
                for key in r.get(sp.dtype.str, []):
                    if key not in keys:
                        keys.append(key)
            mine = local.get(sp.dtype.str, {})
            rows[sp.dtype.str] = {
                key: (np.concatenate(mine[key]) if key in mine
                      else np.zeros(sp.hi - sp.lo, sp.dtype)) for key in keys}
        return rows

    def consolidate_state_dict(self, to=0):
        """Gather the full optimizer state onto rank ``to`` (collective); afterwards
        ``state_dict()`` on that rank returns it in the layout of a single-process
        optimizer's ``state_dict()`` (so ``fa.Adam(...).load_state_dict`` accepts it)."""
        if isinstance(to, bool) or not isinstance(to, (int, np.integer)) \
                or not 0 <= to < self._size:
            err = ValueError(f"to must be a rank in [0, {self._size}), got {to!r}")
        else:
            err = None
        self._agree(err)
        rows = self._local_rows()
        root = self._rank == to
        state = {i: {"step": int(self._steps[self._group_of[i]])}
                 for i in range(len(self._params))} if root else None
        for sp in self._spaces:
            t = self._mpitype(sp.dtype)
            for key, row in rows[sp.dtype.str].items():
                full = np.empty(sp.size, sp.dtype) if root else None
                self._comm.Gatherv([row, t], [full, (sp.counts, sp.bounds[:-1]), t]
                                   if root else None, root=to)
                if root:
                    for (i, _, p), o in zip(sp.members, sp.offsets):
                        state[i][key] = full[o:o + p.size].reshape(p.shape)
        self._consolidated = None
        if root:
            self._consolidated = {"algorithm": self._algorithm, "state": state,
                                  "param_groups": dict_groups(self.param_groups),
                                  "average": self._average,
                                  "skipped_steps": self.skipped_steps}

    def state_dict(self):
        """The full state gathered by the last ``consolidate_state_dict(to=rank)``, on
        that rank; RuntimeError elsewhere or when a step has happened since (local, not
        collective)."""
        if self._consolidated is None:
            raise RuntimeError("state_dict() needs consolidate_state_dict(to=this rank) "
                               "first (called on every rank, after the last step); for a "
                               "checkpoint without gathering use save_sharded()")
        sd = self._consolidated
        return {"algorithm": sd["algorithm"],
                "state": {i: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                              for k, v in s.items()} for i, s in sd["state"].items()},
                "param_groups": [dict(g) for g in sd["param_groups"]],
                "average": sd["average"], "skipped_steps": sd["skipped_steps"]}

    def _check_full_groups(self, state_dict):
        """Validated hyperparameters of a full state_dict's param groups, and its
        skipped_steps (no writes)."""
        skipped = check_header(state_dict, self._algorithm, self._average)
        return loaded_groups(self, state_dict, validate=self._check_hparams), skipped

    def load_state_dict(self, state_dict):
        """Load a full state (from ``state_dict()`` after ``consolidate_state_dict``, or
        from a single-process optimizer over the same parameters) on every rank, each
        taking its own shard (collective; any world size). Everything is checked, on
        every rank, before anything is written; an error anywhere raises everywhere."""
        err = rows = None
        try:
            new_groups, skipped = self._check_full_groups(state_dict)
            state = state_dict["state"]
            if not isinstance(state, dict):
                raise TypeError("state_dict['state'] must be a dict")
            steps = [None] * len(self.param_groups)
            per_param = []
            for i, p in enumerate(self._params):
                st = state.get(i, state.get(str(i), {"step": 0}))
                if not isinstance(st, dict):
                    raise TypeError(f"state_dict['state'][{i}] must be a dict")
                step = st.get("step", 0)
                if isinstance(step, np.ndarray) and step.shape == ():
                    step = step.item()
                if isinstance(step, float) and step.is_integer():
                    step = int(step)
                if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) \
                        or not 0 <= step < C.MAX_STEP:
                    raise ValueError(f"state_dict['state'][{i}]['step'] must be an int >= 0, "
                                     f"got {step!r}")
                gi = self._group_of[i]
                if steps[gi] is None:
                    steps[gi] = int(step)
                elif steps[gi] != step:
                    raise ValueError(f"state_dict['state'][{i}]['step'] is {step} but other "
                                     f"parameters of param_groups[{gi}] are at {steps[gi]}")
                arrays = {}
                for key, a in st.items():
                    if key == "step":
                        continue
                    if not isinstance(a, np.ndarray):
                        raise TypeError(f"state_dict['state'][{i}][{key!r}] must be a "
                                        f"numpy.ndarray, got {type(a).__name__}")
                    if a.dtype != p.dtype or a.shape != p.shape:
                        raise ValueError(f"state_dict['state'][{i}][{key!r}] must have "
                                         f"dtype {p.dtype} and shape {p.shape}, got "
                                         f"{a.dtype} {a.shape}")
                    arrays[key] = a
                per_param.append(arrays)
            rows = {}
            for sp in self._spaces:
                keys = []
                for i, _, _ in sp.members:
                    keys += [k for k in per_param[i] if k not in keys]
                r = rows[sp.dtype.str] = {k: np.zeros(sp.hi - sp.lo, sp.dtype) for k in keys}
                for (i, _, p), o in zip(sp.members, sp.offsets):
                    lo, hi = max(o, sp.lo), min(o + p.size, sp.hi)
                    if hi <= lo:
                        continue
                    for k, a in per_param[i].items():
                        r[k][lo - sp.lo:hi - sp.lo] = a.reshape(-1)[lo - o:hi - o]
        except Exception as e:
            err = e
        self._agree(err)
        self._install(rows, [s or 0 for s in steps], new_groups, skipped)

    def _install(self, rows, steps, new_groups, skipped):
        """Load shard ``rows`` ({dtype str: {key: 1-D}}) into the inner optimizer,
        collectively: if it fails on any rank, ranks that loaded roll back."""
        err, backup = None, None
        try:
            if self._inner is not None:
                sd = {"algorithm": self._algorithm, "average": self._average,
                      "skipped_steps": 0, "state": {}, "param_groups": []}
                k = 0
                for j, gi in enumerate(self._inner_groups):
                    h = self._hparams_of(new_groups[gi], inner=True)
                    n = sum(1 for _, g, _, _ in self._inner_params if g == gi)
                    h["params"] = list(range(k, k + n))
                    k += n
                    sd["param_groups"].append(h)
                for j, (sp, gi, lo, hi) in enumerate(self._inner_params):
                    st = {"step": steps[gi]}
                    for key, row in rows[sp.dtype.str].items():
                        st[key] = row[lo - sp.lo:hi - sp.lo]
                    sd["state"][j] = st
                backup = self._inner.state_dict()
                self._inner.load_state_dict(sd)
        except Exception as e:
            err = e
            backup = None       # load_state_dict changes nothing when it raises
        flag = np.array([self._rank if err is not None else self._size], dtype=np.int64)
        self._comm.Allreduce(self._MPI.IN_PLACE, flag, op=self._MPI.MIN)
        if flag[0] < self._size and backup is not None:
            self._inner.load_state_dict(backup)
        self._raise_first(int(flag[0]), err)
        for gi, g in enumerate(new_groups):
            self.param_groups[gi].update(g)
        self._steps[:] = steps
        self.skipped_steps = skipped
        self._consolidated = None
        self._groups_seen = None

    # ------------------------------------------------------------------ sharded files
    def save_sharded(self, directory):
        """Write the state to ``directory`` (collective; a filesystem every rank sees):
        one checksummed file per rank holding its shard, then a manifest, written last.
        Each file is written atomically (temporary file, fsync, rename) under a name
        unique to this save, so a crash at any moment leaves the previous checkpoint
        loadable; files of older saves are removed once the manifest is in place. Loads
        with :meth:`load_sharded` on any number of ranks."""
        directory = os.fspath(directory)
        err = token = None
        if self._rank == 0:
            try:
                os.makedirs(directory, exist_ok=True)
                token = secrets.token_hex(8)
            except Exception as e:
                err = e
        self._agree(err)
        token = self._comm.bcast(token, root=0)
        rows = self._local_rows()
        n = self._size
        names = [f"shard-{token}-{r:05d}-of-{n:05d}.npz" for r in range(n)]
        err = None
        try:
            shard = {"algorithm": self._algorithm, "kind": "fastadam-shard", "token": token,
                     "rank": self._rank, "world_size": n,
                     "ranges": {sp.dtype.str: [sp.lo, sp.hi] for sp in self._spaces},
                     "rows": rows}
            _ckpt.save(_Holder(shard), os.path.join(directory, names[self._rank]))
        except Exception as e:
            err = e
        self._agree(err)
        err = None
        if self._rank == 0:
            try:
                manifest = {
                    "algorithm": self._algorithm, "kind": "fastadam-sharded-checkpoint",
                    "token": token, "world_size": n, "files": names,
                    "spaces": [[sp.dtype.str, sp.size, [int(b) for b in sp.bounds],
                                list(rows[sp.dtype.str])] for sp in self._spaces],
                    "params": [[p.dtype.str, list(p.shape)] for p in self._params],
                    "steps": [int(s) for s in self._steps],
                    "param_groups": dict_groups(self.param_groups), "average": self._average,
                    "skipped_steps": self.skipped_steps}
                _ckpt.save(_Holder(manifest), os.path.join(directory, _MANIFEST))
                for f in os.listdir(directory):       # shards of older saves
                    m = _SHARD_RE.match(f)
                    if m and m.group(1) != token:
                        try:
                            os.unlink(os.path.join(directory, f))
                        except OSError:
                            pass
            except Exception as e:
                err = e
        self._agree(err)

    def load_sharded(self, directory):
        """Load a checkpoint written by :meth:`save_sharded` on any number of ranks
        (collective): each rank reads the shard files overlapping its own shard. Every
        file is verified (checksum, save token, ranges) and everything is checked on
        every rank before anything is written; an error anywhere raises everywhere."""
        directory = os.fspath(directory)
        err = rows = new_groups = steps = skipped = None
        try:
            path = os.path.join(directory, _MANIFEST)
            if not os.path.exists(path):
                raise ValueError(f"{directory} holds no sharded checkpoint (no {_MANIFEST})")
            man = _ckpt.read_checkpoint(path)
            if man.get("kind") != "fastadam-sharded-checkpoint":
                raise ValueError(f"{path} is not a sharded checkpoint manifest")
            if man.get("algorithm") != self._algorithm:
                raise ValueError(f"checkpoint {directory} holds a {man.get('algorithm')!r} "
                                 f"optimizer's state; this optimizer is {self._algorithm!r}")
            mine = [[p.dtype.str, list(p.shape)] for p in self._params]
            if man.get("params") != mine:
                raise ValueError(f"checkpoint {directory} was written for other parameters "
                                 "(shapes/dtypes differ)")
            new_groups, skipped = self._check_full_groups(
                {"algorithm": man["algorithm"], "state": {}, "average": man.get("average"),
                 "param_groups": man["param_groups"],
                 "skipped_steps": man.get("skipped_steps", 0)})
            steps = man["steps"]
            if not (isinstance(steps, list) and len(steps) == len(self.param_groups)
                    and all(isinstance(s, int) and 0 <= s < C.MAX_STEP for s in steps)):
                raise ValueError(f"checkpoint {directory}: malformed step counts")
            files, token, old_n = man["files"], man["token"], man["world_size"]
            spaces = {d: (size, np.array(b, dtype=np.int64), keys)
                      for d, size, b, keys in man["spaces"]}
            cache = {}
            rows = {}
            for sp in self._spaces:
                size, b, keys = spaces[sp.dtype.str]
                if size != sp.size or len(b) != old_n + 1 or b[0] != 0 or b[-1] != size \
                        or (np.diff(b) < 0).any():
                    raise ValueError(f"checkpoint {directory}: malformed shard bounds")
                r = rows[sp.dtype.str] = {k: np.empty(sp.hi - sp.lo, sp.dtype) for k in keys}
                for q in range(old_n):
                    lo, hi = max(b[q], sp.lo), min(b[q + 1], sp.hi)
                    if hi <= lo:
                        continue
                    if q not in cache:
                        f = os.path.join(directory, files[q])
                        sh = _ckpt.read_checkpoint(f)
                        if (sh.get("kind") != "fastadam-shard" or sh.get("token") != token
                                or sh.get("rank") != q or sh.get("world_size") != old_n):
                            raise ValueError(f"{f} does not belong to the checkpoint in "
                                             f"{directory} (a file from another save)")
                        cache[q] = sh
                    sh = cache[q]
                    rng = sh["ranges"].get(sp.dtype.str)
                    if rng != [int(b[q]), int(b[q + 1])]:
                        raise ValueError(f"{files[q]}: shard range {rng} does not match "
                                         "the manifest")
                    for k in keys:
                        src = sh["rows"][sp.dtype.str][k]
                        if src.dtype != sp.dtype or src.shape != (b[q + 1] - b[q],):
                            raise ValueError(f"{files[q]}: {k} has the wrong dtype or size")
                        r[k][lo - sp.lo:hi - sp.lo] = src[lo - b[q]:hi - b[q]]
        except Exception as e:
            err = e
        self._agree(err)
        self._install(rows, steps, new_groups, skipped)



class _Holder:
    """Gives checkpoint.save a plain dict to write."""

    def __init__(self, d):
        self._d = d

    def state_dict(self):
        return self._d
