"""N ranks == one process on the mean gradient: every algorithm and option, uneven
shards, param groups, mixed dtypes, clipping, AMSGrad, averaging, schedules, skip."""
import numpy as np

from _common import (COMM, RANK, SIZE, assert_close, assert_same_everywhere, done, fa,
                     mean_grads, ok)
from fastadam.distributed import ShardedOptimizer
from fastadam.schedules import CosineAnnealingLR, LinearLR

SHAPES = [(7, 5), (13,), (3, 3, 2), (1,), (40, 30), (101,)]


def make_params(dtypes, seed=1, perturb=False):
    rng = np.random.default_rng(seed)
    ps = [rng.standard_normal(s).astype(dt) for s, dt in zip(SHAPES, dtypes)]
    if perturb and RANK:          # construction broadcasts rank 0's values
        ps = [p + 1 for p in ps]
    return ps


def groups_of(params, split, hps):
    if split is None:
        return params
    return [dict(hps[0], params=params[:split]), dict(hps[1], params=params[split:])]


def run(name, cls, dtypes, kw, *, split=None, hps=({}, {}), steps=6, flat=False,
        opt_grads=False, schedule=None, reduction="mean", bad=None, dyadic=False,
        ulps=4, state=True, perturb=False):
    dtypes = [np.dtype(d) for d in dtypes]
    mine = make_params(dtypes, perturb=perturb)
    if flat:                      # one buffer per dtype: the in-place (no copy) path
        for dt in set(dtypes):
            idx = [i for i, d in enumerate(dtypes) if d == dt]
            _, views = fa.flatten([mine[i] for i in idx])
            for i, v in zip(idx, views):
                mine[i] = v
    ref_params = make_params(dtypes)
    sharded_kw = dict(kw)
    if reduction != "mean":
        sharded_kw["grad_reduction"] = reduction
    opt = ShardedOptimizer(groups_of(mine, split, hps), cls, **sharded_kw)
    # one buffer per dtype is gathered into in place; separate arrays through a copy
    assert [sp.own_copy for sp in opt._spaces] == [not flat] * len(opt._spaces)
    ref = cls(groups_of(ref_params, split, hps), **kw)
    scheds = [schedule(opt), schedule(ref)] if schedule else None
    for t in range(1, steps + 1):
        b = bad if bad is not None and bad[0] == t else None
        want, local = mean_grads(SHAPES, dtypes, t, dyadic=dyadic, reduction=reduction,
                                 bad=None if b is None else b[1:])
        if b is not None and b[1] == RANK:
            local[b[2]].reshape(-1)[0] = b[3]
        if opt_grads:
            for g, l in zip(opt.grads, local):
                g[...] = l
            opt.step()
        else:
            opt.step(local)
        ref.step(want)
        if scheds:
            for s in scheds:
                s.step()
    for i, (p, q) in enumerate(zip(mine, ref_params)):
        assert_close(f"{name} param {i}", p, q, ulps)
        if dyadic:
            assert np.array_equal(p, q), f"{name} param {i}: not bit-identical"
    assert_same_everywhere(name, mine)
    assert opt.skipped_steps == ref.skipped_steps, (opt.skipped_steps, ref.skipped_steps)
    if ref.last_grad_norms[0] is not None:
        np.testing.assert_allclose(opt.last_grad_norms, ref.last_grad_norms, rtol=1e-12)
    if kw.get("average"):
        for i, (a, b) in enumerate(zip(opt.averaged_params(), ref.averaged_params())):
            assert_close(f"{name} average {i}", a, b, ulps)
    if state:
        opt.consolidate_state_dict(to=SIZE - 1)
        if RANK == SIZE - 1:
            sd, want_sd = opt.state_dict(), ref.state_dict()
            assert sd.keys() == want_sd.keys()
            assert sd["param_groups"] == want_sd["param_groups"], \
                (sd["param_groups"], want_sd["param_groups"])
            assert sd["state"].keys() == want_sd["state"].keys()
            for i in want_sd["state"]:
                a, b = sd["state"][i], want_sd["state"][i]
                assert list(a) == list(b), (name, i, list(a), list(b))
                for k in b:
                    if k == "step":
                        assert a[k] == b[k]
                    else:
                        assert_close(f"{name} state {i} {k}", a[k], b[k], ulps)
            cls(groups_of(make_params(dtypes), split, hps), **kw).load_state_dict(sd)
        else:
            try:
                opt.state_dict()
            except RuntimeError:
                pass
            else:
                raise AssertionError("state_dict() off the consolidating rank must raise")
    ok(name)


