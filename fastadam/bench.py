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
explains the model, each figure and the targets checked by :func:`targets`.

The worker protocol (``python -m fastadam.bench worker IMPL SPEC_JSON``) is internal.
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


# ---------------------------------------------------------------------------- workers
def _worker_fastadam(spec):
    import fastadam as fa
    from fastadam.kernels.floor import floor_step

    if spec.get("threads"):
        fa.set_num_threads(spec["threads"])
    quick = spec["quick"]
    res = {"flat": {}, "floor": {}, "cases": {}, "threads": {}}
    for dtype in spec["dtypes"]:
        res["flat"][dtype], res["floor"][dtype] = {}, {}
        for n in spec["sizes"]:
            _progress(f"fastadam + floor  {dtype:7s} n={n:.0e}")
            p, g, m, v = _buffers(n, dtype)
            t = [0]

            def adam():
                t[0] += 1
                fa.adam_step(p, g, m, v, step=t[0])

            r = measure({"fastadam": adam, "floor": lambda: floor_step(p, g, m, v)}, n, quick)
            res["flat"][dtype][str(n)] = r["fastadam"]
            res["floor"][dtype][str(n)] = r["floor"]
            del p, g, m, v

    # Object API, 1e3 parameters in 2 arrays (the per-call cost).
    name, sizes = OBJECT_CASE
    _progress(f"fastadam object API, {name}")
    params = [_buffers(k, np.float32, seed=i)[0] for i, k in enumerate(sizes)]
    grads = [_buffers(k, np.float32, seed=i)[1] for i, k in enumerate(sizes)]
    opt = fa.Adam(params, lr=LR)
    for buf, g in zip(opt.grads, grads):
        buf[...] = g
    # Like for like with torch's opt.step() (gradients already in p.grad): gradients in the
    # optimizer's preallocated opt.grads. The list form also validates the arrays and reads
    # their addresses every step; it is reported beside it.
    r = measure({"object": lambda: opt.step(), "list": lambda: opt.step(grads)},
                sum(sizes), quick)
    res["cases"][name] = r["object"]
    res["cases"][name + "_list"] = r["list"]

    # 100 separate arrays of 1e4 against the same parameters flattened into one buffer.
    name, sizes = MANY_CASE
    _progress(f"fastadam object API, {name}: separate arrays vs flat buffer")
    params = [_buffers(k, np.float32, seed=i)[0] for i, k in enumerate(sizes)]
    grads = [_buffers(k, np.float32, seed=i)[1] for i, k in enumerate(sizes)]
    opt_sep = fa.Adam(params, lr=LR)
    _, views = fa.flatten([q.copy() for q in params])
    opt_flat = fa.Adam(views, lr=LR)
    for dst, src in zip(opt_flat.grads, grads):
        dst[...] = src
    r = measure({"separate": lambda: opt_sep.step(grads), "flat": lambda: opt_flat.step()},
                sum(sizes), quick)
    res["cases"][name] = r["separate"]
    res["cases"][name + "_flat"] = r["flat"]

    # Two threads against one, in cache.
    nthreads = fa.get_num_threads()
    if nthreads >= 2:
        _progress(f"fastadam threads: {nthreads} vs 1 at n={THREADS_SIZE:.0e} float32")
        p, g, m, v = _buffers(THREADS_SIZE, np.float32)

        def one():
            with fa.threads(1):
                fa.adam_step(p, g, m, v, step=1)

        r = measure({"n": lambda: fa.adam_step(p, g, m, v, step=1), "1": one},
                    THREADS_SIZE, quick)
        res["threads"] = {"size": THREADS_SIZE, "threads": nthreads,
                          "sec_n": r["n"], "sec_1": r["1"]}
    res["threading_layer"] = fa.threading_layer()
    res["num_threads"] = fa.get_num_threads()
    return res


def numpy_adam_step(p, g, m, v, t, lr=LR, b1=BETA1, b2=BETA2, eps=EPS):
    """Adam (Algorithm 1) as plain vectorised NumPy expressions, in place."""
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * (g * g)
    bc1 = 1 - b1 ** t
    bc2 = 1 - b2 ** t
    p -= (lr / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + eps)


def _worker_numpy(spec):
    quick = spec["quick"]
    res = {"flat": {}, "cases": {}}
    for dtype in spec["dtypes"]:
        res["flat"][dtype] = {}
        for n in spec["sizes"]:
            _progress(f"numpy             {dtype:7s} n={n:.0e}")
            p, g, m, v = _buffers(n, dtype)
            r = measure({"np": lambda: numpy_adam_step(p, g, m, v, 10)}, n, quick)
            res["flat"][dtype][str(n)] = r["np"]
            del p, g, m, v
    for name, sizes in (OBJECT_CASE, MANY_CASE):
        _progress(f"numpy             {name}")
        bufs = [_buffers(k, np.float32, seed=i) for i, k in enumerate(sizes)]

        def step():
            for p, g, m, v in bufs:
                numpy_adam_step(p, g, m, v, 10)

        res["cases"][name] = measure({"np": step}, sum(sizes), quick)["np"]
    return res


