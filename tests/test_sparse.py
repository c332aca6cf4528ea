"""Sparse Adam (fa.sparse_adam_step, fa.SparseAdam): a slow float64 reference, parity
with torch.optim.SparseAdam, thread-count independence, state_dict / checkpoints, and
bad input leaving everything unchanged."""
import copy
import math

import numpy as np
import pytest

import fastadam as fa
from fastadam import config
from fastadam import sparse as fs
from fastadam.kernels import sparse as K

DTYPES = [np.float32, np.float64]


# ----------------------------------------------------------------------------- reference
def sparse_adam_reference(p, idx, vals, m, v, *, step, lr=1e-3, betas=(0.9, 0.999),
                          eps=1e-8, maximize=False):
    """One SparseAdam step in float64, written from torch's documentation of the
    algorithm (textbook moment updates, eps added to the uncorrected sqrt(v)); returns
    new (p, m, v), inputs untouched."""
    p, m, v = (np.array(x, dtype=np.float64) for x in (p, m, v))
    shape = p.shape
    p, m, v = (x.reshape(shape[0], -1) for x in (p, m, v))
    vals = np.asarray(vals, dtype=np.float64).reshape(len(idx), p.shape[1])
    sums = {}
    for j, r in enumerate(np.asarray(idx).tolist()):
        sums[r] = sums[r] + vals[j] if r in sums else vals[j].copy()
    b1, b2 = betas
    size = lr * math.sqrt(1.0 - b2 ** step) / (1.0 - b1 ** step)
    for r, g in sums.items():
        if maximize:
            g = -g
        m[r] = b1 * m[r] + (1.0 - b1) * g
        v[r] = b2 * v[r] + (1.0 - b2) * g * g
        p[r] = p[r] - size * m[r] / (np.sqrt(v[r]) + eps)
    return p.reshape(shape), m.reshape(shape), v.reshape(shape)


