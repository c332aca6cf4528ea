"""The sharded step's gradient norms: global per-group norms of the reduced gradient
(float64 sums of squares over the shards, rescaled when they overflow), the non-finite
policy and the clipping factors applied to this rank's shard."""
from __future__ import annotations

import math

import numpy as np

from ._space import _all_finite, _sumsq


class _NormsMixin:
    """ShardedOptimizer's norm pass (collective; reads ``_spaces``, ``_clip``,
    ``nonfinite``, writes ``last_grad_norms`` and ``skipped_steps``)."""

    def _shard_sumsq(self):
        """Per-group float64 sums of squares of this rank's reduced gradient shard."""
        out = np.zeros(len(self.param_groups))
        for sp in self._spaces:
            for g, lo, hi in sp.pieces:
                out[g] += _sumsq(sp.shard_grad[lo - sp.lo:hi - sp.lo])
        return out

    def _norms_and_clip(self, stats):
        """Global per-group norms of the reduced gradient; the non-finite policy; the
        clipping factors, applied to the shard. False: skip this step."""
        MPI, comm = self._MPI, self._comm
        sq = self._shard_sumsq()
        comm.Allreduce(MPI.IN_PLACE, sq, op=MPI.SUM)
        stats["control"] += 2 * sq.nbytes
        norms = [math.sqrt(x) for x in sq.tolist()]
        bad_groups = [g for g, v in enumerate(norms) if not math.isfinite(v)]
        if bad_groups:
            # NaN/inf in the reduced gradient, or float64 overflow of finite values.
            nonfin = np.zeros(len(self.param_groups))
            for sp in self._spaces:
                for g, lo, hi in sp.pieces:
                    if g in bad_groups and not _all_finite(sp.shard_grad[lo - sp.lo:hi - sp.lo]):
                        nonfin[g] = 1.0
            comm.Allreduce(MPI.IN_PLACE, nonfin, op=MPI.MAX)
            self.last_grad_norms = norms
            if nonfin.any() and self.nonfinite == "skip":
                self.skipped_steps += 1
                return False
            if nonfin.any() and self.nonfinite == "raise":
                raise ValueError("the reduced gradient contains NaN or inf (the sum over "
                                 "ranks overflowed); nothing was updated (nonfinite='raise')")
            overflow = [g for g in bad_groups if not nonfin[g]]
            if overflow:
                amax = np.zeros(len(self.param_groups))
                for sp in self._spaces:
                    for g, lo, hi in sp.pieces:
                        x = sp.shard_grad[lo - sp.lo:hi - sp.lo]
                        if x.size:
                            amax[g] = max(amax[g], float(np.abs(x).max()))
                comm.Allreduce(MPI.IN_PLACE, amax, op=MPI.MAX)
                s = np.zeros(len(self.param_groups))
                for sp in self._spaces:
                    for g, lo, hi in sp.pieces:
                        if g in overflow and amax[g] > 0:
                            x = sp.shard_grad[lo - sp.lo:hi - sp.lo]
                            s[g] += float(np.sum(np.square(x / amax[g])))
                comm.Allreduce(MPI.IN_PLACE, s, op=MPI.SUM)
                for g in overflow:
                    norms[g] = float(amax[g]) * math.sqrt(s[g])
        self.last_grad_norms = norms
        for sp in self._spaces:
            for g, lo, hi in sp.pieces:
                mgn = self._clip[g]
                if mgn is None:
                    continue
                nrm = norms[g]
                coef = min(1.0, mgn / (nrm + 1e-6)) if nrm == nrm else 1.0
                if coef != 1.0:
                    x = sp.shard_grad[lo - sp.lo:hi - sp.lo]
                    np.multiply(x, sp.dtype.type(coef), out=x)
        return True