def _worker_torch(spec):
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    quick = spec["quick"]
    res = {"flat": {}, "cases": {}, "version": torch.__version__,
           "num_threads": torch.get_num_threads()}

    def make(sizes, dtype):
        params = []
        for i, k in enumerate(sizes):
            p, g, _, _ = _buffers(k, dtype, seed=i)
            tp = torch.from_numpy(p).requires_grad_(True)
            tp.grad = torch.from_numpy(g)
            params.append(tp)
        opt = torch.optim.Adam(params, lr=LR, fused=True)
        opt.step()   # creates the state (exp_avg, exp_avg_sq)
        return params, opt

    with torch.no_grad():
        for dtype in spec["dtypes"]:
            res["flat"][dtype] = {}
            for n in spec["sizes"]:
                _progress(f"torch fused       {dtype:7s} n={n:.0e}")
                params, opt = make([n], dtype)
                res["flat"][dtype][str(n)] = measure({"t": opt.step}, n, quick)["t"]
                del params, opt
        for name, sizes in (OBJECT_CASE, MANY_CASE):
            _progress(f"torch fused       {name}")
            params, opt = make(sizes, np.float32)
            res["cases"][name] = measure({"t": opt.step}, sum(sizes), quick)["t"]
    return res


def _worker_deepspeed(spec):
    """DeepSpeedCPUAdam (float32 only: it has no float64 kernel). Its C++ extension is
    built or loaded on first use, during the warm-up."""
    import torch
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    quick = spec["quick"]
    res = {"flat": {}, "cases": {}}

    def make(sizes):
        params = []
        for i, k in enumerate(sizes):
            p, g, _, _ = _buffers(k, np.float32, seed=i)
            tp = torch.from_numpy(p).requires_grad_(True)
            tp.grad = torch.from_numpy(g)
            params.append(tp)
        opt = DeepSpeedCPUAdam(params, lr=LR, adamw_mode=False)
        opt.step()
        return params, opt

    with torch.no_grad():
        if "float32" in spec["dtypes"]:
            res["flat"]["float32"] = {}
            for n in spec["sizes"]:
                _progress(f"DeepSpeedCPUAdam  float32 n={n:.0e}")
                params, opt = make([n])
                res["flat"]["float32"][str(n)] = measure({"t": opt.step}, n, quick)["t"]
                del params, opt
        for name, sizes in (OBJECT_CASE, MANY_CASE):
            _progress(f"DeepSpeedCPUAdam  {name}")
            params, opt = make(sizes)
            res["cases"][name] = measure({"t": opt.step}, sum(sizes), quick)["t"]
    return res


_WORKERS = {"fastadam": _worker_fastadam, "numpy": _worker_numpy, "torch": _worker_torch,
            "deepspeed": _worker_deepspeed}

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


def run_worker(impl, spec):
    """Run one implementation's worker in a fresh process; its stderr (progress) passes
    through. Returns its result dict, or {"error": message}."""
    cmd = [sys.executable, "-m", "fastadam.bench", "worker", impl, json.dumps(spec)]
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


def _ratio(a, b):
    return None if (a is None or b is None or a == 0) else b / a


