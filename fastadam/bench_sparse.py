"""``fastadam bench --sparse``: a sparse Adam step on an embedding table, against the
memory limit of the rows it touches, torch.optim.SparseAdam and a dense Adam step.

Workload: a float32 table of ``rows x dim`` (default 1e6 x 64) and, each step, ``k``
(default 4096) fresh row indices with one gradient row each, drawn uniformly or from a
Zipf law (a few hot rows repeat many times: duplicates to coalesce). Per distribution:

* ``sparse``: ``fastadam.sparse_adam_step`` (validation, coalescing and the update);
* ``floor``: a kernel that reads each value row once and reads and writes each touched
  row of p, m and v once, with trivial arithmetic and the same prefetching (its
  distinct rows are computed before timing; ``kernels/sparse.py``), timed in the same
  process; the "x floor" ratio is the median over rounds of a floor batch and a
  sparse batch timed back to back, so that load from elsewhere cancels;
* ``torch``: ``torch.optim.SparseAdam.step()`` with an uncoalesced sparse COO gradient
  (so its time includes the coalesce), in its own process;
* ``dense``: ``fastadam.adam_step`` over the whole table (what a dense optimizer pays),
  once per run (it does not depend on the indices).

Index sets cycle through a pool of 256 (a set recurs only after 256 steps, so rows are
not cache-warm from an earlier step unless they are genuinely hot, like the Zipf law's
head) and value blocks through a pool of 16 (16 MB at the default size). The worker protocol (``python -m
fastadam.bench_sparse worker IMPL SPEC_JSON``) is internal.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from .bench import _have, _load, _progress, machine_info, measure
from .bench import run_worker as _run_worker

DEFAULTS = {"rows": 10**6, "dim": 64, "k": 4096}
QUICK = {"rows": 10**5, "dim": 16, "k": 512}
DISTRIBUTIONS = ("uniform", "zipf")
ZIPF_A = 1.2
POOL = 256          # index sets cycled through: a row set recurs only every 256 steps
VALUE_POOL = 16     # value blocks cycled through (16 MB at the default size)
LR = 1e-3
TARGETS = {"floor": 0.8, "torch": 5.0, "dense": 30.0}


def make_indices(rng, rows, k, dist, n_sets):
    """``n_sets`` index arrays (int64, k each). Zipf ranks are mapped to rows through a
    fixed random permutation, so hot rows are scattered over the table."""
    if dist == "uniform":
        return [rng.integers(0, rows, k) for _ in range(n_sets)]
    perm = rng.permutation(rows)
    return [perm[(rng.zipf(ZIPF_A, k) - 1) % rows] for _ in range(n_sets)]


def _table(spec, seed=0):
    rng = np.random.default_rng(seed)
    shape = (spec["rows"], spec["dim"])
    p = rng.standard_normal(shape, dtype=np.float32)
    m = np.zeros(shape, np.float32)
    v = np.full(shape, 1e-4, np.float32)
    return rng, p, m, v


def _values(rng, spec):
    """Gradient rows >= 0: the floor kernel adds them to v, which must stay positive
    (a negative v would turn the step's sqrt into NaN)."""
    k, dim = spec["k"], spec["dim"]
    return [(1e-3 * rng.random((k, dim), dtype=np.float32)) for _ in range(VALUE_POOL)]


def floor_chunks(k):
    """Chunks of value rows of the parallel floor kernel (one parallel loop, like the
    step): 2 per thread, at least ~64 rows each."""
    import numba
    want = min(2 * numba.get_num_threads(), max(2, k // 64))
    return 1 << max(1, int(want - 1).bit_length())


def _worker_fastadam(spec):
    import fastadam as fa
    from fastadam import config
    from fastadam.kernels import sparse as K

    if spec.get("threads"):
        fa.set_num_threads(spec["threads"])
    quick = spec["quick"]
    rng, p, m, v = _table(spec)
    vals = _values(rng, spec)
    n_work = spec["k"] * spec["dim"]
    res = {"num_threads": fa.get_num_threads(), "threading_layer": fa.threading_layer(),
           "dist": {}}
    for dist in DISTRIBUTIONS:
        sets = make_indices(rng, spec["rows"], spec["k"], dist, POOL)
        # Distinct rows of each set, in order of first occurrence (the floor's rows).
        uniq = [s[np.sort(np.unique(s, return_index=True)[1])] for s in sets]
        n_chunks = floor_chunks(spec["k"])
        acc = np.zeros((n_chunks, spec["dim"]), np.float32)
        state = {"i": 0, "t": 0}

        def sparse():
            i = state["i"] = (state["i"] + 1) % POOL
            state["t"] += 1
            fa.sparse_adam_step(p, sets[i], vals[i % VALUE_POOL], m, v, step=state["t"],
                                lr=LR)

        def floor():      # dispatched like the step: serial when the work is small
            i = state["i"] = (state["i"] + 1) % POOL
            if config.use_parallel(n_work):
                with config.launch_lock():
                    K.sparse_floor_parallel(p, uniq[i], vals[i % VALUE_POOL], m, v, acc)
            else:
                K.sparse_floor_serial(p, uniq[i], vals[i % VALUE_POOL], m, v, acc)

        _progress(f"fastadam sparse   {dist}")
        r = measure({"sparse": sparse, "floor": floor}, n_work, quick)
        r["floor_ratio"] = paired_ratio(floor, sparse, 0.2 if quick else 3.0)
        r["unique_rows"] = float(np.mean([u.size for u in uniq]))
        res["dist"][dist] = r
    _progress("fastadam dense adam_step over the whole table")
    g = np.full(p.size, 1e-3, np.float32)
    pf, mf, vf = p.reshape(-1), m.reshape(-1), v.reshape(-1)
    res["dense"] = measure({"dense": lambda: fa.adam_step(pf, g, mf, vf, step=10, lr=LR)},
                           p.size, quick, min_rounds=3, max_rounds=3 if quick else 7)["dense"]
    return res


def paired_ratio(a, b, budget, inner=4):
    """Median over rounds of time(a) / time(b), each round timing ``inner`` calls of a
    and of b back to back (in alternating order): a ratio that a burst of load from
    other processes moves much less than the ratio of two medians."""
    a(), b()
    ratios = []
    start = time.perf_counter()
    while len(ratios) < 5 or time.perf_counter() - start < budget:
        t = {}
        for name, fn in ((("a", a), ("b", b)) if len(ratios) % 2 == 0
                         else (("b", b), ("a", a))):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            t[name] = time.perf_counter() - t0
        ratios.append(t["a"] / t["b"])
    return float(np.median(ratios))


def _worker_torch(spec):
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    rng, p, _, _ = _table(spec)
    vals = _values(rng, spec)
    tp = torch.from_numpy(p).requires_grad_(True)
    opt = torch.optim.SparseAdam([tp], lr=LR)
    shape = tuple(p.shape)
    res = {"version": torch.__version__, "num_threads": torch.get_num_threads(), "dist": {}}
    with torch.sparse.check_sparse_tensor_invariants(False):
        for dist in DISTRIBUTIONS:
            sets = make_indices(rng, spec["rows"], spec["k"], dist, POOL)
            grads = [torch.sparse_coo_tensor(torch.from_numpy(s)[None],
                                             torch.from_numpy(vals[i % VALUE_POOL]), shape)
                     for i, s in enumerate(sets)]
            state = {"i": 0}

            def step():
                i = state["i"] = (state["i"] + 1) % POOL
                tp.grad = grads[i]
                opt.step()

            _progress(f"torch SparseAdam  {dist}")
            res["dist"][dist] = measure({"t": step}, spec["k"] * spec["dim"],
                                        spec["quick"])["t"]
    return res


_WORKERS = {"fastadam": _worker_fastadam, "torch": _worker_torch}


def run_worker(impl, spec):
    return _run_worker(impl, spec, module="fastadam.bench_sparse")


def run(rows=None, dim=None, k=None, threads=None, quick=False, peers=("torch",), runs=1):
    """Each run: the fastadam worker then the torch worker, in fresh processes. Every
    ratio is computed within one run; with runs > 1 each run is reported."""
    base = QUICK if quick else DEFAULTS
    spec = {"rows": rows or base["rows"], "dim": dim or base["dim"], "k": k or base["k"],
            "threads": threads, "quick": quick}
    res = {"machine": machine_info(), "spec": spec, "load_before": _load(), "runs": []}
    use_torch = "torch" in peers and _have("torch")
    for r in range(runs):
        if runs > 1:
            _progress(f"run {r + 1}/{runs}")
        one = {"fastadam": run_worker("fastadam", spec)}
        if "error" in one["fastadam"]:
            raise RuntimeError(f"fastadam worker failed: {one['fastadam']['error']}")
        one["torch"] = run_worker("torch", spec) if use_torch else {"error": "not installed"
                                                                     if "torch" in peers
                                                                     else "not requested"}
        one["ratios"] = ratios(one)
        res["runs"].append(one)
    res["load_after"] = _load()
    return res


def ratios(one):
    """{dist: {"floor": floor/sparse, "torch": torch/sparse, "dense": dense/sparse}}
    (> 1: fastadam's sparse step is faster; floor ratio <= ~1 by construction). The
    floor ratio is the median of back-to-back pairs (see paired_ratio)."""
    fa, th = one["fastadam"], one.get("torch", {})
    out = {}
    for dist in DISTRIBUTIONS:
        sec = fa["dist"][dist]["sparse"]["sec"]
        d = fa["dist"][dist]
        out[dist] = {
            "floor": d.get("floor_ratio", d["floor"]["sec"] / sec),
            "torch": (th["dist"][dist]["sec"] / sec) if "dist" in th else None,
            "dense": fa["dense"]["sec"] / sec,
        }
    return out


def format_report(res):
    info, spec = res["machine"], res["spec"]
    lines = [f"Sparse Adam step: float32 table {spec['rows']:.0e} x {spec['dim']}, "
             f"{spec['k']} indices per step (fresh each step; Zipf a={ZIPF_A} has "
             "duplicates) | fastadam " + info["fastadam"] + f" | numba {info['numba']} | "
             f"torch {info['torch'] or 'absent'} | {info['cpu_count']} CPUs"]
    load = res.get("load_before")
    if load is not None and load > (info["cpu_count"] or 1) - 0.75:
        lines.append(f"WARNING: the machine was busy (load average {load:.2f} on "
                     f"{info['cpu_count']} CPUs): timings are noisy; compare the ratios, "
                     "each measured within one run.")
    for ri, one in enumerate(res["runs"]):
        fa, th = one["fastadam"], one["torch"]
        lines.append("")
        lines.append(f"run {ri + 1}: fastadam {fa['num_threads']} threads "
                     f"({fa['threading_layer']})"
                     + (f", torch {th['num_threads']} threads" if "num_threads" in th else
                        f", torch: {th.get('error')}")
                     + f"; dense adam_step over the table {fa['dense']['sec'] * 1e3:.1f} ms")
        lines.append(f"  {'indices':8s} {'unique':>7s} {'sparse us':>10s} {'floor us':>9s} "
                     f"{'torch us':>9s} {'x floor':>8s} {'x torch':>8s} {'x dense':>8s}")
        for dist in DISTRIBUTIONS:
            d = fa["dist"][dist]
            r = one["ratios"][dist]
            t_us = f"{th['dist'][dist]['sec'] * 1e6:9.0f}" if "dist" in th else f"{'-':>9s}"
            x_t = f"{r['torch']:7.2f}x" if r["torch"] is not None else f"{'-':>8s}"
            lines.append(f"  {dist:8s} {d['unique_rows']:7.0f} {d['sparse']['sec'] * 1e6:10.0f} "
                         f"{d['floor']['sec'] * 1e6:9.0f} {t_us} {r['floor']:7.2f}x {x_t} "
                         f"{r['dense']:7.1f}x")
    lines.append("")
    lines.append("Targets (ratios from one run; x floor = floor time / sparse time):")
    for key, what in (("floor", "vs the floor kernel"), ("torch", "vs torch SparseAdam"),
                      ("dense", "vs a dense fused Adam step")):
        for dist in DISTRIBUTIONS:
            got = [one["ratios"][dist][key] for one in res["runs"]]
            got = [g for g in got if g is not None]
            if not got:
                status, shown = "not measured", "-"
            else:
                shown = ", ".join(f"{g:.2f}x" for g in got)
                status = "met" if all(g >= TARGETS[key] for g in got) else (
                    "met in some runs" if any(g >= TARGETS[key] for g in got) else "NOT MET")
            lines.append(f"  {what + ', ' + dist:42s} >= {TARGETS[key]:<5g}x  {shown:>24s}  "
                         f"{status}")
    return "\n".join(lines)


def main(rows=None, dim=None, k=None, threads=None, quick=False, runs=1, json_out=None,
         peers=("torch",)):
    res = run(rows=rows, dim=dim, k=k, threads=threads, quick=quick, runs=runs, peers=peers)
    if json_out == "-":
        print(json.dumps(res, indent=1))
    else:
        print(format_report(res))
        if json_out:
            with open(json_out, "w") as f:
                json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "worker":
        impl, spec = sys.argv[2], json.loads(sys.argv[3])
        print(json.dumps(_WORKERS[impl](spec)))
