"""The measuring side of ``fastadam bench``: one function per implementation, each run in
its own fresh process by :func:`fastadam.bench.run_worker` (``python -m fastadam.bench
worker IMPL SPEC_JSON``), returning its timings as a JSON-able dict."""
from __future__ import annotations

import numpy as np

from .bench import (BETA1, BETA2, EPS, LR, MANY_CASE, OBJECT_CASE, THREADS_SIZE, _buffers,
                    _progress, measure)


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


WORKERS = {"fastadam": _worker_fastadam, "numpy": _worker_numpy, "torch": _worker_torch,
            "deepspeed": _worker_deepspeed}