def random_indices(rng, n_rows, k, kind):
    if kind == "uniform":
        return rng.integers(0, n_rows, k)
    if kind == "dups":          # few distinct rows: many duplicates
        return rng.integers(0, max(1, n_rows // 8), k)
    if kind == "zipf":
        return (rng.zipf(1.3, k) - 1) % n_rows
    raise ValueError(kind)


def make_param(rng, n_rows, dim, dtype):
    shape = (n_rows,) if dim is None else (n_rows, dim)
    return rng.standard_normal(shape).astype(dtype)


def make_values(rng, k, dim, dtype):
    shape = (k,) if dim is None else (k, dim)
    return rng.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------- functional
@pytest.mark.parametrize("dim", [None, 1, 7, 64])
@pytest.mark.parametrize("kind", ["uniform", "dups", "zipf"])
@pytest.mark.parametrize("maximize", [False, True])
def test_functional_matches_reference_every_step(launch_mode, dim, kind, maximize):
    rng = np.random.default_rng(hash((dim, kind, maximize)) % 2**32)
    n_rows = 300
    p = make_param(rng, n_rows, dim, np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t in range(1, 31):
        k = int(rng.integers(0, 400))
        idx = random_indices(rng, n_rows, k, kind)
        vals = make_values(rng, k, dim, np.float64)
        want = sparse_adam_reference(p, idx, vals, m, v, step=t, lr=1e-2,
                                     betas=(0.8, 0.99), eps=1e-6, maximize=maximize)
        fa.sparse_adam_step(p, idx, vals, m, v, step=t, lr=1e-2, betas=(0.8, 0.99),
                            eps=1e-6, maximize=maximize)
        for got, ref in zip((p, m, v), want):
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)


def test_functional_touches_only_indexed_rows(launch_mode):
    rng = np.random.default_rng(1)
    p = make_param(rng, 1000, 16, np.float32)
    m = (0.1 * make_param(rng, 1000, 16, np.float32))
    v = np.abs(make_param(rng, 1000, 16, np.float32))
    before = [a.copy() for a in (p, m, v)]
    idx = np.array([5, 999, 5, 0, 321])
    fa.sparse_adam_step(p, idx, make_values(rng, 5, 16, np.float32), m, v, step=3)
    untouched = np.setdiff1d(np.arange(1000), idx)
    for a, b in zip((p, m, v), before):
        assert np.array_equal(a[untouched], b[untouched])
        assert not np.array_equal(a[idx], b[idx])


def test_empty_index_set_changes_nothing():
    rng = np.random.default_rng(2)
    p = make_param(rng, 50, 4, np.float64)
    m, v = np.ones_like(p), np.ones_like(p)
    before = [a.copy() for a in (p, m, v)]
    fa.sparse_adam_step(p, np.zeros(0, np.int64), np.zeros((0, 4)), m, v, step=1)
    for a, b in zip((p, m, v), before):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("itype", [np.int8, np.uint16, np.int32, np.uint32, np.int64,
                                   np.uint64])
def test_any_integer_index_dtype_and_lists(itype):
    rng = np.random.default_rng(3)
    p0 = make_param(rng, 100, 3, np.float64)
    vals = make_values(rng, 4, 3, np.float64)
    ref = [p0.copy(), np.zeros_like(p0), np.zeros_like(p0)]
    fa.sparse_adam_step(*ref[:1], np.array([1, 7, 1, 99]), vals, *ref[1:], step=1)
    for indices in (np.array([1, 7, 1, 99], dtype=itype), [1, 7, 1, 99],
                    np.array([[1, 9], [7, 9], [1, 9], [99, 9]], dtype=itype)[:, 0]):
        got = [p0.copy(), np.zeros_like(p0), np.zeros_like(p0)]
        fa.sparse_adam_step(got[0], indices, vals, got[1], got[2], step=1)
        for a, b in zip(got, ref):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["uniform", "zipf"])
def test_result_independent_of_bucket_and_chunk_count(dtype, kind):
    """The parallel kernel with 2..2**12 hash buckets grouped into 1..7 chunks gives the
    serial kernel's bits."""
    rng = np.random.default_rng(4)
    p0 = make_param(rng, 5000, 24, dtype)
    m0 = (0.1 * make_param(rng, 5000, 24, dtype))
    v0 = np.abs(make_param(rng, 5000, 24, dtype))
    idx = random_indices(rng, 5000, 3000, kind)
    vals = make_values(rng, 3000, 24, dtype)
    sc = fs.step_scalars(7, 1e-3, 0.9, 0.999, 1e-8, False, dtype)
    ref = [a.copy() for a in (p0, m0, v0)]
    K.sparse_adam_serial(ref[0], idx, vals, ref[1], ref[2], sc)
    for bbits, n_chunks in [(1, 1), (1, 2), (1, 3), (3, 2), (6, 4), (9, 7), (12, 2), (12, 5)]:
        got = [a.copy() for a in (p0, m0, v0)]
        K.sparse_adam_parallel(got[0], idx, vals, got[1], got[2], sc, bbits, n_chunks)
        for a, b in zip(got, ref):
            assert np.array_equal(a, b), (bbits, n_chunks)


def _buckets(idx, bbits):
    return (idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bbits)


def test_bucket_counts_and_chunk_positions():
    """bucket_counts gives the cumulative occurrence counts per hash bucket (and the
    first out-of-range position); chunk_of_buckets lists the positions of a run of
    buckets in increasing order, and the chunks of work_cuts partition 0..k-1."""
    rng = np.random.default_rng(11)
    idx = random_indices(rng, 1000, 700, "zipf")
    for bbits in (1, 4, 9):
        bad, start = K.bucket_counts(idx, 1000, bbits)
        bucket = _buckets(idx, bbits).astype(np.int64)
        assert bad == -1
        assert np.array_equal(start, np.concatenate([[0], np.cumsum(
            np.bincount(bucket, minlength=1 << bbits))]))
        for n_chunks in (1, 2, 3):
            cut = K.work_cuts(start, n_chunks)
            got = []
            for c in range(n_chunks):
                n = start[cut[c + 1]] - start[cut[c]]
                pos = K.chunk_of_buckets(idx, cut[c], cut[c + 1], bbits, n)
                want = np.flatnonzero((bucket >= cut[c]) & (bucket < cut[c + 1]))
                assert np.array_equal(pos, want), (bbits, n_chunks, c)
                got.append(pos)
            assert np.array_equal(np.sort(np.concatenate(got)), np.arange(idx.size))
    for j, r in ((0, -1), (350, 1000), (699, 5000)):
        bad_idx = idx.copy()
        bad_idx[j] = r
        assert K.bucket_counts(bad_idx, 1000, 4)[0] == j


def test_work_cuts_balance_occurrences_not_rows():
    """A Zipf law puts hundreds of occurrences of its hottest row in one bucket: the
    chunks still get about k / n_chunks occurrences each (within one bucket's weight)."""
    rng = np.random.default_rng(12)
    idx = (rng.zipf(1.2, 4096) - 1) % 10**6
    bbits = fs._partition_bits(idx.shape[0])
    _, start = K.bucket_counts(idx, 10**6, bbits)
    sizes = np.diff(start)
    for n_chunks in (2, 3, 4, 8):
        cut = K.work_cuts(start, n_chunks)
        assert cut[0] == 0 and cut[-1] == sizes.size and np.all(np.diff(cut) >= 0)
        work = np.array([sizes[cut[c]:cut[c + 1]].sum() for c in range(n_chunks)])
        assert work.sum() == idx.size
        assert np.all(np.abs(work - idx.size / n_chunks) <= sizes.max()), (n_chunks, work)
    cut = K.work_cuts(start, 2)
    work = [sizes[:cut[1]].sum(), sizes[cut[1]:].sum()]
    assert max(work) <= idx.size / 2 + sizes.max() / 2


@pytest.mark.skipif(config.numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_independence(monkeypatch, dtype):
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 0)
    rng = np.random.default_rng(5)
    p0 = make_param(rng, 20000, 32, dtype)
    steps = [(random_indices(rng, 20000, 4096, kind), make_values(rng, 4096, 32, dtype))
             for _ in range(3) for kind in ("zipf", "uniform", "dups")]
    out = []
    for n in (1, 2):
        p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        with fa.threads(n):
            for t, (idx, vals) in enumerate(steps, 1):
                fa.sparse_adam_step(p, idx, vals, m, v, step=t)
        out.append((p, m, v))
    for a, b in zip(*out):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- torch parity
torch = pytest.importorskip("torch")


def torch_grad(idx, vals, shape):
    return torch.sparse_coo_tensor(torch.from_numpy(np.asarray(idx, np.int64))[None],
                                   torch.from_numpy(vals), shape, check_invariants=False)


def run_pair(params0, groups, schedule, *, dtype, nonfinite="propagate"):
    """Run fa.SparseAdam and torch.optim.SparseAdam over ``schedule`` (a list of steps,
    each a list of (idx, vals) or None per parameter); returns both optimizers and
    both parameter lists."""
    ours = [p.copy() for p in params0]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in params0]

    def split(ps):
        out, k = [], 0
        for g in groups:
            n = g["n"]
            d = {key: val for key, val in g.items() if key != "n"}
            d["params"] = ps[k:k + n]
            out.append(d)
            k += n
        return out

    opt = fa.SparseAdam(split(ours), nonfinite=nonfinite)
    topt = torch.optim.SparseAdam(split(theirs))
    for grads in schedule:
        opt.step(grads)
        for tp, gr in zip(theirs, grads):
            tp.grad = None if gr is None else torch_grad(gr[0], gr[1], tp.shape)
        topt.step()
    return opt, topt, ours, [tp.detach().numpy() for tp in theirs]


