"""Data-parallel fitting over MPI (the estimators' ``comm`` parameter).

Every rank of the communicator holds its own rows. The ranks agree on everything that
must be the same everywhere (the network layout, the classes, the dtype, the number of
minibatches), then train one model together: each minibatch step, every rank computes the
gradient of its slice of the *pooled* minibatch, already divided by the pooled batch's
total sample weight, and :class:`fastadam.distributed.ShardedOptimizer` sums the slices
(``grad_reduction="sum"``), so the step is exactly the single-process step on the pooled
minibatch; the optimizer state is sharded over the ranks and every rank ends each step
with identical parameters.

Batching: with ``N`` pooled training rows and a (pooled) ``batch_size`` of ``b``, every
rank takes ``ceil(N / b)`` steps per epoch and cuts its own ``n_r`` rows (shuffled
locally) into that many nearly equal consecutive slices: slice ``k`` is rows
``[k * n_r // steps, (k + 1) * n_r // steps)``. Every rank therefore takes part in every
collective; a rank with fewer rows contributes smaller (possibly empty) slices, and an
empty slice contributes a zero gradient (the L2 term is added once, by rank 0), so the
summed gradient is still the gradient of the pooled minibatch. Each pooled minibatch is
an (almost) proportional sample of every rank's rows.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin

_ERRORS = {"TypeError": TypeError, "ValueError": ValueError,
           "NotImplementedError": NotImplementedError}


class DataParallel:
    """The collectives one data-parallel fit needs, over an mpi4py communicator."""

    def __init__(self, comm):
        try:
            from mpi4py import MPI
        except ImportError as e:   # pragma: no cover - depends on the environment
            raise ImportError("comm= needs mpi4py and an MPI library: pip install "
                              "'fastadam[mpi]'") from e
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError("comm must be an mpi4py intra-communicator (e.g. "
                            f"MPI.COMM_WORLD) or None, got {type(comm).__name__}")
        self.MPI = MPI
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def agree(self, exc):
        """Collective: when any rank holds an exception, every rank raises the first
        failing rank's error (same type and message), so no rank is left waiting in a
        later collective."""
        MPI = self.MPI
        flag = np.array([self.rank if exc is not None else self.size], dtype=np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, flag, op=MPI.MIN)
        first = int(flag[0])
        if first >= self.size:
            return
        payload = (type(exc).__name__, str(exc)) if self.rank == first else None
        kind, msg = self.comm.bcast(payload, root=first)
        err = _ERRORS.get(kind, RuntimeError)(f"{msg} (on rank {first} of {self.size})")
        if self.rank == first:
            raise err from exc
        raise err

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def sum(self, values):
        """Float64 sum over ranks of a small vector, bit-identical on every rank (summed,
        then broadcast from rank 0, so every rank takes the same decisions from it)."""
        v = np.array(values, dtype=np.float64).reshape(-1)
        self.comm.Allreduce(self.MPI.IN_PLACE, v, op=self.MPI.SUM)
        self.comm.Bcast(v, root=0)
        return v


# ---- what the ranks agree on before a fit (collectives; sklearn/_base.py)
def local_labels(est, y):
    """This rank's class labels when ``est`` is a classifier with 1-D targets, else
    None."""
    if not isinstance(est, ClassifierMixin) or y.ndim != 1:
        return None
    return np.unique(y) if y.shape[0] else None


def agree_layout(dp, X, y, first, incremental, labels):
    """Collective: the ranks must agree on the feature count, the target layout and
    whether this call starts a new model; the dtype is float64 if any rank's X is.
    Returns (dtype, union of the ranks' labels or None)."""
    has_y = y.shape[0] > 0
    info = (int(X.shape[1]), bool(first), bool(incremental),
            (y.ndim, y.shape[1:]) if has_y else None)
    infos = dp.allgather((info, X.dtype.str, labels))
    kinds = [i[0][3] for i in infos if i[0][3] is not None]
    for r, (i, _, _) in enumerate(infos):
        if i[:3] != infos[0][0][:3] or (i[3] is not None and i[3] != kinds[0]):
            raise ValueError(
                f"rank {r} passed data of another layout than rank 0, or is in another "
                f"fit state: (n_features, starts a new model, partial_fit, (y.ndim, "
                f"y.shape[1:])) = {i} on rank {r}, {infos[0][0]} on rank 0; every rank "
                "must pass X with the same features and y of the same kind")
    dtype = np.result_type(*[np.dtype(d) for _, d, _ in infos])
    union = None
    if any(lab is not None for _, _, lab in infos):
        union = np.unique(np.concatenate([lab for _, _, lab in infos if lab is not None]))
    return dtype, union


def agree_targets(est, dp, Y, sw):
    """Collective: the encoded targets have the same width everywhere (the classes
    agreed), and the pooled sample weights have a positive sum."""
    sig = (Y.shape[1], repr(getattr(est, "classes_", None)))
    sigs = dp.allgather(sig)
    bad = [r for r, s in enumerate(sigs) if s != sigs[0]]
    if bad:
        raise ValueError(f"rank {bad[0]} encodes the targets differently from rank 0 "
                         f"(outputs, classes): {sigs[bad[0]]} vs {sigs[0]}; pass the "
                         "same classes= to partial_fit on every rank")
    if sw is not None and not dp.sum([sw.sum()])[0] > 0:
        raise ValueError("sample_weight must not be all zero: the weights must have a "
                         "positive sum")


def slice_bounds(n_local, steps):
    """Start offsets (steps + 1 of them) of the local slices of one epoch."""
    k = np.arange(steps + 1, dtype=np.int64)
    return (k * int(n_local)) // int(steps)


def pooled_counts(local_counts, steps):
    """Rows of each pooled minibatch: the sum over ranks of their slice sizes."""
    total = np.zeros(steps, dtype=np.int64)
    for n in local_counts:
        total += np.diff(slice_bounds(n, steps))
    return total


def score_stats(est, X, y, sample_weight):
    """Sufficient statistics of the validation score on this rank's rows (float64
    vector; summed over ranks, :func:`score_from_stats` gives the pooled score)."""
    n = X.shape[0]
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if hasattr(est, "classes_"):
        pred = est.predict(X) if n else np.asarray(y)
        eq = np.asarray(pred) == np.asarray(y)
        correct = eq.all(axis=1) if eq.ndim == 2 else eq
        return np.array([float(np.dot(w, correct)), float(w.sum())])
    k = est._units[-1]
    Y = np.asarray(y, np.float64).reshape(n, k)
    P = est._raw_output(X).astype(np.float64).reshape(n, k) if n else np.zeros((0, k))
    return np.concatenate([[w.sum()], w @ Y, w @ (Y * Y), w @ ((Y - P) ** 2)])


def score_from_stats(est, v):
    """Accuracy (classifiers) or R^2 averaged over outputs (regressors, as
    ``r2_score(multioutput="uniform_average")`` with ``force_finite=True``)."""
    if hasattr(est, "classes_"):
        return v[0] / v[1] if v[1] > 0 else 0.0
    k = (v.shape[0] - 1) // 3
    sw, sy, syy, sres = v[0], v[1:1 + k], v[1 + k:1 + 2 * k], v[1 + 2 * k:]
    sstot = np.maximum(syy - sy * sy / sw, 0.0)
    r2 = np.where(sstot > 0, 1.0 - sres / np.where(sstot > 0, sstot, 1.0),
                  np.where(sres == 0, 1.0, 0.0))
    return float(r2.mean())
