"""Sparse Adam benchmark (the same as ``fastadam bench --sparse``): a float32 embedding
table, 4096 fresh indices per step (uniform and Zipf-skewed with duplicates);
fastadam.sparse_adam_step against its floor kernel, torch.optim.SparseAdam (including
its coalesce) and a dense fused Adam step over the whole table. Every ratio comes from
one run; with --runs N each run is shown.

    python scripts/bench_sparse.py                    # 1e6 x 64, 4096 indices
    python scripts/bench_sparse.py --threads 1 --runs 2
    python scripts/bench_sparse.py --rows 1e5 --dim 16 --k 512 --json out.json
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastadam import bench_sparse  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=lambda s: int(float(s)), default=None)
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--k", type=int, default=None, help="indices per step")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small table, short timings")
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args(argv)
    bench_sparse.main(rows=args.rows, dim=args.dim, k=args.k, threads=args.threads,
                      quick=args.quick, runs=args.runs, json_out=args.json,
                      peers=() if args.no_torch else ("torch",))


if __name__ == "__main__":
    main()