def schedule_for(rng, params0, n_steps, dtype, *, p_none=0.15, p_empty=0.1):
    out = []
    for _ in range(n_steps):
        grads = []
        for p in params0:
            u = rng.random()
            if u < p_none:
                grads.append(None)
                continue
            k = 0 if u < p_none + p_empty else int(rng.integers(1, 3 * p.shape[0]))
            idx = random_indices(rng, p.shape[0], k, ["uniform", "dups", "zipf"][k % 3])
            dim = None if p.ndim == 1 else p.shape[1]
            grads.append((idx, make_values(rng, k, dim, dtype)))
        out.append(grads)
    return out


@pytest.mark.usefixtures("torch_one_thread")   # conftest: tiny tensors, loaded cores
def test_torch_parity_float64_long_run():
    """Hundreds of steps: 1-D and 2-D params, duplicates, empty index sets, no-gradient
    steps (per-parameter step counts then differ), two groups, maximize."""
    rng = np.random.default_rng(6)
    params0 = [make_param(rng, 40, None, np.float64), make_param(rng, 60, 8, np.float64),
               make_param(rng, 25, 3, np.float64), make_param(rng, 90, None, np.float64)]
    groups = [{"n": 2, "lr": 1e-2}, {"n": 2, "lr": 3e-3, "betas": (0.8, 0.95), "eps": 1e-6,
                                     "maximize": True}]
    sched = schedule_for(rng, params0, 400, np.float64)
    opt, topt, ours, theirs = run_pair(params0, groups, sched, dtype=np.float64)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    tsd = topt.state_dict()
    sd = opt.state_dict()
    assert set(sd["state"]) == set(tsd["state"])
    for i, st in tsd["state"].items():
        assert sd["state"][i]["step"] == st["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(sd["state"][i][key], st[key].numpy(), rtol=1e-12,
                                       atol=1e-14)
    assert len({st["step"] for st in sd["state"].values()}) > 1   # the counts diverged


def coalesce_in_order(idx, vals, n_rows):
    """(unique rows, summed values), each row's values summed in occurrence order (as
    fastadam does; torch's coalesce may add them in another order)."""
    dense = np.zeros((n_rows,) + vals.shape[1:], vals.dtype)
    np.add.at(dense, idx, vals)             # unbuffered: in index order, 0 + v0 = v0
    rows = np.unique(idx)
    return rows, dense[rows]


def ulps(a, b):
    """Largest distance in float32 ulps between same-signed arrays a and b."""
    return int(np.max(np.abs(a.view(np.int32).astype(np.int64)
                             - b.view(np.int32).astype(np.int64)), initial=0))


