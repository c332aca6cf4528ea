"""Low-precision Adam layouts against the float32 step and against their own byte floors.

For each size, every layout's buffers are allocated, then the steps and floor kernels of
all layouts are timed *interleaved* in rounds (so that machine load hits all of them
alike); each time is the median over the rounds. Ratios are what to read; absolute
times depend on the machine and its load.

    python3 scripts/bench_lowp.py                 # 1e7 and 1e8 (about 7 GB at 1e8)
    python3 scripts/bench_lowp.py --sizes 1e7 --rounds 15 --json out/lowp.json

Besides wall time, the CPU time of the process (both threads) is recorded per call:
on a machine shared with other jobs it is the less disturbed measure of the work a
kernel does (memory stalls count as CPU time), reported as cpu:floor and cpu:fp32.

Targets (issue 13, at 1e8): bfloat16 state >= 1.30 x the float32-state step, int8 state
>= 1.50 x, bfloat16 params + grads + state >= 1.70 x; each >= 0.90 x its own floor.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastadam as fa  # noqa: E402
from fastadam import lowp  # noqa: E402
from fastadam.kernels.floor import floor_step  # noqa: E402

# name: (param dtype, state_dtype, init kwargs, rounding, bytes moved per parameter)
LAYOUTS = {
    "float32 state": ("float32", "float32", {}, "nearest", 28),
    "bfloat16 state": ("float32", "bfloat16", {}, "nearest", 20),
    "int8 state": ("float32", "int8", {}, "nearest", 16),
    "bf16 p+g+state, nearest": ("bfloat16", "bfloat16", {}, "nearest", 14),
    "bf16 p+g+state, stochastic": ("bfloat16", "bfloat16", {}, "stochastic", 14),
    "bf16 p+g+state, compensation": ("bfloat16", "bfloat16", {"compensation": True},
                                     "nearest", 18),
    "bf16 p+g+state, master": ("bfloat16", "bfloat16", {"master_weights": True},
                               "nearest", 20),
    "bf16 p+g, int8 state, stochastic": ("bfloat16", "int8", {}, "stochastic", 10),
}
TARGETS = {"bfloat16 state": 1.30, "int8 state": 1.50, "bf16 p+g+state, nearest": 1.70,
           "bf16 p+g+state, stochastic": 1.70}


def _make(name, n, rng):
    import ml_dtypes
    pdt, sdt, kw, rounding, _ = LAYOUTS[name]
    dt = np.float32 if pdt == "float32" else ml_dtypes.bfloat16
    p = rng.standard_normal(n, np.float32).astype(dt)
    g = (1e-3 * rng.standard_normal(n, np.float32)).astype(dt)
    if sdt == "float32" and pdt == "float32":
        m = (1e-2 * rng.standard_normal(n, np.float32))
        v = (1e-3 + 1e-3 * rng.random(n, np.float32))

        def step():
            fa.adam_step(p, g, m, v, step=10, lr=1e-3)

        def floor():
            floor_step(p, g, m, v)
        return step, floor, 8.0
    st = lowp.init_lowp_state(p, state_dtype=sdt, **kw)
    fa.adam_step_lowp(p, g, st, step=1, lr=1e-3, rounding=rounding)   # non-zero state

    def step():
        fa.adam_step_lowp(p, g, st, step=10, lr=1e-3, rounding=rounding, seed=1)

    def floor():
        lowp.floor_lowp(p, g, st, rounding=rounding)
    return step, floor, lowp.state_bytes_per_param(st, n)


def run(sizes, rounds, names):
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "threads": fa.get_num_threads(), "layer": fa.threading_layer(),
                       "loadavg_before": os.getloadavg()}, "sizes": {}}
    rng = np.random.default_rng(0)
    for n in sizes:
        fns = {}
        for name in names:
            step, floor, sbytes = _make(name, n, rng)
            step(), floor()                         # compile, page faults
            fns[name] = (step, floor, sbytes)
        times = {name: {"step": [], "floor": [], "step_cpu": [], "floor_cpu": []}
                 for name in names}
        for r in range(rounds):
            for name in names:                      # interleaved: load hits all alike
                for kind, fn in (("step", fns[name][0]), ("floor", fns[name][1])):
                    c0 = time.process_time()
                    t0 = time.perf_counter()
                    fn()
                    times[name][kind].append(time.perf_counter() - t0)
                    times[name][kind + "_cpu"].append(time.process_time() - c0)
            print(f"  n={n:.0e} round {r + 1}/{rounds}", file=sys.stderr, flush=True)
        res = {}
        base = float(np.median(times[names[0]]["step"]))
        base_cpu = float(np.median(times[names[0]]["step_cpu"]))
        for name in names:
            s, f = float(np.median(times[name]["step"])), float(np.median(times[name]["floor"]))
            sc = float(np.median(times[name]["step_cpu"]))
            fc = float(np.median(times[name]["floor_cpu"]))
            res[name] = {"step_ms": 1e3 * s, "floor_ms": 1e3 * f, "of_floor": f / s,
                         "vs_float32_step": base / s, "bytes_moved": LAYOUTS[name][4],
                         "step_cpu_ms": 1e3 * sc, "floor_cpu_ms": 1e3 * fc,
                         "cpu_of_floor": fc / sc, "cpu_vs_float32_step": base_cpu / sc,
                         "state_bytes_per_param": fns[name][2],
                         "step_min_ms": 1e3 * min(times[name]["step"]),
                         "floor_min_ms": 1e3 * min(times[name]["floor"])}
        out["sizes"][str(n)] = res
        del fns
    out["machine"]["loadavg_after"] = os.getloadavg()
    return out


def report(out):
    m = out["machine"]
    lines = [f"machine: {m['platform']}, {m['cpus']} cpus, {m['threads']} threads ({m['layer']}); "
             f"load average before {m['loadavg_before'][0]:.1f}, after {m['loadavg_after'][0]:.1f} "
             "(other jobs were running: read the ratios, not the times)"]
    for n, res in out["sizes"].items():
        lines.append(f"\nn = {float(n):.0e}")
        lines.append(f"{'layout':34s} {'B/param':>7s} {'state B':>7s} {'step ms':>8s} "
                     f"{'floor ms':>8s} {'of floor':>8s} {'vs fp32':>8s} "
                     f"{'cpu:floor':>9s} {'cpu:fp32':>8s}  target (wall)")
        for name, r in res.items():
            tgt = TARGETS.get(name)
            verdict = ""
            if tgt is not None:
                ok = r["vs_float32_step"] >= tgt and r["of_floor"] >= 0.90
                verdict = f">= {tgt:.2f}x, >= 0.90 floor: {'met' if ok else 'NOT met'}"
            lines.append(f"{name:34s} {r['bytes_moved']:7d} {r['state_bytes_per_param']:7.2f} "
                         f"{r['step_ms']:8.2f} {r['floor_ms']:8.2f} {r['of_floor']:8.2f} "
                         f"{r['vs_float32_step']:8.2f} {r['cpu_of_floor']:9.2f} "
                         f"{r['cpu_vs_float32_step']:8.2f}  {verdict}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e7,1e8")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--layouts", default=";".join(LAYOUTS),
                    help="semicolon-separated subset of: " + "; ".join(LAYOUTS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    names = [s.strip() for s in args.layouts.split(";")]
    if names[0] != "float32 state":
        names = ["float32 state"] + [x for x in names if x != "float32 state"]
    out = run(sizes, args.rounds, names)
    print(report(out))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
