#!/usr/bin/env python
"""Where a parallel float32 Adam step's time goes: which thread runs each block, on which
CPU, when it starts and how long it takes, launch after launch.

The kernels below are the shipped parallel loop (``prange`` over ``config.BLOCK``-element
blocks, each block the shared ``loop.update`` of plain Adam; and the floor kernel's
loop), with a time stamp (the CPU's time-stamp counter) and the CPU number taken at the
start and end of every block. For each kernel the script reports:

* how often the second thread ran any block at all ("worker joined"), and when its first
  block started, counted from the kernel's entry ("arrival");
* the kernel's time from entry to the end of its loop, when the worker joined and when
  the calling thread ran every block itself;
* the time per block, for the calling thread alone, the calling thread with the worker
  running, and the worker (whose blocks were last touched by the other core);
* whether the two threads ran on different CPUs;
* the serial kernel on the same buffers, for reference.

It answers whether a parallel launch is slow because of the work (blocks slower than
serial), the partition (the last thread's share), or because the second thread was not
there. x86-64 only (the time-stamp counter and ``rdtscp``'s CPU number). Interleave it
with nothing else you want to time; on a shared machine say so when quoting it.

    PYTHONPATH=. python scripts/launch_timeline.py [--n 1e5] [--launches 2000] [--json FILE]
"""
import argparse
import json
import platform
import sys
import time

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from fastadam import config
from fastadam.config import BLOCK, JIT_OPTIONS
from fastadam.kernels import adam as A
from fastadam.kernels import registry
from fastadam.kernels.floor import _touch
from fastadam.kernels.loop import update
from fastadam.kernels.spec import N_SCALARS, S_GRAD_SCALE

ADAM = registry.get("adam").id
_OPT = dict(JIT_OPTIONS, cache=False)
_I32, _I64 = ir.IntType(32), ir.IntType(64)


@intrinsic
def _tsc(typingctx):
    """The time-stamp counter (llvm.readcyclecounter: rdtsc on x86)."""
    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.readcyclecounter", [],
                                              ir.FunctionType(_I64, []))
        return builder.call(fn, [])
    return types.int64(), codegen


@intrinsic
def _cpu(typingctx):
    """The CPU this thread runs on (rdtscp's TSC_AUX: Linux stores the CPU number in its
    low 12 bits)."""
    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic(
            "llvm.x86.rdtscp", [], ir.FunctionType(ir.LiteralStructType([_I64, _I32]), []))
        aux = builder.extract_value(builder.call(fn, []), 1)
        return builder.zext(builder.and_(aux, ir.Constant(_I32, 0xFFF)), _I64)
    return types.int64(), codegen


@njit(**_OPT)
def _now():
    return _tsc()


@njit(parallel=True, **_OPT)
def _timed_parallel(p, g, m, v, sc, rec, adam_step):
    """rec[b] = (thread slot, start, end, cpu) of block b, times from kernel entry; returns
    the time from entry to the end of the loop. The loop is flat_parallel's."""
    n = p.shape[0]
    t0 = _tsc()
    for b in prange((n + BLOCK - 1) // BLOCK):
        s = _tsc()
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        if adam_step:
            update(ADAM, A.PLAIN, 2, 0, False, False, p[lo:hi], g[lo:hi], m[lo:hi],
                   v[lo:hi], v[:0], v[:0], sc)
        else:
            _touch(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi])
        rec[b, 0] = numba.get_thread_id()
        rec[b, 1] = s - t0
        rec[b, 2] = _tsc() - t0
        rec[b, 3] = _cpu()
    return _tsc() - t0


@njit(**_OPT)
def _timed_serial(p, g, m, v, sc, adam_step):
    t0 = _tsc()
    if adam_step:
        update(ADAM, A.PLAIN, 2, 0, False, False, p, g, m, v, v[:0], v[:0], sc)
    else:
        _touch(p, g, m, v)
    return _tsc() - t0


def tsc_per_us():
    _now()
    t, a = time.perf_counter(), _now()
    time.sleep(0.2)
    return (_now() - a) / ((time.perf_counter() - t) * 1e6)


def buffers(n):
    rng = np.random.default_rng(0)
    f = np.float32
    p = rng.standard_normal(n).astype(f)
    g = (1e-3 * rng.random(n)).astype(f)
    m = (1e-2 * rng.standard_normal(n)).astype(f)
    v = (1e-3 + 1e-3 * rng.random(n)).astype(f)
    sc = np.zeros(N_SCALARS, f)
    sc[S_GRAD_SCALE] = 1.0
    sc[[A.S_B1, A.S_OMB1, A.S_B2, A.S_OMB2, A.S_STEP, A.S_EPS]] = (
        0.9, 0.1, 0.999, 0.001, 1e-4, 1e-8)
    return p, g, m, v, sc


def _pct(x, q):
    return round(float(np.percentile(x, q)), 2) if len(x) else None


def timeline(n, launches, adam_step, per_us):
    """Summary (dict, microseconds) of ``launches`` instrumented parallel launches, with
    the serial kernel interleaved (one serial run after every parallel one)."""
    p, g, m, v, sc = buffers(n)
    nb = (n + BLOCK - 1) // BLOCK
    rec = np.zeros((nb, 4), np.int64)
    _timed_parallel(p, g, m, v, sc, rec, adam_step)
    _timed_serial(p, g, m, v, sc, adam_step)
    joined, alone, serial = [], [], []
    arrival, blk_alone, blk_master, blk_worker, cpus_differ = [], [], [], [], 0
    for _ in range(launches):
        total = _timed_parallel(p, g, m, v, sc, rec, adam_step) / per_us
        serial.append(_timed_serial(p, g, m, v, sc, adam_step) / per_us)
        dur = (rec[:, 2] - rec[:, 1]) / per_us
        full = np.arange(nb) < nb - 1 if n % BLOCK else np.ones(nb, bool)  # whole blocks
        worker = rec[:, 0] != 0
        if worker.any():
            joined.append(total)
            arrival.append(rec[worker, 1].min() / per_us)
            blk_master += list(dur[~worker & full])
            blk_worker += list(dur[worker & full])
            cpus_differ += len(set(rec[worker, 3])) == 1 and \
                not set(rec[worker, 3]) & set(rec[~worker, 3])
        else:
            alone.append(total)
            blk_alone += list(dur[full])
    return {
        "n": n, "kernel": "adam" if adam_step else "floor", "blocks": nb,
        "threads": numba.get_num_threads(), "layer": numba.threading_layer(),
        "launches": launches, "worker_joined": len(joined),
        "worker_on_other_cpu": int(cpus_differ),
        "arrival_us_p10_p50_p90": [_pct(arrival, q) for q in (10, 50, 90)],
        "parallel_us_joined_p10_p50": [_pct(joined, q) for q in (10, 50)],
        "parallel_us_alone_p10_p50": [_pct(alone, q) for q in (10, 50)],
        "serial_us_p10_p50": [_pct(serial, q) for q in (10, 50)],
        "block_us_alone_p50": _pct(blk_alone, 50),
        "block_us_master_with_worker_p50": _pct(blk_master, 50),
        "block_us_worker_p50": _pct(blk_worker, 50),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e5)
    ap.add_argument("--launches", type=int, default=2000)
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args(argv)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        print("launch_timeline: x86-64 only (time-stamp counter, rdtscp)", file=sys.stderr)
        return 2
    config.ensure_threading()
    per_us = tsc_per_us()
    out = [timeline(int(a.n), a.launches, k, per_us) for k in (True, False)]
    for r in out:
        print(json.dumps(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