@pytest.mark.usefixtures("torch_one_thread")   # conftest: tiny tensors, loaded cores
@pytest.mark.parametrize("kind", ["uniform", "dups"])
def test_torch_parity_float32_each_step_within_few_ulp(kind):
    """float32: starting each step from the same state, the moments equal torch's to
    the bit and the parameter is within a few ulp of the step's size. Torch gets the
    gradient with duplicates already summed in occurrence order, because its coalesce
    may add them in another order (a float32 sum of many terms can then differ by far
    more than an ulp of the result); we get the raw duplicated indices. The parameter
    may differ because torch's vectorised float32 sqrt is not always correctly rounded
    (1 ulp off in ~0.6% of elements here; numba's is exact)."""
    rng = np.random.default_rng(7)
    p = make_param(rng, 200, 16, np.float32)
    tp = torch.tensor(p.copy(), requires_grad=True)
    opt = fa.SparseAdam([p], lr=1e-2)
    topt = torch.optim.SparseAdam([tp], lr=1e-2)
    worst_state, worst_p = 0, 0.0
    for t in range(1, 201):
        idx = random_indices(rng, 200, 150, kind)
        vals = make_values(rng, 150, 16, np.float32)
        p_before = p.copy()
        opt.step([(idx, vals)])
        tp.grad = torch_grad(*coalesce_in_order(idx, vals, 200), tp.shape)
        topt.step()
        st = topt.state[tp]
        for a, b in ((opt.state[0]["exp_avg"], st["exp_avg"].numpy()),
                     (opt.state[0]["exp_avg_sq"], st["exp_avg_sq"].numpy())):
            worst_state = max(worst_state, ulps(a, b))
            b[...] = a          # resynchronise: compare one step at a time
        tpn = tp.detach().numpy()
        scale = np.abs(p - p_before) * np.finfo(np.float32).eps + np.spacing(np.abs(p))
        worst_p = max(worst_p, float(np.max(np.abs(p - tpn) / scale)))
        tpn[...] = p
    assert worst_state == 0
    assert worst_p <= 4, worst_p


@pytest.mark.usefixtures("torch_one_thread")   # conftest: tiny tensors, loaded cores
def test_state_dict_into_torch_and_back():
    rng = np.random.default_rng(8)
    params0 = [make_param(rng, 30, 4, np.float64), make_param(rng, 30, None, np.float64)]
    sched = schedule_for(rng, params0, 20, np.float64, p_none=0.0, p_empty=0.0)
    opt, _, ours, _ = run_pair(params0, [{"n": 2, "lr": 5e-3}], sched, dtype=np.float64)
    # ours -> torch, continue both for 30 steps.
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in ours]
    topt = torch.optim.SparseAdam(theirs)
    sd = opt.state_dict()
    topt.load_state_dict({
        "state": {i: {"step": s["step"], "exp_avg": torch.from_numpy(s["exp_avg"]),
                      "exp_avg_sq": torch.from_numpy(s["exp_avg_sq"])}
                  for i, s in sd["state"].items()},
        "param_groups": sd["param_groups"]})
    for grads in schedule_for(rng, params0, 30, np.float64):
        opt.step(grads)
        for tp, gr in zip(theirs, grads):
            tp.grad = None if gr is None else torch_grad(gr[0], gr[1], tp.shape)
        topt.step()
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-12, atol=1e-14)
    # torch -> a fresh fa.SparseAdam over copies of the parameters.
    tsd = topt.state_dict()
    fresh = [b.detach().numpy().copy() for b in theirs]
    opt2 = fa.SparseAdam(fresh)
    opt2.load_state_dict({
        "state": {i: {k: (val.numpy() if hasattr(val, "numpy") else val)
                      for k, val in s.items()} for i, s in tsd["state"].items()},
        "param_groups": tsd["param_groups"]})
    assert opt2.param_groups[0]["lr"] == 5e-3
    for grads in schedule_for(rng, params0, 10, np.float64):
        opt2.step(grads)
        for tp, gr in zip(theirs, grads):
            tp.grad = None if gr is None else torch_grad(gr[0], gr[1], tp.shape)
        topt.step()
    for a, b in zip(fresh, theirs):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- object
