"""Bad input on one rank raises the same error on every rank (no rank left waiting in a
collective), changes nothing anywhere, and the optimizer keeps working afterwards."""
import numpy as np

from _common import COMM, RANK, SIZE, assert_close, done, fa, local_grads, mean_grads, ok
from fastadam.distributed import ShardedOptimizer

SHAPES = [(6, 5), (11,), (4,)]
DT = [np.dtype(np.float64)] * 3
BAD = SIZE - 1                     # the rank that misbehaves


def expect_same_error(name, kind, fn, contains):
    try:
        fn()
    except kind as e:
        msg = str(e)
    else:
        raise AssertionError(f"{name}: no {kind.__name__} on rank {RANK}")
    msgs = COMM.allgather(msg)
    assert len(set(msgs)) == 1, f"{name}: ranks raised different errors: {msgs}"
    assert contains in msg, (name, msg)
    if SIZE > 1:
        assert f"on rank {BAD} of {SIZE}" in msg, (name, msg)
    return msg


rng = np.random.default_rng(0)
params = [rng.standard_normal(s) for s in SHAPES]
ref_params = [p.copy() for p in params]
opt = ShardedOptimizer(params, fa.Adam, lr=1e-2, nonfinite="raise", max_grad_norm=5.0)
ref = fa.Adam(ref_params, lr=1e-2, nonfinite="raise", max_grad_norm=5.0)
t = 0


def good_step():
    global t
    t += 1
    want, local = mean_grads(SHAPES, DT, t)
    opt.step(local)
    ref.step(want)


def frozen():
    opt.consolidate_state_dict(to=0)
    return [p.copy() for p in params], (opt.state_dict() if RANK == 0 else None)


def assert_unchanged(name, before):
    ps, sd = frozen()
    for a, b in zip(ps, before[0]):
        assert np.array_equal(a, b), f"{name}: parameters changed"
    if RANK == 0:
        for i, st in before[1]["state"].items():
            for k, v in st.items():
                assert np.array_equal(sd["state"][i][k], v), f"{name}: state changed"


good_step()
before = frozen()
local = local_grads(SHAPES, DT, RANK, 99)

# wrong shape on one rank
bad = list(local)
if RANK == BAD:
    bad[1] = np.zeros(12)
expect_same_error("shape", ValueError, lambda: opt.step(bad), "grads[1] must have shape (11,)")
assert_unchanged("shape", before)
ok("wrong-shape")

# wrong dtype / count / type on one rank
bad = list(local)
if RANK == BAD:
    bad[0] = bad[0].astype(np.float32)
expect_same_error("dtype", TypeError, lambda: opt.step(bad), "grads[0] must have dtype float64")
expect_same_error("count", ValueError,
                  lambda: opt.step(local[:2] if RANK == BAD else local), "grads has 2 arrays")
expect_same_error("type", TypeError,
                  lambda: opt.step(local[0] if RANK == BAD else local), "grads must be a list")
assert_unchanged("dtype/count/type", before)
ok("wrong-dtype-count-type")

# NaN under nonfinite="raise" on one rank: same error naming that rank's array
bad = [g.copy() for g in local]
if RANK == BAD:
    bad[2][1] = np.nan
expect_same_error("nan", ValueError, lambda: opt.step(bad), "grads[2] contains NaN or inf")
assert_unchanged("nan", before)
ok("nan-raise")

# a finite sum that overflows: caught after the reduction, on every rank
if SIZE > 1:
    big = [np.full(s, 1.7e308) for s in SHAPES]
    try:
        opt.step(big)
    except ValueError as e:
        msgs = COMM.allgather(str(e))
        assert len(set(msgs)) == 1 and "overflowed" in msgs[0], msgs
    else:
        raise AssertionError("overflowing sum under nonfinite='raise' must raise")
    assert_unchanged("overflow", before)
    ok("overflow-raise")

# an invalid hyperparameter edit on one rank
if RANK == BAD:
    opt.param_groups[0]["lr"] = -1.0
expect_same_error("lr", ValueError, lambda: opt.step(local), "Invalid learning rate")
opt.param_groups[0]["lr"] = 1e-2
assert_unchanged("lr", before)
ok("bad-hyperparameter")

# ranks that edit hyperparameters differently
if SIZE > 1:
    if RANK == BAD:
        opt.param_groups[0]["lr"] = 2e-2
    try:
        opt.step(local)
    except ValueError as e:
        msgs = COMM.allgather(str(e))
        assert len(set(msgs)) == 1 and "disagree" in msgs[0], msgs
    else:
        raise AssertionError("diverging hyperparameters must raise")
    opt.param_groups[0]["lr"] = 1e-2
    assert_unchanged("diverging lr", before)
    ok("diverging-hyperparameters")

# a bad full state on one rank: nobody loads it
opt.consolidate_state_dict(to=0)
full = COMM.bcast(opt.state_dict() if RANK == 0 else None, root=0)
broken = {**full, "state": {i: dict(s) for i, s in full["state"].items()}}
if RANK == BAD:
    broken["state"][1]["exp_avg"] = np.zeros(3)
expect_same_error("load", ValueError, lambda: opt.load_state_dict(broken), "must have dtype")
assert_unchanged("load", before)
ok("bad-load")

# a different layout on one rank at construction
shapes = SHAPES if RANK != BAD else [(6, 5), (11,), (5,)]
if SIZE > 1:
    try:
        ShardedOptimizer([np.zeros(s) for s in shapes], fa.Adam)
    except ValueError as e:
        msgs = COMM.allgather(str(e))
        assert len(set(msgs)) == 1 and f"rank {BAD} built a different" in msgs[0], msgs
    else:
        raise AssertionError("a layout mismatch must raise")
expect_same_error("construct", ValueError,
                  lambda: ShardedOptimizer([np.zeros(3)], fa.Adam,
                                           lr=-1.0 if RANK == BAD else 1e-3),
                  "Invalid learning rate")
ok("bad-construction")

# after all that, the optimizer still equals one process
for _ in range(3):
    good_step()
for a, b in zip(params, ref_params):
    assert_close("after failures", a, b)
ok("still-works")
done()