def _sec(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d["sec"] if isinstance(d, dict) and "sec" in d else None


def targets(res):
    """Each target of docs/performance.md ("Current targets") with its measured ratio and
    whether it is met."""
    fa, peers = res["fastadam"], res["peers"]
    torch = peers.get("torch", {})
    rows = []

    def add(what, target, ratio, ok):
        rows.append({"what": what, "target": target,
                     "measured": None if ratio is None else round(ratio, 3),
                     "met": None if ratio is None or ok(ratio) is None else bool(ok(ratio))})

    for dtype, sizes, lim in (("float32", (10**6, 10**7, 10**8), 0.95),
                              ("float32", (10**5,), 0.85), ("float32", (10**4,), 0.50),
                              ("float64", (10**7, 10**8), 0.95)):
        for n in sizes:
            r = _ratio(_sec(fa, "flat", dtype, str(n)), _sec(fa, "floor", dtype, str(n)))
            add(f"{dtype} step {n:.0e} vs floor", f">= {lim:.2f} x floor", r,
                lambda x, lim=lim: x >= lim)
    r = _ratio(_sec(fa, "flat", "float32", str(10**5)), _sec(torch, "flat", "float32", str(10**5)))
    add("float32 step 1e5 vs torch fused", ">= 2 x torch fused", r, lambda x: x >= 2)
    sec = _sec(fa, "flat", "float32", str(10**3))
    add("functional adam_step, float32 1e3: microseconds", "<= 1.5 us",
        None if sec is None else sec * 1e6, lambda x: x <= 1.5)
    r = _ratio(sec, _sec(torch, "flat", "float32", str(10**3)))
    add("functional adam_step, float32 1e3, vs torch fused", ">= 20 x torch fused", r,
        lambda x: x >= 20)
    name = OBJECT_CASE[0]
    r = _ratio(_sec(fa, "cases", name), _sec(torch, "cases", name))
    add("object API step (opt.grads), 1e3 params in 2 arrays, vs torch fused",
        ">= 25 x torch fused", r, lambda x: x >= 25)
    r = _ratio(_sec(fa, "cases", name + "_list"), _sec(torch, "cases", name))
    add("  same with a grads list each step, vs torch fused", ">= 20 x torch fused", r,
        lambda x: x >= 20)
    sec = _sec(fa, "cases", name + "_list")
    add("  same with a grads list each step: microseconds", "<= 1.5 us",
        None if sec is None else sec * 1e6, lambda x: x <= 1.5)
    name = MANY_CASE[0]
    r = _ratio(_sec(fa, "cases", name), _sec(fa, "cases", name + "_flat"))
    add("100 separate arrays of 1e4 vs flat path", ">= 0.87 x flat (within 15%)", r,
        lambda x: x * 1.15 >= 1 - 1e-9)
    r = _ratio(_sec(fa, "cases", name), _sec(torch, "cases", name))
    add("100 separate arrays of 1e4 vs torch fused", ">= 3 x torch fused", r, lambda x: x >= 3)
    th = fa.get("threads") or {}
    r = _ratio(_sec(th, "sec_n"), _sec(th, "sec_1"))
    add(f"{th.get('threads', 2)} threads vs 1, float32 1e6", ">= 1.7 x", r, lambda x: x >= 1.7)
    cs = res.get("cold_start", {}).get("warm")
    rows.append({"what": "cold start, warm cache: import + first step beyond import numba",
                 "target": "<= 0.5 s", "measured": None if not cs else round(cs["beyond_numba"], 3),
                 "met": None if not cs else cs["beyond_numba"] <= 0.5})
    return rows


def _fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def format_report(res):
    info = res["machine"]
    fa, peers = res["fastadam"], res["peers"]
    lines = [
        f"fastadam {info['fastadam']} | numba {info['numba']} | numpy {info['numpy']} | "
        f"torch {info['torch'] or 'absent'} | Python {info['python']}",
        f"{info['platform']} | {info['cpu_count']} CPUs | threading layer "
        f"{fa.get('threading_layer', info['threading_layer'])} | "
        f"{fa.get('num_threads', info['num_threads'])} threads | parallel threshold "
        f"{info['parallel_threshold']} elements",
        "Median of many repeats; +-% is half the 25-75th percentile spread. Mparams/s and "
        "GB/s are fastadam's (28 B/param float32, 56 float64)."
        + (f" Each implementation ran {res['runs']} times, taking turns; the median run "
           "is shown." if res.get("runs", 1) > 1 else ""),
    ]
    if peers.get("torch", {}).get("num_threads"):
        lines[1] += f" | torch {peers['torch']['num_threads']} threads"
    load = res.get("load_before")
    if load is not None and load > (info["cpu_count"] or 1) - 0.75:
        lines.append(f"WARNING: the machine was busy before this run (load average {load:.2f} "
                     f"on {info['cpu_count']} CPUs): other processes take cores, so "
                     "multi-threaded and in-cache figures are low and noisy.")
    peer_names = [p for p in PEERS if p in peers and "error" not in peers[p]]
    for dtype in res["dtypes"]:
        lines.append("")
        head = (f"{dtype:8s} {'size':>6s} {'us/step':>10s} {'+-%':>5s} {'Mparams/s':>10s} "
                f"{'GB/s':>7s} {'floor Mp/s':>10s} {'% floor':>8s}")
        for p in peer_names:
            head += f" {'x ' + p:>9s}"
        lines.append(head)
        for n in res["sizes"]:
            k = str(n)
            d = fa["flat"][dtype].get(k)
            if d is None:
                continue
            sec, floor = d["sec"], _sec(fa, "floor", dtype, k)
            spread = 50 * (d["p75"] - d["p25"]) / sec
            row = (f"{'':8s} {n:>6.0e} {sec * 1e6:>10.2f} {spread:>5.1f} {n / sec / 1e6:>10.1f} "
                   f"{n * BYTES_PER_PARAM[dtype] / sec / 1e9:>7.2f} "
                   f"{n / floor / 1e6:>10.1f} {100 * floor / sec:>7.1f}%")
            for p in peer_names:
                row += f" {_fmt_ratio(_ratio(sec, _sec(peers[p], 'flat', dtype, k))):>9s}"
            lines.append(row)
    lines.append("")
    lines.append(f"{'case (float32)':44s} {'us/step':>10s}" + "".join(
        f" {'x ' + p:>9s}" for p in peer_names))
    cases = [(OBJECT_CASE[0], "object API, 1e3 params in 2 arrays (opt.grads)"),
             (OBJECT_CASE[0] + "_list", "  same, grads passed as a list each step"),
             (MANY_CASE[0], "object API, 100 separate arrays of 1e4"),
             (MANY_CASE[0] + "_flat", "object API, same 1e6 params flattened")]
    for key, label in cases:
        sec = _sec(fa, "cases", key)
        if sec is None:
            continue
        row = f"{label:44s} {sec * 1e6:>10.2f}"
        for p in peer_names:
            peer_key = key.rsplit("_", 1)[0] if key.endswith(("_flat", "_list")) else key
            row += f" {_fmt_ratio(_ratio(sec, _sec(peers[p], 'cases', peer_key))):>9s}"
        lines.append(row)
    th = fa.get("threads") or {}
    if th:
        r = _ratio(th["sec_n"]["sec"], th["sec_1"]["sec"])
        lines.append(f"{th['threads']} threads vs 1 at float32 {th['size']:.0e}: "
                     f"{th['sec_n']['sec'] * 1e6:.1f} us vs {th['sec_1']['sec'] * 1e6:.1f} us "
                     f"= {r:.2f}x")
    for key, label in (("warm", "warm cache"), ("empty", "empty cache")):
        cs = res.get("cold_start", {}).get(key)
        if cs:
            lines.append(f"cold start ({label}, median of {cs['runs']}): import numba "
                         f"{cs['import_numba']:.3f} s; then import fastadam + first adam_step "
                         f"{cs['beyond_numba']:.3f} s (import {cs['import_fastadam']:.3f} s); "
                         f"first object-API step {cs['first_object_step']:.3f} s more")
    for p in PEERS:
        if p in peers and "error" in peers[p]:
            lines.append(f"peer {p}: {peers[p]['error']}")
    lines.append("")
    lines.append("Targets (docs/performance.md in the fastadam repository), measured in this run:")
    for t in res["targets"]:
        if t["met"] is None:
            status = "info" if t["target"] == "-" and t["measured"] is not None else "not measured"
        else:
            status = "met" if t["met"] else "NOT MET"
        m = "-" if t["measured"] is None else (
            f"{t['measured']:.3f} s" if t["target"].endswith(" s") else
            f"{t['measured']:.2f} us" if t["target"].endswith(" us") else
            f"{t['measured']:.2f}x")
        lines.append(f"  {t['what']:62s} {t['target']:30s} {m:>9s}  {status}")
    return "\n".join(lines)


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res["dtypes"]), figsize=(6 * len(res["dtypes"]), 4.5),
                             squeeze=False)
    series = [("floor kernel", res["fastadam"].get("floor", {}), "k--"),
              ("fastadam", res["fastadam"]["flat"], "C0o-")]
    for i, p in enumerate(PEERS):
        if p in res["peers"] and "flat" in res["peers"][p]:
            series.append((p if p != "torch" else "torch fused", res["peers"][p]["flat"],
                           f"C{i + 1}s-"))
    for ax, dtype in zip(axes[0], res["dtypes"]):
        for label, data, style in series:
            pts = [(n, n / data[dtype][str(n)]["sec"] / 1e6) for n in res["sizes"]
                   if str(n) in data.get(dtype, {})]
            if pts:
                ax.plot(*zip(*pts), style, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("Mparams/s (median)")
        ax.set_title(f"Adam step, {dtype}, {res['machine']['num_threads']} threads "
                     f"({res['machine']['threading_layer']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def format_state_rows(res):
    lines = [f"{'n':>10}  {'state':>9}  {'ms/step':>9}  {'x fp32':>7}  {'state B/param':>13}"]
    for r in res["rows"]:
        lines.append(f"{r['n']:>10.0e}  {r['state_dtype']:>9}  {r['ms']:>9.3f}  "
                     f"{r['speedup_vs_float32']:>7.2f}  {r['state_bytes_per_param']:>13.3f}")
    lines.append(f"(load {res['load']}; one process, interleaved; ratios are what to read)")
    return "\n".join(lines)


def _worker_main(argv):
    impl, spec = argv[0], json.loads(argv[1])
    print(json.dumps(_WORKERS[impl](spec)))


if __name__ == "__main__":
    # Only the internal worker protocol: the command line lives in cli.py, which imports
    # this module (never the other way round).
    if len(sys.argv) >= 2 and sys.argv[1] == "worker":
        _worker_main(sys.argv[2:])
    else:
        print("usage: python -m fastadam bench [options]  (or: fastadam bench)",
              file=sys.stderr)
        sys.exit(2)
