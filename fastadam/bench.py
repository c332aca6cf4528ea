"""``fastadam bench``: how fast is an Adam step on this machine, against the memory limit
and against the peers.

Each implementation runs in its own fresh process (thread pools of different runtimes
fight for the cores otherwise):

* ``fastadam``: the floor kernel (same bytes, trivial math; see kernels/floor.py) and
  ``fastadam.adam_step``, sampled *interleaved* on the same buffers so that "% of floor"
  is a ratio measured under the same conditions; plus the object API (1e3 parameters in
  2 arrays), 100 separate arrays of 1e4 against the same parameters flattened, and 2
  threads against 1 at 1e6.
* ``numpy``: Adam written as plain vectorised NumPy expressions.
* ``torch``: ``torch.optim.Adam(..., fused=True)`` on CPU, when torch is installed.

Timing: after a warm-up (JIT compile, page faults), a sample is ``inner`` consecutive
steps (``inner`` chosen so a sample lasts >= ~2 ms), repeated for a time budget that
shrinks with size; we report the median time per step and the spread (25th-75th
percentile). Cold start (import + first step in a fresh process, beyond ``import numba``)
is measured by spawning fresh interpreters. docs/performance.md (in the repository)
explains the model, each figure and the targets checked by ``bench_report.targets``.

The worker protocol (``python -m fastadam.bench worker IMPL SPEC_JSON``) is internal; the workers are in ``bench_workers.py``.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

#: Bytes moved per parameter by a plain Adam step (read p, g, m, v; write p, m, v).
BYTES_PER_PARAM = {"float32": 28, "float64": 56}
DEFAULT_SIZES = [10**3, 10**4, 10**5, 10**6, 10**7, 10**8]
DEFAULT_MAX_SIZE = 10**7
PEERS = ("numpy", "torch", "deepspeed")
DEFAULT_PEERS = ("numpy", "torch")     # deepspeed on request (--peers): slow first build

# Adam hyperparameters used by every implementation (torch defaults).
LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8

# Extra cases: (name, list of array sizes).
OBJECT_CASE = ("object_1e3_2arrays", [500, 500])
MANY_CASE = ("many_100x1e4", [10**4] * 100)
THREADS_SIZE = 10**6


# ---------------------------------------------------------------------------- timing
def _progress(msg):
    print(f"[fastadam bench] {msg}", file=sys.stderr, flush=True)


def _budget(n, quick):
    """Seconds of sampling per measured variant: more for small (noisy, cheap) sizes."""
    if quick:
        return 0.05
    if n <= 10**5:
        return 1.0
    if n <= 10**6:
        return 1.5
    return 2.0


def measure(fns, n_elements, quick=False, min_rounds=5, max_rounds=2000):
    """Time the callables in ``fns`` (dict name -> fn(), one step each) interleaved.

    Returns {name: {"sec": median s/step, "p25": ..., "p75": ..., "samples": k}}."""
    names = list(fns)
    # Warm-up and per-variant calibration of the inner loop.
    inner = {}
    for name in names:
        fn = fns[name]
        fn()
        fn()
        k = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            dt = time.perf_counter() - t0
            if dt >= 2e-3 or k >= 1 << 20:
                break
            k *= 2 if dt < 1e-4 else max(2, int(2e-3 / max(dt, 1e-9)) + 1)
        inner[name] = k
    samples = {name: [] for name in names}
    budget = _budget(n_elements, quick)
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds
                                   or time.perf_counter() - start < budget):
        # Alternate the order so neither variant always follows the other.
        order = names if rounds % 2 == 0 else names[::-1]
        for name in order:
            fn, k = fns[name], inner[name]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            samples[name].append((time.perf_counter() - t0) / k)
        rounds += 1
    out = {}
    for name in names:
        s = np.array(samples[name])
        p25, med, p75 = np.percentile(s, [25, 50, 75])
        out[name] = {"sec": float(med), "p25": float(p25), "p75": float(p75),
                     "samples": int(s.size), "inner": inner[name]}
    return out


def _buffers(n, dtype, seed=0):
    """p, g, m, v with values that stay finite and normal under many floor or Adam
    steps (g >= 0 keeps the floor kernel's v positive)."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    g = (1e-3 * rng.random(n)).astype(dtype)
    m = (1e-2 * rng.standard_normal(n)).astype(dtype)
    v = (1e-3 + 1e-3 * rng.random(n)).astype(dtype)
    return p, g, m, v


_COLD_START_SCRIPT = r"""
import json, time
t0 = time.perf_counter()
import numba
t1 = time.perf_counter()
import numpy as np
import fastadam as fa
t2 = time.perf_counter()
p, g, m, v = (np.full(1000, x, np.float32) for x in (1.0, 0.5, 0.0, 0.0))
fa.adam_step(p, g, m, v, step=1)
t3 = time.perf_counter()
opt = fa.Adam([p[:500].copy(), p[500:].copy()])
opt.step([g[:500].copy(), g[500:].copy()])
t4 = time.perf_counter()
print(json.dumps({"import_numba": t1 - t0, "import_fastadam": t2 - t1,
                  "first_adam_step": t3 - t2, "beyond_numba": t3 - t1,
                  "first_object_step": t4 - t3}))
"""


def child_env(extra=None):
    """The environment for child processes: ours, with the directory this fastadam was
    imported from first on PYTHONPATH (so a checkout benchmarks itself)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    env.update(extra or {})
    return env


def cold_start(runs=3, cache_dir=None):
    """Median seconds of a fresh process's import + first step (see _COLD_START_SCRIPT).

    ``cache_dir``: NUMBA_CACHE_DIR for the children (a fresh empty dir measures a cold
    compile); default: the normal cache, warmed by one discarded run first."""
    env = child_env({"NUMBA_CACHE_DIR": cache_dir} if cache_dir else None)
    cmd = [sys.executable, "-c", _COLD_START_SCRIPT]
    out = []
    for i in range(runs + (0 if cache_dir else 1)):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        if i == 0 and not cache_dir:
            continue   # warm the cache
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {k: float(np.median([r[k] for r in out])) for k in out[0]} | {"runs": len(out)}


def run_worker(impl, spec, module="fastadam.bench"):
    """Run one implementation's worker (``python -m <module> worker``) in a fresh process;
    its stderr (progress) passes through. Returns its result dict, or {"error": message}."""
    cmd = [sys.executable, "-m", module, "worker", impl, json.dumps(spec)]
    # --threads N: size numba's pool to N so that any N (even above the core count) is valid.
    extra = {"NUMBA_NUM_THREADS": str(spec["threads"])} if spec.get("threads") else None
    proc = subprocess.run(cmd, env=child_env(extra), stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return {"error": f"worker exited with code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load():
    """1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _have(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------- report
def machine_info():
    import numba

    from . import __version__, config

    info = {"fastadam": __version__, "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
            "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "threading_layer": config.threading_layer(),
            "num_threads": config.get_num_threads(),
            "parallel_threshold": config.PARALLEL_THRESHOLD, "block": config.BLOCK,
            "numba_cache_dir": config.cache_dir()}
    try:
        import torch
        info["torch"] = torch.__version__
    except Exception:
        info["torch"] = None
    return info


# ---------------------------------------------------------------------------- driver
def parse_sizes(text):
    return [int(float(x)) for x in text.split(",") if x.strip()]


def merge_runs(outs):
    """One result from several runs of a worker: every timing (a dict with "sec") is
    taken from the run with the median "sec" (the lower median for an even count)."""
    good = [o for o in outs if "error" not in o]
    if not good:
        return outs[0]

    def merge(items):
        first = items[0]
        if isinstance(first, dict) and "sec" in first:
            return sorted(items, key=lambda d: d["sec"])[(len(items) - 1) // 2]
        if isinstance(first, dict):
            return {k: merge([it[k] for it in items if isinstance(it, dict) and k in it])
                    for k in first}
        return first

    out = merge(good)
    # Keep each step time paired with the floor time sampled beside it (same run).
    for dtype, by_size in out.get("flat", {}).items():
        for n, chosen in by_size.items():
            for o in good:
                if o["flat"][dtype][n] is chosen and "floor" in o:
                    out["floor"][dtype][n] = o["floor"][dtype][n]
    return out


def run(sizes=None, max_size=DEFAULT_MAX_SIZE, dtypes=("float32", "float64"), peers=DEFAULT_PEERS,
        threads=None, quick=False, cold=True, runs=1):
    """Run the whole benchmark; returns the result dict (see ``format_report``)."""
    if sizes is None:
        sizes = [n for n in DEFAULT_SIZES if n <= max_size]
    spec = {"sizes": sorted(sizes), "dtypes": list(dtypes), "threads": threads, "quick": quick}
    res = {"machine": machine_info(), "sizes": spec["sizes"], "dtypes": spec["dtypes"],
           "quick": quick, "peers": {}, "load_before": _load()}
    t0 = time.perf_counter()
    impls = ["fastadam"]
    for p in peers:
        if p in ("torch", "deepspeed") and not _have(p):
            res["peers"][p] = {"error": "not installed"}
        else:
            impls.append(p)
    # With runs > 1 the workers take turns (fastadam, peer, ..., fastadam, peer, ...) so
    # a burst of load from elsewhere hits every implementation alike; each figure is then
    # the run with the median time.
    outs = {impl: [] for impl in impls}
    for r in range(runs):
        for impl in impls:
            if runs > 1:
                _progress(f"run {r + 1}/{runs}: {impl}")
            outs[impl].append(run_worker(impl, spec))
    res["runs"] = runs
    merged = {impl: merge_runs(o) for impl, o in outs.items()}
    res["fastadam"] = merged.pop("fastadam")
    if "error" in res["fastadam"]:
        raise RuntimeError(f"fastadam worker failed: {res['fastadam']['error']}")
    res["peers"].update(merged)
    res["cold_start"] = {}
    if cold:
        _progress("cold start: fresh processes, warm cache")
        res["cold_start"]["warm"] = cold_start(runs=1 if quick else 5)
        if not quick:
            import tempfile
            _progress("cold start: fresh process, empty cache (compiles the kernels)")
            with tempfile.TemporaryDirectory(prefix="fastadam-cold-") as d:
                res["cold_start"]["empty"] = cold_start(runs=1, cache_dir=d)
    from .bench_report import targets
    res["targets"] = targets(res)
    res["load_after"] = _load()
    res["elapsed_s"] = time.perf_counter() - t0
    return res


def torch_frontend(quick=False, threads=None):
    """``fastadam bench --torch``: fastadam.torch.Adam.step() against torch fused Adam on
    models of many tensors (see fastadam/torch/benchmark.py); returns the report text."""
    from .torch import benchmark
    return benchmark.format_rows(benchmark.run(quick=quick, threads=threads))


def state_rows(states, sizes=None, quick=False, threads=None):
    """``fastadam bench --state``: fa.Adam(state_dtype=...).step() on one float32 buffer
    per size, the layouts timed interleaved in one process (ratios are what to read)."""
    import fastadam as fa
    from . import config
    if threads is not None:
        config.set_num_threads(threads)
    states = ["float32"] + [s for s in states if s != "float32"]
    rows = []
    for n in sizes or [10**5, 10**6, 10**7]:
        rng = np.random.default_rng(0)
        fns, nbytes = {}, {}
        for sd in states:
            p = rng.standard_normal(n).astype(np.float32)
            opt = fa.Adam([p], lr=1e-3, state_dtype=None if sd == "float32" else sd)
            opt.grads[0][...] = 1e-3 * rng.standard_normal(n).astype(np.float32)
            fns[sd], nbytes[sd] = opt.step, opt.state_bytes()
        _progress(f"state dtypes {states} at n={n}")
        r = measure(fns, n, quick=quick)
        base = r["float32"]["sec"]
        for sd in states:
            rows.append({"n": n, "state_dtype": sd, "ms": 1e3 * r[sd]["sec"],
                         "speedup_vs_float32": base / r[sd]["sec"],
                         "state_bytes_per_param": nbytes[sd]})
    return {"machine": machine_info(), "load": _load(), "rows": rows}


def _worker_main(argv):
    impl, spec = argv[0], json.loads(argv[1])
    from .bench_workers import WORKERS
    print(json.dumps(WORKERS[impl](spec)))


if __name__ == "__main__":
    # Only the internal worker protocol: the command line lives in cli.py, which imports
    # this module (never the other way round).
    if len(sys.argv) >= 2 and sys.argv[1] == "worker":
        _worker_main(sys.argv[2:])
    else:
        print("usage: python -m fastadam bench [options]  (or: fastadam bench)",
              file=sys.stderr)
        sys.exit(2)
