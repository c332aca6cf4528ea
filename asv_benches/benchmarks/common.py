"""Shared, seeded benchmark data and helpers.

Buffers are cached per (size, dtype, seed) inside one benchmark process and copied into
fresh arrays by callers that mutate them. Values are chosen so that thousands of Adam or
floor steps stay finite and normal (no denormal slow paths)."""
import functools
import json
import os
import subprocess
import sys

import numpy as np

SIZES = [10**3, 10**4, 10**5, 10**6, 10**7]
DTYPES = ["float32", "float64"]
VARIANTS = ["plain", "amsgrad", "adamw"]
THREADS = [1, 2]
BYTES_PER_PARAM = {"float32": 28, "float64": 56}

#: Steps per call of a time_* benchmark, so that one call is >= ~10 us of work
#: (asv's per-call overhead and timer resolution would dominate a 1 us step).
def steps_per_call(n):
    return max(1, 10**4 // n)


@functools.lru_cache(maxsize=8)
def _data(n, dtype, seed):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    g = (1e-3 * rng.random(n)).astype(dtype)
    m = (1e-2 * rng.standard_normal(n)).astype(dtype)
    v = (1e-3 + 1e-3 * rng.random(n)).astype(dtype)
    return p, g, m, v


def buffers(n, dtype, seed=0):
    """Fresh copies of (param, grad, exp_avg, exp_avg_sq), 1-D of length n."""
    return tuple(a.copy() for a in _data(n, dtype, seed))


def variant_kwargs(variant):
    """adam_step keyword arguments for a benchmark variant."""
    return {"plain": {}, "amsgrad": {"amsgrad": True},
            "adamw": {"weight_decay": 1e-2, "decoupled_weight_decay": True}}[variant]


def max_threads():
    import numba
    return numba.config.NUMBA_NUM_THREADS


def skip_if_too_many_threads(threads):
    """asv convention: raising NotImplementedError in setup skips the combination."""
    if threads > max_threads():
        raise NotImplementedError(f"needs {threads} threads, have {max_threads()}")


COLD_START = r"""
import json, time
t0 = time.perf_counter()
import numba
t1 = time.perf_counter()
import numpy as np
import fastadam as fa
p, g, m, v = (np.full(1000, x, np.float32) for x in (1.0, 0.5, 0.0, 0.0))
fa.adam_step(p, g, m, v, step=1)
t2 = time.perf_counter()
print(json.dumps({"import_numba": t1 - t0, "beyond_numba": t2 - t1}))
"""


def cold_start(cache_dir=None):
    """Run import + first step in a fresh interpreter; returns its timings (seconds).
    ``cache_dir`` sets NUMBA_CACHE_DIR (an empty one measures compilation)."""
    import fastadam

    env = dict(os.environ)
    # Import the same fastadam in the child (asv strips PYTHONPATH / ASV_PYTHONPATH).
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastadam.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [x for x in
                                                  env.get("PYTHONPATH", "").split(os.pathsep) if x])
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", COLD_START], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
