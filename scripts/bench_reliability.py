"""Cost of nonfinite="skip" (the finiteness check) and of max_grad_norm clipping, as a
ratio to the plain step, measured in one run (interleaved samples, medians).

    python scripts/bench_reliability.py [--sizes 1e4,1e6,1e7] [--dtype float32]
"""
import argparse
import sys
import time

import numpy as np

import fastadam as fa


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e4,1e6,1e7")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--seconds", type=float, default=2.0, help="sampling time per size")
    args = ap.parse_args()
    dtype = np.dtype(args.dtype)
    print(f"threading layer {fa.threading_layer()}, {fa.get_num_threads()} threads, {dtype}")
    print(f"{'size':>8} {'plain us':>10} {'skip x':>8} {'clip x':>8} {'skip+clip x':>12}")
    for n in (int(float(s)) for s in args.sizes.split(",")):
        rng = np.random.default_rng(0)
        variants = {
            "plain": {},
            "skip": dict(nonfinite="skip"),
            "clip": dict(max_grad_norm=1.0),
            "skip+clip": dict(nonfinite="skip", max_grad_norm=1.0),
        }
        opts = {}
        for name, kw in variants.items():
            flat, views = fa.flatten([rng.standard_normal(n).astype(dtype)])
            opt = fa.Adam(views, lr=1e-4, **kw)
            opt.grads[0][...] = 1e-3 * rng.standard_normal(n)
            for _ in range(3):
                opt.step()          # compile and fault in
            opts[name] = opt
        inner = max(1, int(2e5 // n))
        samples = {name: [] for name in opts}
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end or len(samples["plain"]) < 5:
            for name, opt in opts.items():      # interleaved: same machine state
                t0 = time.perf_counter()
                for _ in range(inner):
                    opt.step()
                samples[name].append((time.perf_counter() - t0) / inner)
        med = {k: float(np.median(v)) for k, v in samples.items()}
        print(f"{n:>8.0e} {med['plain'] * 1e6:>10.1f} {med['skip'] / med['plain']:>8.2f} "
              f"{med['clip'] / med['plain']:>8.2f} {med['skip+clip'] / med['plain']:>12.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