def test_object_matches_functional_and_counts_steps_per_param():
    rng = np.random.default_rng(9)
    a0, b0 = make_param(rng, 50, 5, np.float32), make_param(rng, 80, None, np.float64)
    a, b = a0.copy(), b0.copy()
    opt = fa.SparseAdam([{"params": [a], "lr": 0.01}, {"params": [b], "maximize": True}])
    fa_state = [[a0.copy(), np.zeros_like(a0), np.zeros_like(a0), 0],
                [b0.copy(), np.zeros_like(b0), np.zeros_like(b0), 0]]
    for t in range(12):
        ga = (random_indices(rng, 50, 30, "dups"), make_values(rng, 30, 5, np.float32))
        gb = None if t % 3 == 0 else (np.zeros(0, np.int64), np.zeros(0)) if t % 3 == 1 \
            else (random_indices(rng, 80, 10, "uniform"), make_values(rng, 10, None, np.float64))
        opt.step([ga, gb])
        for st, g, kw in ((fa_state[0], ga, {"lr": 0.01}), (fa_state[1], gb, {"maximize": True})):
            if g is None:
                continue
            st[3] += 1
            fa.sparse_adam_step(st[0], g[0], g[1], st[1], st[2], step=st[3], **kw)
    assert np.array_equal(a, fa_state[0][0]) and np.array_equal(b, fa_state[1][0])
    assert opt.state[0]["step"] == 12 and opt.state[1]["step"] == 8
    for i in range(2):
        assert np.array_equal(opt.state[i]["exp_avg"], fa_state[i][1])
        assert np.array_equal(opt.state[i]["exp_avg_sq"], fa_state[i][2])


def test_state_only_for_params_with_gradients_and_zero_init():
    p, q = np.ones(10), np.ones((4, 2))
    opt = fa.SparseAdam([p, q])
    assert opt.state_dict()["state"] == {}
    opt.step([None, (np.array([1]), np.ones((1, 2)))])
    sd = opt.state_dict()
    assert list(sd["state"]) == [1] and sd["state"][1]["step"] == 1
    assert np.count_nonzero(sd["state"][1]["exp_avg"]) == 2


def test_param_group_edits_apply_and_bad_edits_change_nothing():
    p = np.zeros((5, 2))
    opt = fa.SparseAdam([p], lr=1e-3)
    g = (np.array([0]), np.ones((1, 2)))
    opt.param_groups[0]["lr"] = 0.5
    opt.step([g])
    np.testing.assert_allclose(p[0], -0.5, rtol=1e-6)
    before = p.copy()
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step([g])
    assert np.array_equal(p, before) and opt.state[0]["step"] == 1


def test_add_param_group_starts_at_zero():
    p, q = np.zeros(5), np.zeros((3, 2))
    opt = fa.SparseAdam([p], lr=0.1)
    opt.step([(np.array([1]), np.ones(1))])
    opt.add_param_group({"params": [q], "lr": 0.2})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["betas"] == (0.9, 0.999)
    opt.step([None, (np.array([2]), np.ones((1, 2)))])
    np.testing.assert_allclose(q[2], -0.2, rtol=1e-6)
    assert opt.state[1]["step"] == 1 and opt.state[0]["step"] == 1
    with pytest.raises(ValueError, match="share memory"):
        opt.add_param_group({"params": [p[:2]]})
    assert len(opt.param_groups) == 2


def test_save_load_roundtrip_and_algorithm_check(tmp_path):
    rng = np.random.default_rng(10)
    p0 = make_param(rng, 40, 3, np.float32)
    p = p0.copy()
    opt = fa.SparseAdam([p], lr=0.02, nonfinite="skip")
    for _ in range(5):
        opt.step([(random_indices(rng, 40, 20, "dups"), make_values(rng, 20, 3, np.float32))])
    opt.step([(np.array([0]), np.full((1, 3), np.nan, np.float32))])
    path = tmp_path / "sparse.ckpt"
    opt.save(path)
    q = p.copy()
    opt2 = fa.SparseAdam([q])
    opt2.load(path)
    assert opt2.skipped_steps == 1 and opt2.param_groups[0]["lr"] == 0.02
    g = (random_indices(rng, 40, 20, "dups"), make_values(rng, 20, 3, np.float32))
    opt.step([g])
    opt2.step([g])
    assert np.array_equal(p, q)
    dense = fa.Adam([np.zeros(3)])
    dense.save(tmp_path / "dense.ckpt")
    before = opt2.state_dict()
    with pytest.raises(ValueError, match="adam"):
        opt2.load(tmp_path / "dense.ckpt")
    after = opt2.state_dict()
    assert after["state"][0]["step"] == before["state"][0]["step"]
    assert np.array_equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_are_independent_and_guard_their_own_memory(how):
    import pickle
    p = np.zeros((4, 2))
    opt = fa.SparseAdam([p])
    opt.step([(np.array([1]), np.ones((1, 2)))])
    c = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    c.step([(np.array([1]), np.ones((1, 2)))])
    assert opt.state[0]["step"] == 1 and c.state[0]["step"] == 2
    (q,) = c.param_groups[0]["params"]
    assert q is not p and not np.shares_memory(q, p)
    with pytest.raises(ValueError, match="share memory with parameter 0"):
        c.step([(np.array([0]), q[1:2])])        # the copy's own parameter as gradient
    opt.step([(np.array([0]), q[1:2])])          # the original does not own q
    with pytest.raises(TypeError):
        copy.copy(opt)


