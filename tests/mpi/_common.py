"""Shared pieces of the MPI test programs (run under mpiexec by tests/test_distributed.py).

Every rank can recompute every rank's gradients (seeded by rank and step), so each rank
checks its own result against a single-process optimizer stepped on the mean gradient.
A program prints "CASE <name> ok" per case and "ALL OK rank <r>" at the end; any failure
raises, which makes mpiexec return non-zero.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import fastadam as fa  # noqa: E402
from mpi4py import MPI  # noqa: E402

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()


def local_grads(shapes, dtypes, rank, t, seed=0, dyadic=False):
    """Rank ``rank``'s gradients at step ``t``. ``dyadic``: small multiples of 1/64, whose
    sums are exact in any order."""
    rng = np.random.default_rng([seed, rank, t])
    out = []
    for shape, dt in zip(shapes, dtypes):
        if dyadic:
            g = rng.integers(-64, 65, size=shape) / 64.0
        else:
            g = rng.standard_normal(shape)
        out.append(np.ascontiguousarray(g, dtype=dt))
    return out


def mean_grads(shapes, dtypes, t, seed=0, dyadic=False, reduction="mean", bad=None):
    """The mean (or sum) over ranks of the gradients, summed in rank order in the
    gradients' dtype, as a single process would compute it."""
    per_rank = [local_grads(shapes, dtypes, r, t, seed, dyadic) for r in range(SIZE)]
    if bad is not None:
        r, i, val = bad
        per_rank[r][i].reshape(-1)[0] = val
    out = []
    for i, dt in enumerate(dtypes):
        s = per_rank[0][i].copy()
        for r in range(1, SIZE):
            s = s + per_rank[r][i]
        if reduction == "mean" and SIZE > 1:
            s = s / dt.type(SIZE)
        out.append(s.astype(dt))
    return out, per_rank[RANK]


def assert_close(name, got, want, ulps=4):
    """float64: within 1e-12 (relative to max(1, |want|)); float32: within ``ulps`` units
    in the last place of the wanted value."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    if want.dtype == np.float64:
        err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
        worst = float(err.max(initial=0.0))
        assert worst <= 1e-12, f"{name}: float64 relative error {worst:.3g} > 1e-12"
    else:
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        tol = ulps * np.spacing(np.abs(want)).astype(np.float64)
        assert (diff <= tol).all(), (f"{name}: float32 differs by "
                                     f"{float((diff / np.spacing(np.abs(want))).max()):.1f} ulp")


def assert_same_everywhere(name, arrays):
    """Every rank holds bit-identical arrays."""
    mine = np.concatenate([a.reshape(-1).view(np.uint8) for a in arrays])
    root = COMM.bcast(mine if RANK == 0 else None, root=0)
    assert np.array_equal(mine, root), f"{name}: ranks hold different parameters"


def ok(name):
    sys.stdout.write(f"CASE {name} ok rank {RANK}\n")
    sys.stdout.flush()


def done():
    COMM.Barrier()
    sys.stdout.write(f"ALL OK rank {RANK}\n")
    sys.stdout.flush()
