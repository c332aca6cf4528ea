"""Step time of fastadam.distributed.ShardedOptimizer against the number of ranks, bytes
sent per step against the 2 x params x dtype-size that ZeRO-1 needs, and a projection
of step time on 8 and 64 nodes at 25 Gb/s from these measurements.

    python3 scripts/bench_distributed.py                  # ranks 1, 2, 3; a few sizes
    python3 scripts/bench_distributed.py --ranks 1 2 --sizes 1000000 --steps 10

The launcher runs itself under ``mpiexec -n R`` for each R (ranks beyond the core count
oversubscribe: the numbers then measure time-sharing, not scaling). Times are medians
over repeats of ``--steps`` steps, on rank 0, after a barrier; the machine's load is
printed with them because on a shared machine they are noisy.

Projection (see docs/distributed.md): with c the measured single-process time per
element of the fused step, S = P x dtype-size bytes of parameters, B the link bandwidth
and alpha the per-message latency, one sharded step on N nodes costs about

    T_shard(N) = c * P / N  +  2 (N - 1) / N * S / B  +  2 (N - 1) * alpha  (ring)

(reduce-scatter and all-gather, each sending (N - 1)/N * S per node), against
T_ddp(N) = c * P + 2 (N - 1) / N * S / B + 2 (N - 1) * alpha for plain data
parallelism (all-reduce the gradients, every node steps everything).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _median_time(fn, steps, repeat, barrier=None):
    times = []
    for _ in range(repeat):
        if barrier:
            barrier()
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        times.append((time.perf_counter() - t) / steps)
    return float(np.median(times))


def worker(args):
    import fastadam as fa
    from fastadam.distributed import ShardedOptimizer
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    dtype = np.dtype(args.dtype)
    for n in args.sizes:
        rng = np.random.default_rng(0)
        _, (p,) = fa.flatten([rng.standard_normal(n)], dtype)
        opt = ShardedOptimizer([p], fa.Adam, lr=1e-3)
        opt.grads[0][...] = rng.standard_normal(n).astype(dtype)
        for _ in range(3):
            opt.step()
        phases = {}

        def step():
            opt.step()
            for k, v in opt.last_step_times.items():
                phases[k] = phases.get(k, 0.0) + v

        t = _median_time(step, args.steps, args.repeat, comm.Barrier)
        total = args.steps * args.repeat
        row = {"ranks": size, "n": n, "dtype": dtype.name, "step_s": t,
               "phases_s": {k: v / total for k, v in phases.items()},
               "bytes": opt.comm_bytes, "zero1_bytes": 2 * n * dtype.itemsize}
        if size == 1:    # the plain single-process optimizer, no MPI at all
            q = p.copy()
            ref = fa.Adam([q], lr=1e-3)
            g = opt.grads[0].copy()
            for _ in range(3):
                ref.step([g])
            ref.grads[0][...] = g
            row["plain_step_s"] = _median_time(ref.step, args.steps, args.repeat)
        if rank == 0:
            print("ROW " + json.dumps(row), flush=True)
        del opt


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def project(c, P, itemsize, N, bandwidth, alpha):
    S = P * itemsize
    comm = 2 * (N - 1) / N * S / bandwidth + 2 * (N - 1) * alpha
    return c * P / N + comm, c * P + comm, comm


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1 << 17, 1 << 20, 1 << 22])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--bandwidth-gbit", type=float, default=25.0)
    ap.add_argument("--latency-us", type=float, default=20.0,
                    help="per-message latency assumed for the projection")
    ap.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="environment for the ranks, e.g. an MPI tuning variable such as "
                         "MPIR_CVAR_ALLGATHERV_INTRA_ALGORITHM=brucks (MPICH)")
    ap.add_argument("--json", help="write the measurements and projection here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    mpiexec = _mpiexec()
    if mpiexec is None:
        sys.exit("no mpiexec: pip install '.[mpi]'")
    load = os.getloadavg()
    print(f"# {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
          " (a shared machine: timings are noisy; compare within this run)")
    rows = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.update(kv.split("=", 1) for kv in args.env)
    if args.env:
        print(f"# rank environment: {' '.join(args.env)}")
    for r in args.ranks:
        cmd = [mpiexec, "-n", str(r), sys.executable, os.path.abspath(__file__), "--worker",
               "--dtype", args.dtype, "--steps", str(args.steps), "--repeat",
               str(args.repeat), "--sizes", *map(str, args.sizes)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if out.returncode:
            sys.exit(f"ranks={r} failed:\n{out.stdout}\n{out.stderr}")
        rows += [json.loads(line[4:]) for line in out.stdout.splitlines()
                 if line.startswith("ROW ")]
    print(f"\n{'params':>9} {'ranks':>5} {'step ms':>9} {'agree':>7} {'red-sc':>7} "
          f"{'local':>7} {'allgath':>7} {'sent MB':>8} {'2xPxs MB':>9} {'ratio':>6}")
    for row in rows:
        ph, b = row["phases_s"], row["bytes"]
        sent = sum(b.values())
        print(f"{row['n']:>9} {row['ranks']:>5} {1e3 * row['step_s']:>9.3f} "
              f"{1e3 * ph.get('agree', 0):>7.3f} {1e3 * ph.get('reduce_scatter', 0):>7.3f} "
              f"{1e3 * ph.get('local_step', 0):>7.3f} {1e3 * ph.get('allgather', 0):>7.3f} "
              f"{sent / 1e6:>8.3f} {row['zero1_bytes'] / 1e6:>9.3f} "
              f"{sent / row['zero1_bytes']:>6.3f}")
    plain = [r for r in rows if "plain_step_s" in r]
    for r in plain:
        print(f"# single process, no MPI: {r['n']} params: {1e3 * r['plain_step_s']:.3f} ms "
              f"per step (ShardedOptimizer on 1 rank: {1e3 * r['step_s']:.3f} ms)")
    proj = []
    if plain:
        big = max(plain, key=lambda r: r["n"])
        c = big["plain_step_s"] / big["n"]
        itemsize = np.dtype(args.dtype).itemsize
        B = args.bandwidth_gbit * 1e9 / 8
        alpha = args.latency_us * 1e-6
        print(f"\n# projection: c = {1e9 * c:.2f} ns/element (measured, {big['n']} "
              f"{args.dtype} params, one process), B = {args.bandwidth_gbit:g} Gb/s, "
              f"latency {args.latency_us:g} us per message, ring collectives")
        print(f"{'params':>14} {'nodes':>5} {'sharded ms':>11} {'of which comm':>14} "
              f"{'DDP-style ms':>13} {'1 node ms':>10} {'state MB/node':>14}")
        for P in (10**7, 10**8, 10**9):
            for N in (8, 64):
                t_sh, t_ddp, t_comm = project(c, P, itemsize, N, B, alpha)
                mem = 2 * P * itemsize / N / 1e6
                print(f"{P:>14,} {N:>5} {1e3 * t_sh:>11.2f} {1e3 * t_comm:>14.2f} "
                      f"{1e3 * t_ddp:>13.2f} {1e3 * c * P:>10.2f} {mem:>14.1f}")
                proj.append({"params": P, "nodes": N, "sharded_s": t_sh, "comm_s": t_comm,
                             "ddp_s": t_ddp, "one_node_s": c * P, "state_mb_per_node": mem})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load": load, "env": args.env, "rows": rows, "projection": proj}, f,
                      indent=1)


if __name__ == "__main__":
    main()