def test_gradient_sharing_memory_with_state_is_rejected():
    p = np.zeros((4, 2))
    opt = fa.SparseAdam([p])
    opt.step([(np.array([1]), np.ones((1, 2)))])
    m = opt.state[0]["exp_avg"]
    before = m.copy()
    with pytest.raises(ValueError, match=r"grads\[0\] values share memory with exp_avg"):
        opt.step([(np.array([2]), m[1:2])])
    assert np.array_equal(m, before) and opt.state[0]["step"] == 1


# ----------------------------------------------------------------------------- bad input
def _fresh(dtype=np.float32, dim=4):
    rng = np.random.default_rng(11)
    p = make_param(rng, 10, dim, dtype)
    return p, (0.1 * p).astype(dtype), np.abs(p).astype(dtype)


BAD_FUNCTIONAL = [
    (dict(indices=np.array([0, 10])), ValueError, r"indices\[1\] = 10 is out of range"),
    (dict(indices=np.array([-1, 2])), ValueError, r"indices\[0\] = -1 is out of range"),
    (dict(indices=np.array([0, 2**63 + 5], np.uint64)), ValueError, r"indices\[1\]"),
    (dict(indices=np.array([0.0, 1.0])), TypeError, "indices must have an integer dtype"),
    (dict(indices=np.array([True, False])), TypeError, "indices must have an integer"),
    (dict(indices=np.array([[0, 1]])), ValueError, "indices must be 1-D"),
    (dict(indices="01"), TypeError, "indices must be"),
    (dict(values=np.ones((3, 4), np.float32)), ValueError, r"values must have shape \(2, 4\)"),
    (dict(values=np.ones((2, 5), np.float32)), ValueError, r"values must have shape"),
    (dict(values=np.ones(2, np.float32)), ValueError, r"values must have shape"),
    (dict(values=np.ones((2, 4), np.float64)), TypeError, "values must have dtype float32"),
    (dict(values=np.ones((4, 2), np.float32).T), ValueError, "values must be C-contiguous"),
    (dict(values=[[1.0] * 4] * 2), TypeError, "values must be a numpy.ndarray"),
    (dict(step=0), ValueError, "step"),
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(betas=(0.9, 1.0)), ValueError, "betas"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(maximize=1), TypeError, "maximize"),
]


@pytest.mark.parametrize("bad,exc,msg", BAD_FUNCTIONAL)
def test_functional_bad_input_changes_nothing(bad, exc, msg):
    p, m, v = _fresh()
    before = [a.copy() for a in (p, m, v)]
    args = dict(indices=np.array([0, 3]), values=np.ones((2, 4), np.float32), step=1,
                lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False)
    args.update(bad)
    with pytest.raises(exc, match=msg):
        fa.sparse_adam_step(p, args.pop("indices"), args.pop("values"), m, v, **args)
    for a, b in zip((p, m, v), before):
        assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("where", [0, 2999, 6000])
def test_functional_index_out_of_range_is_caught_by_the_launch(launch_mode, where):
    """The functional form checks the bounds inside the kernel call (serial and
    parallel kernels), before any row is written: a bad index anywhere in a large
    index set, with good rows before it, changes nothing."""
    rng = np.random.default_rng(12)
    p = make_param(rng, 500, 16, np.float32)
    m, v = (0.1 * p).astype(np.float32), np.abs(p).astype(np.float32)
    before = [a.copy() for a in (p, m, v)]
    idx = rng.integers(0, 500, 6001)
    idx[where] = 500 if where else -3
    with pytest.raises(ValueError, match=rf"indices\[{where}\] = {idx[where]} is out of"):
        fa.sparse_adam_step(p, idx, make_values(rng, 6001, 16, np.float32), m, v, step=2)
    for a, b in zip((p, m, v), before):
        assert np.array_equal(a, b)
    for kernel in (lambda sc: K.sparse_adam_serial(p, idx, vals, m, v, sc),
                   lambda sc: K.sparse_adam_parallel(p, idx, vals, m, v, sc, 5, 3)):
        vals = make_values(rng, 6001, 16, np.float32)
        assert kernel(fs.step_scalars(2, 1e-3, 0.9, 0.999, 1e-8, False, np.float32)) == where
        for a, b in zip((p, m, v), before):
            assert np.array_equal(a, b)


