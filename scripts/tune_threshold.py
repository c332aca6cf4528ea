#!/usr/bin/env python
"""Measure the serial and the parallel Adam kernel against buffer size and suggest
fastadam.config.PARALLEL_THRESHOLD (elements; env FASTADAM_PARALLEL_THRESHOLD).

A parallel launch costs microseconds (thread wake-up and join), so small buffers run
faster serially; the threshold is the size from which the parallel kernel wins at every
larger size measured. Both kernels are timed interleaved in one process, on the same
buffers, with the configured threads and threading layer, for the plain flat kernel
(functional API and flat buffers) and the table kernel (the object API over separate
arrays). Medians of many samples; rerun on a quiet machine for final numbers.

    PYTHONPATH=. python scripts/tune_threshold.py [--dtypes float32,float64] [--json FILE]
"""
import argparse
import json
import sys

import numpy as np

import fastadam as fa
from fastadam import config
from fastadam.bench import measure
from fastadam.kernels import registry
from fastadam.kernels.launch import build_launchers
from fastadam.kernels.memory import LENGTH
from fastadam.kernels.norms import split_blocks
from fastadam.kernels.spec import H_ALG, H_CLIP, H_LR, H_SIGN, N_GROUP_SCALARS, N_HYPER, N_SCALARS

SIZES = [2**k for k in range(11, 22)] + [3 * 2**k for k in range(10, 20)]
SIZES.sort()


def kernels_for(n, dtype):
    """{name: fn} for serial and parallel launches of the flat and table kernels."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(dtype)
    g = (1e-3 * rng.random(n)).astype(dtype)
    state = np.zeros((2, n), dtype)
    state[1] = 1e-3
    m, v = state[0].copy(), state[1].copy()
    adam = registry.get("adam")
    h = np.zeros(N_HYPER)
    h[[H_LR, H_SIGN, H_CLIP]] = (1e-3, 1.0, 1.0)
    h[H_ALG:H_ALG + 5] = (0.9, 0.999, 1e-8, 1.0, 0.0)
    hyper = h.reshape(1, -1)
    steps = np.array([10], np.int64)
    gscal = np.zeros((1, N_GROUP_SCALARS))
    sc = np.zeros((1, N_SCALARS), dtype)
    flat_s, flat_p, tab_s, tab_p = build_launchers(adam.id, 0, 2, 0, False, False)[:4]
    # Table kernels: the buffer as 4 separate chunks, gradients by data address.
    params = [p[i::4].copy() for i in range(4)]
    grads = [g[i::4].copy() for i in range(4)]
    plan = np.zeros((4, 5), np.int64)
    off = 0
    for k, (a, b) in enumerate(zip(params, grads)):
        plan[k] = (a.ctypes.data, b.ctypes.data, a.size, off, 0)
        off += a.size
    blocks = split_blocks(plan[:, LENGTH])
    forbid = np.zeros((0, 2), np.int64)
    keep = (params, grads)  # the plan holds raw addresses: keep the arrays alive

    def locked(fn, *args):
        def call():
            with config.launch_lock():
                fn(*args)
        return call

    return keep, {
        "flat serial": lambda: flat_s(p, g, m, v, v[:0], p[:0], h, 10, gscal[0]),
        "flat parallel": locked(flat_p, p, g, m, v, v[:0], p[:0], h, 10, gscal[0]),
        "table serial": lambda: tab_s(plan, False, blocks, forbid, state, hyper, steps, gscal, sc,
                                      False),
        "table parallel": locked(tab_p, plan, False, blocks, forbid, state, hyper, steps, gscal, sc,
                                 False),
    }


def crossover(rows, serial, parallel):
    """Smallest size from which ``parallel`` is faster at every larger measured size."""
    best = None
    for r in reversed(rows):
        if r[parallel] < r[serial]:
            best = r["size"]
        else:
            break
    return best


def modelled_crossover(rows, threads):
    """Crossover predicted from two robust quantities, for when the machine is too busy
    for the measured one (a busy core makes every parallel launch wait): the launch
    overhead (parallel minus serial time for buffers of one block, where the parallel
    kernel cannot split the work) and the serial cost per element in cache. With an
    ideal split over T threads, parallel wins when c*n*(1 - 1/T) > overhead."""
    small = [r["flat parallel"] - r["flat serial"] for r in rows if r["size"] < config.BLOCK]
    mid = [r["flat serial"] / r["size"] for r in rows if config.BLOCK <= r["size"] <= 2**17]
    if not small or not mid or threads < 2:
        return None
    overhead, c = float(np.median(small)), float(np.median(mid))   # us, us/element
    n = overhead / (c * (1 - 1 / threads))
    return {"overhead_us": overhead, "ns_per_elem": 1e3 * c, "n": int(round(n, -3))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--json", default=None, help="also write the measurements to FILE")
    args = ap.parse_args(argv)
    if fa.get_num_threads() < 2:
        print("only one thread: the parallel kernel cannot win; nothing to tune",
              file=sys.stderr)
        return 1
    print(f"threading layer {fa.threading_layer()}, {fa.get_num_threads()} threads, "
          f"BLOCK {config.BLOCK}, current PARALLEL_THRESHOLD {config.PARALLEL_THRESHOLD}")
    out = {"threading_layer": fa.threading_layer(), "threads": fa.get_num_threads(),
           "block": config.BLOCK, "results": {}}
    suggestions = []
    for dtype in args.dtypes.split(","):
        rows = []
        print(f"\n{dtype}: median us/step (serial / parallel), speed-up of parallel")
        print(f"{'size':>9s} {'flat ser':>9s} {'flat par':>9s} {'x':>5s} "
              f"{'tab ser':>9s} {'tab par':>9s} {'x':>5s}")
        for n in SIZES:
            keep, fns = kernels_for(n, dtype)
            r = measure(fns, n)
            row = {"size": n, **{k: r[k]["sec"] * 1e6 for k in fns}}
            rows.append(row)
            print(f"{n:>9d} {row['flat serial']:>9.2f} {row['flat parallel']:>9.2f} "
                  f"{row['flat serial'] / row['flat parallel']:>5.2f} "
                  f"{row['table serial']:>9.2f} {row['table parallel']:>9.2f} "
                  f"{row['table serial'] / row['table parallel']:>5.2f}", flush=True)
            del keep
        model = modelled_crossover(rows, fa.get_num_threads())
        if model:
            print(f"{dtype}: launch overhead {model['overhead_us']:.2f} us (parallel - serial "
                  f"below one block), serial {model['ns_per_elem']:.3f} ns/element in cache; "
                  f"on an idle machine parallel should win from ~{model['n']} elements")
        cf = crossover(rows, "flat serial", "flat parallel")
        ct = crossover(rows, "table serial", "table parallel")
        print(f"{dtype}: parallel wins from {cf} elements (flat), {ct} (table)")
        out["results"][dtype] = {"rows": rows, "crossover_flat": cf, "crossover_table": ct,
                                 "model": model}
        suggestions += [c for c in (cf, ct) if c]
    if suggestions:
        # Elements, not bytes: one threshold for both dtypes. Take the median crossover
        # so a single noisy size does not decide it.
        s = int(np.median(suggestions))
        print(f"\nsuggested PARALLEL_THRESHOLD = {s} elements "
              f"(crossovers measured: {sorted(suggestions)})")
        out["suggested"] = s
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
