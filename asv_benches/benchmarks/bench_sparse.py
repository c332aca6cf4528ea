"""Sparse Adam on an embedding table (float32 1e6 x 64, 4096 fresh indices per step,
uniform or Zipf-skewed with duplicates): fastadam.sparse_adam_step, its floor kernel,
torch.optim.SparseAdam (when torch is installed), the ratios of ``fastadam bench
--sparse`` measured interleaved in one process, and the dense step they are set against.

The table (768 MB per buffer) is built in setup; index sets and value rows cycle through
pools so that each step reads fresh rows (see fastadam/bench_sparse.py)."""
import numpy as np

import fastadam as fa

from .common import skip_if_too_many_threads

ROWS, DIM, K = 10**6, 64, 4096
DISTS = ["uniform", "zipf"]


def _sparse_modules():
    try:
        from fastadam import bench_sparse, config
        from fastadam import sparse as S
        from fastadam.kernels import sparse as KS
    except ImportError:
        raise NotImplementedError("this fastadam has no sparse step")
    return bench_sparse, config, S, KS


class _Table:
    timeout = 300

    def _build(self, dist, threads=None):
        bs, config, S, KS = _sparse_modules()
        if threads is not None:
            skip_if_too_many_threads(threads)
            self._old_threads = fa.get_num_threads()
            fa.set_num_threads(threads)
        spec = {"rows": ROWS, "dim": DIM, "k": K}
        rng, self.p, self.m, self.v = bs._table(spec)
        self.vals = bs._values(rng, spec)
        self.sets = bs.make_indices(rng, ROWS, K, dist, bs.POOL)
        self.uniq = [s[np.sort(np.unique(s, return_index=True)[1])] for s in self.sets]
        chunks = bs.floor_chunks(K) if hasattr(bs, "floor_chunks") \
            else 1 << S._partition_bits(K)      # older fastadam
        self.acc = np.zeros((chunks, DIM), np.float32)
        self.pool, self.vpool = bs.POOL, bs.VALUE_POOL
        self.i, self.t = 0, 0
        self.config, self.KS = config, KS

    def teardown(self, *params):
        if hasattr(self, "_old_threads"):
            fa.set_num_threads(self._old_threads)

    def _sparse(self):
        self.i = (self.i + 1) % self.pool
        self.t += 1
        fa.sparse_adam_step(self.p, self.sets[self.i], self.vals[self.i % self.vpool],
                            self.m, self.v, step=self.t)

    def _floor(self):
        self.i = (self.i + 1) % self.pool
        i = self.i
        vals = self.vals[i % self.vpool]
        if self.config.use_parallel(K * DIM):
            self.KS.sparse_floor_parallel(self.p, self.uniq[i], vals, self.m, self.v, self.acc)
        else:
            self.KS.sparse_floor_serial(self.p, self.uniq[i], vals, self.m, self.v, self.acc)


class SparseStep(_Table):
    """fastadam.sparse_adam_step and the floor kernel, by index distribution and threads."""
    params = [DISTS, [1, 2]]
    param_names = ["indices", "threads"]

    def setup(self, dist, threads):
        self._build(dist, threads)
        self._sparse()
        self._floor()

    def time_sparse_adam_step(self, dist, threads):
        self._sparse()

    def time_floor(self, dist, threads):
        self._floor()


class SparseTorch:
    """torch.optim.SparseAdam.step() with an uncoalesced sparse COO gradient."""
    params = [DISTS]
    param_names = ["indices"]
    timeout = 300

    def setup(self, dist):
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed")
        bs = _sparse_modules()[0]
        spec = {"rows": ROWS, "dim": DIM, "k": K}
        rng, p, _, _ = bs._table(spec)
        vals = bs._values(rng, spec)
        sets = bs.make_indices(rng, ROWS, K, dist, bs.POOL)
        self.tp = torch.from_numpy(p).requires_grad_(True)
        self.opt = torch.optim.SparseAdam([self.tp])
        with torch.sparse.check_sparse_tensor_invariants(False):
            self.grads = [torch.sparse_coo_tensor(
                torch.from_numpy(s)[None], torch.from_numpy(vals[i % bs.VALUE_POOL]),
                (ROWS, DIM)) for i, s in enumerate(sets)]
        self.i = 0
        self.time_torch_sparse_adam(dist)

    def time_torch_sparse_adam(self, dist):
        self.i = (self.i + 1) % len(self.grads)
        self.tp.grad = self.grads[self.i]
        self.opt.step()


class SparseRatios(_Table):
    """Floor time / sparse step time (target >= 0.8) and dense step time / sparse step
    time (target >= 30), each measured interleaved in one process. Higher is better."""
    params = [DISTS]
    param_names = ["indices"]
    unit = "ratio"

    def setup(self, dist):
        self._build(dist)
        from fastadam.bench import measure
        self.measure = measure

    def track_floor_over_sparse(self, dist):
        r = self.measure({"sparse": self._sparse, "floor": self._floor}, K * DIM)
        return r["floor"]["sec"] / r["sparse"]["sec"]

    def track_dense_over_sparse(self, dist):
        g = np.full(self.p.size, 1e-3, np.float32)
        pf, mf, vf = self.p.reshape(-1), self.m.reshape(-1), self.v.reshape(-1)
        r = self.measure({"sparse": self._sparse,
                          "dense": lambda: fa.adam_step(pf, g, mf, vf, step=10)},
                         K * DIM, max_rounds=7)
        return r["dense"]["sec"] / r["sparse"]["sec"]
