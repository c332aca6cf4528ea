"""Shards of the flat parameter space, and the compiled reductions over them."""
from __future__ import annotations

import re

import numpy as np
from numba import njit

from ..config import JIT_OPTIONS
from ..flat import ALIGNMENT, aligned_empty


_MANIFEST = "manifest.npz"
_SHARD_RE = re.compile(r"^shard-([0-9a-f]+)-(\d+)-of-(\d+)\.npz$")
_ERRORS = {"TypeError": TypeError, "ValueError": ValueError, "OSError": OSError,
           "FileNotFoundError": FileNotFoundError, "PermissionError": PermissionError,
           "MemoryError": MemoryError, "NotImplementedError": NotImplementedError}



def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:   # pragma: no cover - depends on the environment
        raise ImportError(
            "fastadam.distributed needs mpi4py and an MPI library: pip install "
            "'fastadam[mpi]' (mpi4py plus the MPICH wheel), or on a cluster build mpi4py "
            "against the system MPI (pip install --no-binary mpi4py mpi4py)") from e
    return MPI


# --------------------------------------------------------------------------- numerics
@njit(**JIT_OPTIONS)
def _sumsq(x):
    """Sum of squares of a 1-D array, accumulated in float64 (NaN/inf propagate)."""
    s = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        s += v * v
    return s


@njit(**JIT_OPTIONS)
def _all_finite(x):
    for i in range(x.shape[0]):
        v = x[i]
        if v != v or v - v != 0:      # NaN, or +-inf (inf - inf is NaN)
            return False
    return True


def shard_bounds(n, world_size, itemsize=8):
    """Start offsets of the ``world_size`` contiguous shards of ``n`` elements (an int64
    array of world_size + 1 entries, from 0 to n). Interior boundaries are rounded down
    to multiples of ALIGNMENT bytes so that every shard starts on a cache line; shards
    differ in size when n is not divisible, and may be empty when n is small."""
    k = max(1, ALIGNMENT // int(itemsize))
    b = np.array([(r * n // world_size) // k * k for r in range(world_size + 1)],
                 dtype=np.int64)
    b[0], b[-1] = 0, n
    return b


class _Space:
    """One dtype's flat parameter space: its members, the flat parameter buffer (the
    caller's memory when the parameters are consecutive views of one buffer, else an own
    copy), the local gradient buffer and this rank's shard."""

    def __init__(self, dtype, members, rank, size):
        self.dtype = dtype
        self.members = members                      # [(param index, group index, array)]
        sizes = [p.size for _, _, p in members]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.size = int(self.offsets[-1])
        self.bounds = shard_bounds(self.size, size, dtype.itemsize)
        self.lo, self.hi = int(self.bounds[rank]), int(self.bounds[rank + 1])
        self.counts = np.diff(self.bounds).astype(np.int64)
        self.even = bool((self.counts == self.counts[0]).all())
        self.flat = _flat_view([p for _, _, p in members], dtype, self.size)
        self.own_copy = self.flat is None
        if self.own_copy:
            self.flat = aligned_empty(self.size, dtype)
            self.pull()
        self.grad_flat = aligned_empty(self.size, dtype)
        self.grad_flat.fill(0)
        self.grad_views = [self.grad_flat[o:o + p.size].reshape(p.shape)
                           for o, (_, _, p) in zip(self.offsets, members)]
        # the [lo, hi) range of each param group inside this space
        self.group_range = {}
        for (_, g, _), o, n in zip(members, self.offsets, sizes):
            lo, hi = self.group_range.get(g, (o, o))
            self.group_range[g] = (min(lo, o), max(hi, o + n))
        self.shard_grad = None                     # the inner optimizer's gradient buffer
        self.pieces = []                           # [(group, lo, hi)] of this rank's shard

    def pull(self):
        """Copy the parameters into the own flat buffer."""
        for (_, _, p), o in zip(self.members, self.offsets):
            self.flat[o:o + p.size] = p.reshape(-1)

    def push(self):
        """Copy the own flat buffer back into the parameters."""
        for (_, _, p), o in zip(self.members, self.offsets):
            p.reshape(-1)[...] = self.flat[o:o + p.size]


def _flat_view(params, dtype, n):
    """A 1-D view over ``params`` when they are consecutive in one buffer, else None."""
    addr = params[0].ctypes.data
    pos = addr
    for p in params:
        if not p.flags.c_contiguous or p.ctypes.data != pos:
            return None
        pos += p.nbytes
    root = params[0]
    while isinstance(root.base, np.ndarray):
        root = root.base
    try:
        flat = np.ndarray((n,), dtype=dtype, buffer=root, offset=addr - root.ctypes.data)
    except (TypeError, ValueError, BufferError):
        return None
    if not flat.flags.writeable or flat.ctypes.data != addr:
        return None
    return flat


