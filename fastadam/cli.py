"""Command line: ``fastadam bench`` (how fast on this machine) and ``fastadam info``.

Also reachable as ``python -m fastadam ...``."""
from __future__ import annotations

import argparse
import json
import sys


def _size(text):
    try:
        return int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of parameters like 1e6, "
                                         f"got {text!r}") from None


def _sizes(text):
    out = [_size(x) for x in text.split(",") if x.strip()]
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes >= 1 like "
                                         f"1e3,1e5, got {text!r}")
    return out


def _parser():
    ap = argparse.ArgumentParser(prog="fastadam", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="benchmark the Adam step against the floor kernel, "
                       "NumPy and PyTorch fused Adam on this machine",
                       description="Benchmark fastadam's Adam step on this machine: the "
                       "floor kernel (same bytes, trivial math), fastadam float32/float64, "
                       "NumPy and torch fused Adam (each in its own process), the object "
                       "API, many arrays, threads, cold start; then check the targets of "
                       "docs/performance.md (in the fastadam repository). Progress goes "
                       "to stderr.")
    b.add_argument("--sizes", type=_sizes, default=None,
                   help="comma-separated parameter counts (default: 1e3,1e4,...,up to "
                   "--max-size)")
    b.add_argument("--max-size", type=_size, default=None,
                   help="largest default size (default 1e7; 1e8 float32 needs 1.6 GB "
                   "per implementation, float64 3.2 GB)")
    b.add_argument("--dtypes", default="float32,float64",
                   help="comma-separated dtypes (default float32,float64)")
    b.add_argument("--peers", default="numpy,torch",
                   help="comma-separated peers to run, from numpy,torch,deepspeed "
                   "(DeepSpeedCPUAdam, float32 only, when deepspeed is installed); '' "
                   "for none (default numpy,torch)")
    b.add_argument("--threads", type=int, default=None,
                   help="threads for fastadam and torch (default: all cores)")
    b.add_argument("--runs", type=int, default=1,
                   help="run every implementation this many times, taking turns, and "
                   "report the median run (3 steadies a busy machine; default 1)")
    b.add_argument("--no-cold-start", action="store_true",
                   help="skip the cold-start measurement (fresh processes)")
    b.add_argument("--quick", action="store_true",
                   help="tiny sizes, short timings (for smoke tests; numbers are rough)")
    b.add_argument("--json", metavar="FILE", nargs="?", const="-", default=None,
                   help="write results as JSON to FILE (or stdout with no FILE, instead "
                   "of the table)")
    b.add_argument("--plot", metavar="FILE.png", default=None,
                   help="save a throughput plot (needs matplotlib)")
    b.add_argument("--sparse", action="store_true",
                   help="benchmark the sparse step instead (fastadam.sparse_adam_step on "
                   "a float32 1e6 x 64 table, 4096 indices per step, uniform and Zipf) "
                   "against its floor kernel, torch.optim.SparseAdam and a dense step; "
                   "takes --threads, --runs, --quick, --json, --peers")

    b.add_argument("--state", default=None, metavar="DTYPES",
                   help="instead: time fa.Adam.step() with state_dtype from "
                   "float32,bfloat16,int8 (comma-separated; float32 is always run as the "
                   "baseline) on one float32 buffer per --sizes (default 1e5,1e6,1e7): "
                   "ms/step, ratio to float32 state, state bytes per parameter")
    b.add_argument("--param-dtype", default=None, metavar="DTYPE",
                   help="instead: time fa.Adam.step() on 16-bit parameters and gradients "
                   "(DTYPE: bfloat16, float16 or bfloat16,float16: rows side by side) with "
                   "bfloat16 state (or the --state dtypes), each "
                   "way to keep precision (nearest, stochastic, compensation, master), "
                   "against the float32 step and each layout's own byte floor, one "
                   "process, per --sizes (default 1e5,1e6,1e7)")
    b.add_argument("--torch", action="store_true",
                   help="instead: time fastadam.torch.Adam.step() against torch fused Adam "
                   "on models of 1e5-1e7 parameters in 10-100 tensors (needs torch)")

    sub.add_parser("info", help="versions, threading layer, threads, parallel threshold, "
                   "kernel cache directory")
    return ap


