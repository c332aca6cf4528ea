"""Adam step throughput: size x dtype x variant x threads, the floor kernel beside it,
many arrays, the small object-API step, cold start and peak memory.

Each time_* call runs ``steps_per_call(n)`` steps (several for tiny buffers, see
common.py); JIT compilation and first-touch page faults happen in setup."""
import shutil
import tempfile

import numpy as np

import fastadam as fa

from .common import (DTYPES, SIZES, THREADS, VARIANTS, buffers, cold_start,
                     skip_if_too_many_threads, steps_per_call, variant_kwargs)


class _Threads:
    """Sets fastadam's thread count in setup and restores it in teardown."""

    def _set_threads(self, threads):
        skip_if_too_many_threads(threads)
        self._old_threads = fa.get_num_threads()
        fa.set_num_threads(threads)

    def teardown(self, *params):
        if hasattr(self, "_old_threads"):
            fa.set_num_threads(self._old_threads)


class Step(_Threads):
    """fastadam.adam_step on one flat buffer."""
    params = [SIZES, DTYPES, VARIANTS, THREADS]
    param_names = ["size", "dtype", "variant", "threads"]
    timeout = 180

    def setup(self, n, dtype, variant, threads):
        self._set_threads(threads)
        self.p, self.g, self.m, self.v = buffers(n, dtype)
        self.kw = variant_kwargs(variant)
        if self.kw.get("amsgrad"):
            self.kw["max_exp_avg_sq"] = self.v.copy()
        self.k = steps_per_call(n)
        self.time_step(n, dtype, variant, threads)       # JIT warm-up, page faults

    def time_step(self, n, dtype, variant, threads):
        p, g, m, v, kw = self.p, self.g, self.m, self.v, self.kw
        for _ in range(self.k):
            fa.adam_step(p, g, m, v, step=10, **kw)


class Floor(_Threads):
    """The floor kernel (same bytes as a plain step, trivial math): the memory limit."""
    params = [SIZES, DTYPES, THREADS]
    param_names = ["size", "dtype", "threads"]
    timeout = 180

    def setup(self, n, dtype, threads):
        try:
            from fastadam.kernels.floor import floor_step
        except ImportError:
            raise NotImplementedError("this fastadam has no floor kernel")
        self._set_threads(threads)
        self.floor = floor_step
        self.p, self.g, self.m, self.v = buffers(n, dtype)
        self.k = steps_per_call(n)
        self.time_floor(n, dtype, threads)

    def time_floor(self, n, dtype, threads):
        p, g, m, v = self.p, self.g, self.m, self.v
        for _ in range(self.k):
            self.floor(p, g, m, v)


class PercentOfFloor:
    """Plain float32/float64 step as % of the floor kernel, timed interleaved in one
    process (the ratio docs/performance.md's targets are stated in). Higher is better."""
    params = [[10**4, 10**5, 10**6, 10**7], DTYPES]
    param_names = ["size", "dtype"]
    unit = "%"
    timeout = 180

    def setup(self, n, dtype):
        try:
            from fastadam.bench import measure
            from fastadam.kernels.floor import floor_step
        except ImportError:
            raise NotImplementedError("this fastadam has no floor kernel / bench harness")
        self.measure, self.floor = measure, floor_step
        self.p, self.g, self.m, self.v = buffers(n, dtype)

    def track_percent_of_floor(self, n, dtype):
        p, g, m, v = self.p, self.g, self.m, self.v
        r = self.measure({"step": lambda: fa.adam_step(p, g, m, v, step=10),
                          "floor": lambda: self.floor(p, g, m, v)}, n)
        return 100.0 * r["floor"]["sec"] / r["step"]["sec"]



