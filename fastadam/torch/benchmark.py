"""optimizer.step() time of fastadam.torch.Adam against torch.optim.Adam(fused=True).

Used by ``fastadam bench --torch``, asv (asv_benches/benchmarks/bench_torch.py) and
scripts/train_torch.py. Models are lists of float32 parameters of equal size (``n_params``
split over ``n_tensors``); every step gets fresh gradient tensors, as after
``zero_grad()`` (set_to_none) and a backward pass, right after a parallel torch op (so
torch's OpenMP workers are spinning, as after backward). The optimizers take turns step
by step, so a busy machine slows all alike; the medians and their ratios are reported.
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import torch

from . import Adam, set_step_threads

#: (parameters, tensors): the issue's targets are >= 2x torch fused at 1e5-1e6 parameters
#: in 10+ tensors and >= 1x from 1e7.
DEFAULT_CASES = ((10**5, 10), (10**6, 10), (10**6, 100), (10**7, 100))


def _model(n_params, n_tensors, seed):
    g = torch.Generator().manual_seed(seed)
    size = max(1, n_params // n_tensors)
    return [torch.randn(size, generator=g).requires_grad_() for _ in range(n_tensors)]


def _policy_label(policy):
    return {"auto": "auto", "fixed": "all threads"}.get(policy, f"{policy} thread(s)")


def step_times(n_params, n_tensors, steps=36, warmup=3, policies=("auto",)):
    """Median seconds of one step() for fastadam.torch.Adam under each thread policy of
    ``policies`` ("auto", "fixed": always numba's thread count, as before the "auto"
    policy, or an int; see fastadam.torch.set_step_threads), then torch fused Adam. All
    take turns step by step (every order in turn), every one on its own copy of the
    model, and every step follows a parallel torch op (2**20 elements, untimed) and fresh
    gradients, as in training after backward(): torch's OpenMP workers are spinning
    when each step starts, whichever optimizer stepped before. The last value is the
    floor: the faster of the floor kernel on one thread and on all of numba's (after
    releasing torch's OpenMP pool, as the "auto" policy does for long steps), over one
    flat buffer of ``n_params`` (no optimizer moving these bytes can be faster, so torch
    fused / floor is the largest speed-up physics allows here)."""
    import fastadam
    from . import _threads
    saved = _threads.get_step_threads()
    models = [_model(n_params, n_tensors, 0) for _ in range(len(policies) + 1)]
    opts = [Adam(ps, lr=1e-3) for ps in models[:-1]]
    opts.append(torch.optim.Adam(models[-1], lr=1e-3, fused=True))
    settings = [fastadam.get_num_threads() if pol == "fixed" else pol for pol in policies]
    grads = [torch.randn_like(p) * 1e-3 for p in models[0]]
    work, work_out = torch.ones(1 << 20), torch.empty(1 << 20)
    # the floor kernel (kernels/floor.py) over one flat buffer of the model's size, one
    # thread and all of numba's (after releasing torch's spinning pool, timed): the same
    # bytes with trivial math, after the same torch op and a fresh gradient
    from fastadam.kernels.floor import floor_parallel, floor_serial
    flat = [np.zeros(n_params, np.float32) for _ in range(3)]
    flat_g = torch.cat([g.reshape(-1) for g in grads])
    floors = [floor_serial, floor_parallel]
    times = [[] for _ in range(len(opts) + len(floors))]
    k_all = len(opts) + len(floors)
    # every order in turn: each optimizer follows each other one equally often
    orders = list(itertools.permutations(range(k_all)))
    try:
        for t in range(warmup + steps):
            for k in orders[t % len(orders)]:
                if k < len(settings):
                    set_step_threads(settings[k])
                torch.mul(work, 1.0, out=work_out)  # ends with a parallel region, as
                if k >= len(opts):                  # backward does (torch's workers spin)
                    g = flat_g.clone().numpy()
                    parallel = k - len(opts) == 1
                    t0 = time.perf_counter()
                    if parallel:              # as the "auto" policy's long steps do
                        _threads.release_torch_pool()
                    floors[k - len(opts)](flat[0], g, flat[1], flat[2])
                    dt = time.perf_counter() - t0
                    if t >= warmup:
                        times[k].append(dt)
                    continue
                for p, g in zip(models[k], grads):
                    p.grad = g.clone()          # a fresh tensor, like a backward pass makes
                t0 = time.perf_counter()
                opts[k].step()
                dt = time.perf_counter() - t0
                if t >= warmup:
                    times[k].append(dt)
    finally:
        set_step_threads(saved["threads"], release_torch_pool=saved["release_torch_pool"])
    med = [float(np.median(ts)) for ts in times]
    return med[:len(opts)] + [min(med[len(opts):])]


def run(cases=DEFAULT_CASES, steps=36, quick=False, threads=None, policies=("fixed", "auto")):
    """Rows {n_params, n_tensors, threads, numba_threads, fastadam_s, torch_fused_s,
    ratio, floor_s, ceiling, policies}: ``ceiling`` = torch fused / floor, the largest
    speed-up any optimizer could show in this measurement; ``fastadam_s`` and ``ratio`` (> 1: fastadam faster) under the last
    policy of ``policies`` (the default "auto"), ``policies`` {label: (seconds, ratio)}
    for each. ``threads``: for both torch and numba (default: as configured)."""
    import fastadam
    if quick:
        cases, steps = ((10**4, 10), (10**5, 10)), 5
    old = torch.get_num_threads(), fastadam.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
        fastadam.set_num_threads(threads)
    try:
        rows = []
        for n, k in cases:
            *ours, fused, floor = step_times(n, k, steps=steps, policies=policies)
            rows.append(dict(n_params=n, n_tensors=k, threads=torch.get_num_threads(),
                             numba_threads=fastadam.get_num_threads(),
                             fastadam_s=ours[-1], torch_fused_s=fused, ratio=fused / ours[-1],
                             floor_s=floor, ceiling=fused / floor,
                             policies={_policy_label(p): (t, fused / t)
                                       for p, t in zip(policies, ours)}))
    finally:
        torch.set_num_threads(old[0])
        fastadam.set_num_threads(old[1])
    return rows


def format_rows(rows):
    import os

    import numba
    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                    if k in os.environ) or "default OpenMP wait policy"
    head = (f"optimizer.step(): fastadam.torch.Adam vs torch.optim.Adam(fused=True), float32, "
            f"fresh grads each step (torch {torch.__version__}, numba {numba.__version__}, "
            f"{env})")
    pols = list(rows[0]["policies"]) if rows else []
    lines = [head, f"{'params':>10} {'tensors':>8} {'threads':>8} "
             + " ".join(f"{'fastadam ' + p:>22}" for p in pols)
             + f" {'torch fused':>12} {'floor':>10} " + " ".join(f"{'speed-up ' + p:>22}" for p in pols)
             + f" {'ceiling':>8}"]
    for r in rows:
        lines.append(f"{r['n_params']:>10.0e} {r['n_tensors']:>8d} {r['threads']:>8d} "
                     + " ".join(f"{t * 1e6:>20.0f}us" for t, _ in r["policies"].values())
                     + f" {r['torch_fused_s'] * 1e6:>10.0f}us {r['floor_s'] * 1e6:>8.0f}us "
                     + " ".join(f"{x:>21.2f}x" for _, x in r["policies"].values())
                     + f" {r['ceiling']:>7.2f}x")
    lines.append("(floor: the floor kernel moving the step's bytes over one flat buffer, the "
                 "faster of 1 and all threads (pool released), timed in turn with the others; ceiling = "
                 "torch fused / floor, the largest speed-up the memory system allows here)")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    print(format_rows(run(threads=int(sys.argv[1]) if len(sys.argv) > 1 else None)),
          flush=True)
