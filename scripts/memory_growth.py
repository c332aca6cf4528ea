"""Measure resident memory (RSS, from /proc/self/statm) over many optimizer steps and
many optimizer constructions; print the growth. Usage:
    python scripts/memory_growth.py [steps] [constructions]
"""
import os
import sys

import numpy as np

import fastadam as fa


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_steps(opt, n):
    for _ in range(n):
        opt.step()


def construct(n, save_path=None):
    for i in range(n):
        params = [np.zeros(100, np.float32), np.zeros((10, 10))]
        opt = fa.AdamW(params, lr=1e-3, amsgrad=bool(i % 2))
        opt.step([np.ones(100, np.float32), np.ones((10, 10))])
        opt.load_state_dict(opt.state_dict())
        if save_path is not None:
            opt.save(save_path)
            opt.load(save_path)


def measure(steps=200_000, constructions=2_000, save_path=None):
    """(rss before, after steps, after constructions) in bytes, after a warm-up that
    compiles every kernel used and fills allocator pools."""
    params = [np.zeros(1000, np.float32), np.zeros(10)]
    opt = fa.Adam(params)
    for g in opt.grads:
        g[...] = 0.5
    run_steps(opt, 1000)
    construct(50, save_path)
    r0 = rss_bytes()
    run_steps(opt, steps)
    r1 = rss_bytes()
    construct(constructions, save_path)
    r2 = rss_bytes()
    return r0, r1, r2


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    constructions = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        r0, r1, r2 = measure(steps, constructions, os.path.join(d, "c.npz"))
    mb = 1 / 2**20
    print(f"RSS after warm-up:                 {r0 * mb:8.2f} MiB")
    print(f"after {steps} steps:           {r1 * mb:8.2f} MiB (growth {(r1 - r0) * mb:+.2f} MiB)")
    print(f"after {constructions} constructions+save/load: {r2 * mb:8.2f} MiB "
          f"(growth {(r2 - r1) * mb:+.2f} MiB)")


if __name__ == "__main__":
    main()