class KernelPercentOfFloor:
    """The compiled serial Adam kernel alone (no Python-side validation or dispatch) as %
    of the serial floor kernel, in cache: how close the element arithmetic is to moving
    the bytes (float32 uses the reciprocal estimate of kernels/approx.py where the CPU
    has it; float64 divides exactly). Beside PercentOfFloor, the gap between the two is
    the per-call overhead. Higher is better."""
    params = [[10**4, 5 * 10**4, 10**5], DTYPES]
    param_names = ["size", "dtype"]
    unit = "%"
    timeout = 180

    def setup(self, n, dtype):
        try:
            from fastadam import functional as F
            from fastadam.bench import measure
            from fastadam.kernels.floor import floor_serial
        except ImportError:
            raise NotImplementedError("this fastadam has no floor kernel / bench harness")
        try:   # the serial flat kernel adam_step launches, and its hyperparameter row
            s = F._ADAM.setup(1e-3, (0.9, 0.999), 1e-8, 0.0, False, False, False, True,
                              "paper")
            self.kernel, self.h, self.gs = s.serial, s.h, F._NO_GROUP_SCALARS
        except (AttributeError, TypeError):
            raise NotImplementedError("this fastadam has another kernel layout")
        self.measure, self.floor = measure, floor_serial
        self.p, self.g, self.m, self.v = buffers(n, dtype)

    def track_kernel_percent_of_floor(self, n, dtype):
        p, g, m, v, h, e = self.p, self.g, self.m, self.v, self.h, self.p[:0]
        r = self.measure({"step": lambda: self.kernel(p, g, m, v, e, e, h, 10, self.gs),
                          "floor": lambda: self.floor(p, g, m, v)}, n)
        return 100.0 * r["floor"]["sec"] / r["step"]["sec"]

class ManyArrays:
    """Object API over many separate arrays (one launch through the chunk table) against
    the same parameters as views of one flat buffer (fa.flatten + opt.grads)."""
    params = [["100x1e4", "20x50"], ["separate", "flat"]]
    param_names = ["arrays", "layout"]

    def setup(self, arrays, layout):
        count, size = arrays.split("x")
        count, size = int(count), int(float(size))
        params = [buffers(size, "float32", seed=i)[0] for i in range(count)]
        self.grads = [buffers(size, "float32", seed=i)[1] for i in range(count)]
        if layout == "flat":
            _, params = fa.flatten(params)
        self.params = params
        self.opt = fa.Adam(params, lr=1e-3)
        if layout == "flat":
            for dst, src in zip(self.opt.grads, self.grads):
                dst[...] = src
            self.step = self.opt.step
        else:
            self.step = lambda: self.opt.step(self.grads)
        self.k = steps_per_call(count * size)
        self.time_step(arrays, layout)

    def time_step(self, arrays, layout):
        for _ in range(self.k):
            self.step()


class SmallObjectStep:
    """The per-call cost: Adam object over 1e3 float32 parameters in 2 arrays
    (docs/performance.md target: >= 25 x torch fused). 10 steps per call."""

    def setup(self):
        self.params = [buffers(500, "float32", seed=i)[0] for i in range(2)]
        self.grads = [buffers(500, "float32", seed=i)[1] for i in range(2)]
        self.opt = fa.Adam(self.params)
        self.time_10_steps()

    def time_10_steps(self):
        opt, grads = self.opt, self.grads
        for _ in range(10):
            opt.step(grads)


class ColdStart:
    """A fresh interpreter: import numba, import fastadam, first adam_step (float32 1e3).
    time_* include interpreter start-up; track_* is the docs/performance.md figure (seconds
    beyond ``import numba``, target <= 0.5 s with a warm cache)."""
    number = 1
    repeat = 3
    warmup_time = 0
    timeout = 600

    def setup(self):
        cold_start()                      # make sure the on-disk cache is warm
        self.empty = tempfile.mkdtemp(prefix="fastadam-asv-cache-")

    def teardown(self):
        shutil.rmtree(self.empty, ignore_errors=True)

    def time_warm_cache(self):
        cold_start()

    def time_empty_cache(self):
        cold_start(cache_dir=self.empty)  # a fresh empty cache each repeat: compiles

    def track_beyond_numba_warm_cache(self):
        return float(np.median([cold_start()["beyond_numba"] for _ in range(3)]))
    track_beyond_numba_warm_cache.unit = "seconds"


class PeakMemory:
    """Peak resident memory of building an optimizer over 1e7 parameters and stepping it
    (params + grads + state; fastadam adds no per-step temporaries)."""
    params = [DTYPES, [False, True]]
    param_names = ["dtype", "amsgrad"]

    def setup(self, dtype, amsgrad):
        fa.adam_step(*buffers(1000, dtype), step=1)      # compile outside the measurement

    def peakmem_adam_1e7(self, dtype, amsgrad):
        p = np.zeros(10**7, dtype)
        g = np.ones(10**7, dtype)
        opt = fa.Adam([p], amsgrad=amsgrad)
        opt.step([g])
