"""Checkpoints across world sizes.

``checkpoint.py save DIR``: train, write a sharded checkpoint to DIR/sharded, the
consolidated full state to DIR/full.npz (single-process format) and the parameters.
``checkpoint.py load DIR`` (any number of ranks): load both ways, check the state equals
the saved one, then train on and check against one process resumed from full.npz.
"""
import os
import sys

import numpy as np

from _common import (COMM, RANK, SIZE, assert_close, assert_same_everywhere, done, fa,
                     local_grads, ok)
from fastadam import checkpoint
from fastadam.distributed import ShardedOptimizer

SHAPES = [(9, 7), (31,), (5,), (17, 3)]
DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float64),
          np.dtype(np.float32)]
KW = dict(lr=1e-2, amsgrad=True, average=0.9, max_grad_norm=1.0)


def groups(params):
    return [{"params": params[:2], "lr": 2e-2, "weight_decay": 0.05},
            {"params": params[2:], "amsgrad": False}]


def fresh():
    return [np.full(s, 0.5, dtype=d) for s, d in zip(SHAPES, DTYPES)]


def grads(t, world):
    """The mean of ``world`` ranks' gradients (same on every rank, any world size)."""
    per = [local_grads(SHAPES, DTYPES, r, t, seed=7) for r in range(world)]
    return [(sum(p[i].astype(np.float64) for p in per) / world).astype(d)
            for i, d in enumerate(DTYPES)]


def train(opt, t0, t1):
    """Rank 0 feeds the gradient, the others zeros (grad_reduction="sum"): the reduced
    gradient is exactly grads(t), for any world size."""
    for t in range(t0, t1):
        g = grads(t, 3)
        opt.step(g if RANK == 0 else [np.zeros_like(x) for x in g])


mode, root = sys.argv[1], sys.argv[2]
if mode == "save":
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s).astype(d) for s, d in zip(SHAPES, DTYPES)]
    opt = ShardedOptimizer(groups(params), fa.AdamW, grad_reduction="sum", **KW)
    train(opt, 1, 6)
    opt.save_sharded(os.path.join(root, "sharded"))
    train(opt, 6, 8)                   # a second save replaces the first one's files
    opt.save_sharded(os.path.join(root, "sharded"))
    files = sorted(os.listdir(os.path.join(root, "sharded")))
    assert len(files) == SIZE + 1 and "manifest.npz" in files, files
    opt.consolidate_state_dict(to=0)
    if RANK == 0:
        full = opt.state_dict()
        checkpoint.save(type("H", (), {"state_dict": lambda self: full})(),
                           os.path.join(root, "full.npz"))
        np.savez(os.path.join(root, "params.npz"), *params)
        ok("save")
    done()
else:
    full = checkpoint.read_checkpoint(os.path.join(root, "full.npz"))
    with np.load(os.path.join(root, "params.npz")) as z:
        saved = [z[f"arr_{i}"] for i in range(len(SHAPES))]

    def check_state(opt, name):
        opt.consolidate_state_dict(to=0)
        if RANK == 0:
            sd = opt.state_dict()
            assert sd["param_groups"] == full["param_groups"], name
            assert sd["skipped_steps"] == full["skipped_steps"]
            for i, st in full["state"].items():
                assert list(sd["state"][i]) == list(st), (name, i)
                for k, v in st.items():
                    if k == "step":
                        assert sd["state"][i][k] == v
                    else:
                        assert np.array_equal(sd["state"][i][k], v), (name, i, k)

    # (1) the sharded checkpoint written on another number of ranks
    params = [p.copy() for p in saved]
    opt = ShardedOptimizer(groups(params), fa.AdamW, grad_reduction="sum", **KW)
    opt.load_sharded(os.path.join(root, "sharded"))
    check_state(opt, "load_sharded")
    ok("load_sharded")
    # (2) the full state on every rank
    params2 = [p.copy() for p in saved]
    opt2 = ShardedOptimizer(groups(params2), fa.AdamW, grad_reduction="sum", **KW)
    opt2.load_state_dict(full)
    check_state(opt2, "load_state_dict")
    ok("load_state_dict")
    # (3) both resume exactly like one process resumed from the full state
    ref_params = [p.copy() for p in saved]
    ref = fa.AdamW(groups(ref_params), **KW)
    ref.load_state_dict(full)
    train(opt, 8, 12)
    train(opt2, 8, 12)
    for t in range(8, 12):
        ref.step(grads(t, 3))
    for i in range(len(SHAPES)):
        assert_close(f"resumed {i}", params[i], ref_params[i])
        assert_close(f"resumed2 {i}", params2[i], ref_params[i])
    assert_same_everywhere("resumed", params)
    for a, b in zip(opt.averaged_params(), ref.averaged_params()):
        assert_close("resumed average", a, b)
    ok("resume")
    # (4) a torn or foreign checkpoint is refused on every rank, the state untouched
    d = os.path.join(root, "sharded")
    shard = sorted(f for f in os.listdir(d) if f.startswith("shard-"))[-1]
    COMM.Barrier()
    if RANK == 0:
        os.rename(os.path.join(d, shard), os.path.join(d, shard + ".moved"))
    COMM.Barrier()
    before = [p.copy() for p in params]
    try:
        opt.load_sharded(d)
    except (ValueError, OSError) as e:
        msgs = COMM.allgather(str(e))
        assert len(set(msgs)) == 1, msgs
    else:
        raise AssertionError("a checkpoint missing a shard file must be refused")
    COMM.Barrier()
    if RANK == 0:
        os.rename(os.path.join(d, shard + ".moved"), os.path.join(d, shard))
    COMM.Barrier()
    train(opt, 12, 13)
    ref.step(grads(12, 3))
    for i in range(len(SHAPES)):
        assert_close(f"after refused load {i}", params[i], ref_params[i])
    ok("refused")
    # (5) a save that died before writing its manifest (a stray shard of another token,
    # a temporary file) leaves the previous checkpoint loadable; the next save on this
    # world size replaces every file and removes the strays.
    COMM.Barrier()
    if RANK == 0:
        with open(os.path.join(d, "shard-00000000deadbeef-00000-of-00002.npz"), "wb") as f:
            f.write(b"torn")
        with open(os.path.join(d, ".manifest.npz.1.abcdef.tmp"), "wb") as f:
            f.write(b"torn")
    COMM.Barrier()
    params3 = [p.copy() for p in saved]
    opt3 = ShardedOptimizer(groups(params3), fa.AdamW, grad_reduction="sum", **KW)
    opt3.load_sharded(d)
    check_state(opt3, "after a torn save")
    opt3.save_sharded(d)
    shards = sorted(f for f in os.listdir(d) if f.startswith("shard-"))
    assert len(shards) == SIZE and all(f.endswith(f"-of-{SIZE:05d}.npz") for f in shards), shards
    opt3.load_sharded(d)
    check_state(opt3, "after the next save")
    ok("torn-save")
    done()