def test_functional_bad_buffers():
    p, m, v = _fresh()
    idx, vals = np.array([1]), np.ones((1, 4), np.float32)
    with pytest.raises(ValueError, match="param must be C-contiguous"):
        fa.sparse_adam_step(np.asfortranarray(np.ones((10, 4), np.float32)), idx, vals,
                            np.zeros((10, 4), np.float32), np.zeros((10, 4), np.float32),
                            step=1)
    with pytest.raises(ValueError, match="param must be C-contiguous"):
        big = np.ones((10, 8), np.float32)
        fa.sparse_adam_step(big[:, :4], idx, vals, m, v, step=1)
    with pytest.raises(ValueError, match="param must be 1-D .* or 2-D"):
        fa.sparse_adam_step(np.ones((2, 2, 2), np.float32), idx, vals, m, v, step=1)
    with pytest.raises(TypeError, match="param must have dtype float32 or float64"):
        fa.sparse_adam_step(np.ones((10, 4), np.float16), idx, vals, m, v, step=1)
    with pytest.raises(ValueError, match="exp_avg must have shape"):
        fa.sparse_adam_step(p, idx, vals, m[:5], v, step=1)
    with pytest.raises(TypeError, match="exp_avg_sq must have dtype float32"):
        fa.sparse_adam_step(p, idx, vals, m, v.astype(np.float64), step=1)
    before = [a.copy() for a in (p, m, v)]
    with pytest.raises(ValueError, match="share memory"):
        fa.sparse_adam_step(p, idx, m[2:3], m, v, step=1)
    with pytest.raises(ValueError, match="share memory"):
        fa.sparse_adam_step(p, idx, vals, p, v, step=1)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="param is read-only"):
        fa.sparse_adam_step(ro, idx, vals, m, v, step=1)
    for a, b in zip((p, m, v), before):
        assert np.array_equal(a, b)


def _two_param_opt(nonfinite="propagate"):
    rng = np.random.default_rng(12)
    a, b = make_param(rng, 10, 4, np.float32), make_param(rng, 6, None, np.float64)
    opt = fa.SparseAdam([a, b], nonfinite=nonfinite)
    opt.step([(np.array([1, 2]), np.ones((2, 4), np.float32)), (np.array([0]), np.ones(1))])
    return opt, a, b


def _snapshot(opt, a, b):
    sd = opt.state_dict()
    return [a.copy(), b.copy()] + [sd["state"][i][k].copy() for i in (0, 1)
                                   for k in ("exp_avg", "exp_avg_sq")] + \
        [sd["state"][i]["step"] for i in (0, 1)] + [opt.skipped_steps]


def _same(x, y):
    return all(np.array_equal(u, w, equal_nan=True) if isinstance(u, np.ndarray) else u == w
               for u, w in zip(x, y))


GOOD_A = (np.array([3, 3]), np.ones((2, 4), np.float32))
BAD_OBJECT = [
    ([GOOD_A, (np.array([6]), np.ones(1))], ValueError, r"grads\[1\] indices\[0\] = 6"),
    ([GOOD_A, (np.array([-2]), np.ones(1))], ValueError, r"grads\[1\] indices\[0\] = -2"),
    ([GOOD_A, (np.array([1.0]), np.ones(1))], TypeError, r"grads\[1\] indices must have an"),
    ([GOOD_A, (np.array([[1]]), np.ones(1))], ValueError, r"grads\[1\] indices must be 1-D"),
    ([GOOD_A, (np.array([1]), np.ones(2))], ValueError, r"grads\[1\] values must have shape"),
    ([GOOD_A, (np.array([1]), np.ones((1, 1)))], ValueError, r"grads\[1\] values must have"),
    ([GOOD_A, np.ones(6)], TypeError, r"grads\[1\] must be an \(indices, values\) pair"),
    ([GOOD_A], ValueError, "one entry per parameter"),
    (GOOD_A[0], TypeError, "grads must be a list"),
]


@pytest.mark.parametrize("grads,exc,msg", BAD_OBJECT)
def test_object_bad_gradients_change_nothing(grads, exc, msg):
    """The first gradient is fine; the error in the second must leave the first
    parameter unstepped too."""
    opt, a, b = _two_param_opt()
    before = _snapshot(opt, a, b)
    with pytest.raises(exc, match=msg):
        opt.step(grads)
    assert _same(_snapshot(opt, a, b), before)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_skip_and_raise_change_nothing(bad):
    for mode in ("skip", "raise"):
        opt, a, b = _two_param_opt(mode)
        before = _snapshot(opt, a, b)
        vals = np.ones(1)
        vals[0] = bad
        grads = [GOOD_A, (np.array([4]), vals)]
        if mode == "raise":
            with pytest.raises(ValueError, match=r"grads\[1\] values hold 1 non-finite"):
                opt.step(grads)
            assert _same(_snapshot(opt, a, b), before)
        else:
            opt.step(grads)
            after = _snapshot(opt, a, b)
            assert after[-1] == before[-1] + 1
            assert _same(after[:-1], before[:-1])
        opt.step([GOOD_A, None])          # and the optimizer still steps afterwards
        assert opt.state[0]["step"] == 2


