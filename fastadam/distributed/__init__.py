"""ZeRO-sharded optimizers over MPI (ZeRO stage 1/2: Rajbhandari et al., 2020).

Every rank holds the full parameters but the optimizer state of only one contiguous shard
of the flat parameter space. One step:

1. each rank validates its own input (gradient count, shapes, dtypes, hyperparameter
   edits, NaN/inf under ``nonfinite="raise"``) and the ranks agree on the outcome in one
   small allreduce, so bad input on one rank raises the same error on every rank instead
   of leaving the others blocked in a collective; nothing has moved yet;
2. the local gradients (one flat buffer per dtype, ``opt.grads`` are views of it) are
   reduce-scattered: each rank receives the sum (or mean) over ranks of its own shard,
   straight into the inner optimizer's gradient buffer;
3. for clipping and the non-finite policy, per-group sums of squares of the reduced shard
   are allreduced (the global norm of the mean gradient, as one process would compute it);
   ``"skip"`` skips on every rank at once, clipping pre-scales the shard by the global
   factor;
4. each rank steps its shard with an ordinary fastadam optimizer (``optimizer_class``)
   built over views of that shard: the fused kernels, param groups, AMSGrad, averaging;
5. the updated shards are all-gathered in place, so every rank ends with identical
   parameters.

The result equals one process stepping on the mean gradient (see docs/distributed.md).
mpi4py is imported when an optimizer is built; install it with ``pip install
"fastadam[mpi]"`` (mpi4py and an MPI library from PyPI) or build mpi4py against a
cluster's MPI.
"""
from ._sharded import ShardedOptimizer
from ._space import shard_bounds

__all__ = ["ShardedOptimizer", "shard_bounds"]