F32, F64 = np.float32, np.float64
ALL32, ALL64 = [F32] * 6, [F64] * 6
MIXED = [F32, F64, F32, F64, F32, F64]
G2 = ({"lr": 3e-2, "weight_decay": 0.1}, {"lr": 1e-2})

for dts, tag in ((ALL64, "f64"), (ALL32, "f32")):
    run(f"adam-plain-{tag}", fa.Adam, dts, dict(lr=1e-2), perturb=True)
    run(f"adam-groups-amsgrad-{tag}", fa.Adam, dts, dict(lr=1e-2, amsgrad=True), split=3,
        hps=G2)
    run(f"adamw-clip-average-{tag}", fa.AdamW, dts,
        dict(lr=1e-2, average=0.9, max_grad_norm=1.0), split=2,
        hps=({"max_grad_norm": 0.5, "amsgrad": True}, {"max_grad_norm": None}))
    run(f"adamax-maximize-clip-{tag}", fa.Adamax, dts,
        dict(lr=1e-2, maximize=True, max_grad_norm=2.0, weight_decay=0.01), split=4, hps=G2)
    run(f"adam-hat-nobc-flat-optgrads-{tag}", fa.Adam, dts,
        dict(lr=1e-2, eps_mode="hat", bias_correction=False), flat=True, opt_grads=True)
    run(f"adam-skip-{tag}", fa.Adam, dts, dict(lr=1e-2, nonfinite="skip", max_grad_norm=3.0),
        bad=(3, SIZE - 1, 4, np.nan), steps=5)
    run(f"adam-skip-inf-{tag}", fa.AdamW, dts, dict(lr=1e-2, nonfinite="skip"),
        bad=(2, 0, 1, np.inf), steps=4)
    run(f"adam-schedule-{tag}", fa.Adam, dts, dict(lr=1e-2), split=3, hps=G2,
        schedule=lambda o: CosineAnnealingLR(o, T_max=4))
    run(f"adamw-sum-{tag}", fa.AdamW, dts, dict(lr=1e-3), reduction="sum")
run("mixed-dtypes", fa.Adam, MIXED, dict(lr=1e-2, max_grad_norm=1.0, amsgrad=True), split=3,
    hps=G2, schedule=lambda o: LinearLR(o, start_factor=0.5, total_iters=3))
run("mixed-dtypes-flat", fa.AdamW, MIXED, dict(lr=1e-2, average=0.99), flat=True)
# Exactly representable gradient sums: the only difference from one process is the
# order of the sum over ranks, so with dyadic gradients the runs are bit-identical.
for dts, tag in ((ALL32, "f32"), (ALL64, "f64")):
    run(f"bitwise-dyadic-{tag}", fa.Adam, dts, dict(lr=1e-2, amsgrad=True), split=3,
        hps=G2, dyadic=True, ulps=0)

# A tiny model: some ranks' shards are empty.
tiny = [np.array([1.0, -2.0, 3.0]), np.array([0.5, 0.25])]
opt = ShardedOptimizer([t.copy() for t in tiny], fa.Adam, lr=0.1, max_grad_norm=1.0)
ref_p = [t.copy() for t in tiny]
ref = fa.Adam(ref_p, lr=0.1, max_grad_norm=1.0)
for t in range(1, 4):
    want, local = mean_grads([(3,), (2,)], [np.dtype(F64)] * 2, t)
    opt.step(local)
    ref.step(want)
mine = [p for g in opt.param_groups for p in g["params"]]
for p, q in zip(mine, ref_p):
    assert_close("tiny", p, q)
sizes = COMM.allgather(sum(hi - lo for lo, hi in opt.shard_ranges.values()))
assert sum(sizes) == 5 and (SIZE == 1 or 0 in sizes), sizes
ok("tiny-empty-shards")

# The shards partition each dtype's flat space, unevenly when it does not divide.
opt = ShardedOptimizer(make_params(MIXED), fa.Adam)
ranges = COMM.allgather({k.str: v for k, v in opt.shard_ranges.items()})
for dt in ("<f4", "<f8"):
    spans = [r[dt] for r in ranges]
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    n = sum(int(np.prod(s)) for s, d in zip(SHAPES, MIXED) if np.dtype(d).str == dt)
    assert spans[-1][1] == n
    if SIZE > 1:
        assert len({hi - lo for lo, hi in spans}) > 1, f"{dt} shards are even: {spans}"
ok("uneven-shards")
done()