def _bench(args):
    if args.sparse:
        return _bench_sparse(args)
    from . import bench, bench_report

    states = None
    if args.state is not None:
        states = [s.strip() for s in args.state.split(",") if s.strip()]
        bad = [s for s in states if s not in ("float32", "bfloat16", "int8")]
        if not states or bad:
            print("fastadam bench: --state must be among float32,bfloat16,int8, got "
                  f"{args.state!r}", file=sys.stderr)
            return 2
    if args.param_dtype is not None:
        from . import bench_lowp
        pdts = [d.strip() for d in args.param_dtype.split(",") if d.strip()]
        if not pdts or any(d not in bench_lowp.PARAM_DTYPES for d in pdts) \
                or len(set(pdts)) != len(pdts):
            print(f"fastadam bench: --param-dtype must be among "
                  f"{','.join(bench_lowp.PARAM_DTYPES)} (comma-separated, no repeats), got "
                  f"{args.param_dtype!r}", file=sys.stderr)
            return 2
        if args.threads is not None and args.threads < 1:
            print(f"fastadam bench: --threads must be >= 1, got {args.threads}",
                  file=sys.stderr)
            return 2
        if not bench._have("ml_dtypes"):
            print("fastadam bench: --param-dtype needs ml_dtypes (bfloat16 parameters "
                  "or state) "
                  "(pip install 'fastadam[lowp]')", file=sys.stderr)
            return 2
        sizes = args.sizes or ([10**3, 10**4] if args.quick else None)
        res = bench_lowp.param_dtype_rows(pdts, states=states or ["bfloat16"],
                                          sizes=sizes, quick=args.quick,
                                          threads=args.threads)
        print(json.dumps(res, indent=1) if args.json == "-"
              else bench_lowp.format_param_dtype_rows(res))
        return 0
    if states is not None:
        sizes = args.sizes or ([10**3, 10**4] if args.quick else None)
        res = bench.state_rows(states, sizes=sizes, quick=args.quick, threads=args.threads)
        print(json.dumps(res, indent=1) if args.json == "-" else bench_report.format_state_rows(res))
        return 0

    if args.torch:
        print(bench.torch_frontend(quick=args.quick, threads=args.threads))
        return 0
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in bench.BYTES_PER_PARAM]
    if not dtypes or bad:
        print(f"fastadam bench: --dtypes must be float32 and/or float64, got {args.dtypes!r}",
              file=sys.stderr)
        return 2
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in bench.PEERS]
    if bad:
        print(f"fastadam bench: unknown peer(s) {bad}; choose from {list(bench.PEERS)}",
              file=sys.stderr)
        return 2
    if args.runs < 1:
        print(f"fastadam bench: --runs must be >= 1, got {args.runs}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"fastadam bench: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("fastadam bench: --plot needs matplotlib (pip install matplotlib)",
                  file=sys.stderr)
            return 2
    sizes = args.sizes
    if sizes is None and args.quick:
        sizes = [10**3, 10**4]
    max_size = args.max_size or bench.DEFAULT_MAX_SIZE
    if sizes is not None and args.max_size:
        sizes = [n for n in sizes if n <= max_size]
    res = bench.run(sizes=sizes, max_size=max_size, dtypes=dtypes, peers=peers,
                    threads=args.threads, quick=args.quick, cold=not args.no_cold_start,
                    runs=args.runs)
    if args.json == "-":
        print(json.dumps(res, indent=1))
    else:
        print(bench_report.format_report(res))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
    if args.plot:
        bench_report.plot(res, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _bench_sparse(args):
    from . import bench_sparse

    if args.runs < 1 or (args.threads is not None and args.threads < 1):
        print("fastadam bench: --runs and --threads must be >= 1", file=sys.stderr)
        return 2
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bench_sparse.main(threads=args.threads, quick=args.quick, runs=args.runs,
                      json_out=args.json, peers=peers)
    return 0


def _info():
    from . import bench

    for k, v in bench.machine_info().items():
        print(f"{k:20s} {v}")
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    return _info()


if __name__ == "__main__":
    sys.exit(main())