def test_nonfinite_propagate_matches_torch_semantics():
    opt, a, b = _two_param_opt()
    opt.step([(np.array([5]), np.full((1, 4), np.nan, np.float32)), None])
    assert np.isnan(a[5]).all() and np.isfinite(np.delete(a, 5, axis=0)).all()


def test_count_nonfinite_finds_each_kind():
    for dtype in DTYPES:
        x = np.ones(1001, dtype)
        assert fs.count_nonfinite(x) == 0
        x[[0, 500, 1000]] = [np.nan, np.inf, -np.inf]
        x[3] = np.finfo(dtype).max
        x[4] = np.finfo(dtype).tiny / 4       # subnormal: finite
        assert fs.count_nonfinite(x) == 3


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(lr=-1.0), ValueError, "lr"), (dict(betas=(1.0, 0.9)), ValueError, "betas"),
    (dict(eps="1"), TypeError, "eps"), (dict(maximize=None), TypeError, "maximize"),
    (dict(nonfinite="ignore"), ValueError, "nonfinite"),
])
def test_constructor_rejects_bad_hyperparameters(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        fa.SparseAdam([np.zeros(3)], **kwargs)


def test_constructor_rejects_bad_params():
    with pytest.raises(TypeError, match="not a single array"):
        fa.SparseAdam(np.zeros(3))
    with pytest.raises(ValueError, match="C-contiguous"):
        fa.SparseAdam([np.zeros((4, 6))[:, :3]])
    with pytest.raises(ValueError, match="1-D .* or 2-D"):
        fa.SparseAdam([np.zeros((2, 2, 2))])
    z = np.zeros(10)
    with pytest.raises(ValueError, match="share memory"):
        fa.SparseAdam([z[:5], z[3:]])


def test_load_state_dict_bad_input_changes_nothing():
    opt, a, b = _two_param_opt()
    before = _snapshot(opt, a, b)
    good = opt.state_dict()
    cases = []
    sd = copy.deepcopy(good); sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"][:5]
    cases.append((sd, ValueError, "must have shape"))
    sd = copy.deepcopy(good); sd["state"][1]["exp_avg_sq"] = np.zeros(6, np.float32)
    cases.append((sd, TypeError, "must have dtype float64"))
    sd = copy.deepcopy(good); sd["state"][1]["step"] = -1
    cases.append((sd, ValueError, "step"))
    sd = copy.deepcopy(good); del sd["state"][0]["exp_avg"]
    cases.append((sd, ValueError, "lacks 'exp_avg'"))
    sd = copy.deepcopy(good); sd["state"][7] = sd["state"][0]
    cases.append((sd, ValueError, "for no parameter"))
    sd = copy.deepcopy(good); sd["param_groups"][0]["lr"] = float("inf")
    cases.append((sd, ValueError, "lr"))
    sd = copy.deepcopy(good); sd["algorithm"] = "adam"
    cases.append((sd, ValueError, "'adam' optimizer"))
    for sd, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            opt.load_state_dict(sd)
        assert _same(_snapshot(opt, a, b), before)


# ----------------------------------------------------------------------------- benchmark
def test_sparse_floor_kernel_moves_the_touched_rows():
    """The floor kernel adds each of the first len(rows) value rows to its row of p, m
    and v, and sums the remaining value rows into acc; serial and parallel agree."""
    rng = np.random.default_rng(13)
    p0 = make_param(rng, 100, 8, np.float32)
    rows = np.array([5, 70, 2])
    vals = make_values(rng, 5, 8, np.float32)
    out = []
    for kernel, n_chunks in ((K.sparse_floor_serial, 1), (K.sparse_floor_parallel, 4)):
        p, m, v = p0.copy(), p0.copy(), p0.copy()
        acc = np.zeros((n_chunks, 8), np.float32)
        kernel(p, rows, vals, m, v, acc)
        for a in (p, m, v):
            want = p0.copy()
            want[rows] += vals[:3]
            np.testing.assert_array_equal(a, want)
        np.testing.assert_allclose(acc.sum(axis=0), vals[3:].sum(axis=0), rtol=1e-6)
        out.append(p)
    assert np.array_equal(out[0], out[1])


def test_bench_sparse_quick_smoke():
    """`fastadam bench --sparse --quick` machinery: runs and reports every ratio (no
    timing is asserted)."""
    from fastadam import bench_sparse
    res = bench_sparse.run(quick=True, peers=(), rows=2000, dim=8, k=64)
    (one,) = res["runs"]
    for dist in bench_sparse.DISTRIBUTIONS:
        r = one["ratios"][dist]
        assert r["floor"] > 0 and r["dense"] > 0 and r["torch"] is None
    text = bench_sparse.format_report(res)
    assert "vs the floor kernel, zipf" in text and "x dense" in text
