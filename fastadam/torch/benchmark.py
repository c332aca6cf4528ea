"""optimizer.step() time of fastadam.torch.Adam against torch.optim.Adam(fused=True).

Used by ``fastadam bench --torch``, asv (asv_benches/benchmarks/bench_torch.py) and
scripts/train_torch.py. Models are lists of float32 parameters of equal size (``n_params``
split over ``n_tensors``); every step gets fresh gradient tensors, as after
``zero_grad()`` (set_to_none) and a backward pass. The two optimizers take turns step by
step, so a busy machine slows both alike; the medians and their ratio are reported.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from . import Adam

#: (parameters, tensors): the issue's targets are >= 2x torch fused at 1e5-1e6 parameters
#: in 10+ tensors and >= 1x from 1e7.
DEFAULT_CASES = ((10**5, 10), (10**6, 10), (10**6, 100), (10**7, 100))


def _model(n_params, n_tensors, seed):
    g = torch.Generator().manual_seed(seed)
    size = max(1, n_params // n_tensors)
    return [torch.randn(size, generator=g).requires_grad_() for _ in range(n_tensors)]


def step_times(n_params, n_tensors, steps=30, warmup=3):
    """Median seconds of one step() for fastadam.torch.Adam and torch fused Adam."""
    ours, theirs = _model(n_params, n_tensors, 0), _model(n_params, n_tensors, 0)
    opts = [(Adam(ours, lr=1e-3), ours), (torch.optim.Adam(theirs, lr=1e-3, fused=True), theirs)]
    grads = [torch.randn_like(p) * 1e-3 for p in ours]
    times = [[], []]
    for t in range(warmup + steps):
        order = (0, 1) if t % 2 == 0 else (1, 0)
        for k in order:
            opt, ps = opts[k]
            for p, g in zip(ps, grads):
                p.grad = g.clone()          # a fresh tensor, like a backward pass makes
            t0 = time.perf_counter()
            opt.step()
            dt = time.perf_counter() - t0
            if t >= warmup:
                times[k].append(dt)
    return float(np.median(times[0])), float(np.median(times[1]))


def run(cases=DEFAULT_CASES, steps=30, quick=False, threads=None):
    """Rows {n_params, n_tensors, threads, fastadam_s, torch_fused_s, ratio} (ratio > 1:
    fastadam faster). ``threads``: for both torch and numba (default: as configured)."""
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
            ours, fused = step_times(n, k, steps=steps)
            rows.append(dict(n_params=n, n_tensors=k, threads=torch.get_num_threads(),
                             numba_threads=fastadam.get_num_threads(), fastadam_s=ours,
                             torch_fused_s=fused, ratio=fused / ours))
    finally:
        torch.set_num_threads(old[0])
        fastadam.set_num_threads(old[1])
    return rows


def format_rows(rows):
    import numba
    head = (f"optimizer.step(): fastadam.torch.Adam vs torch.optim.Adam(fused=True), float32, "
            f"fresh grads each step (torch {torch.__version__}, numba {numba.__version__})")
    lines = [head, f"{'params':>10} {'tensors':>8} {'threads':>8} {'fastadam':>12} "
             f"{'torch fused':>12} {'speed-up':>9}"]
    for r in rows:
        lines.append(f"{r['n_params']:>10.0e} {r['n_tensors']:>8d} {r['threads']:>8d} "
                     f"{r['fastadam_s'] * 1e6:>10.0f}us {r['torch_fused_s'] * 1e6:>10.0f}us "
                     f"{r['ratio']:>8.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    print(format_rows(run(threads=int(sys.argv[1]) if len(sys.argv) > 1 else None)),
          flush=True)
