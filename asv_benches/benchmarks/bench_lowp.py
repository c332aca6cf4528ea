"""Low-precision layouts (fastadam.adam_step_lowp): step and byte floor per layout, and
the step as % of its own floor (timed interleaved in one process). The float32 step these
are compared with is bench_step.Step / PercentOfFloor."""
import numpy as np

import fastadam as fa

from .common import steps_per_call

LAYOUTS = {
    "bf16-state": ("float32", "bfloat16", {}, "nearest"),
    "int8-state": ("float32", "int8", {}, "nearest"),
    "bf16-all-nearest": ("bfloat16", "bfloat16", {}, "nearest"),
    "bf16-all-stochastic": ("bfloat16", "bfloat16", {}, "stochastic"),
    "bf16-all-compensation": ("bfloat16", "bfloat16", {"compensation": True}, "nearest"),
    "bf16-all-master": ("bfloat16", "bfloat16", {"master_weights": True}, "nearest"),
}
SIZES = [10**5, 10**6, 10**7]


def _setup(n, layout):
    try:
        import ml_dtypes
        from fastadam import lowp
    except ImportError:
        raise NotImplementedError("this fastadam has no low-precision layouts (or no ml_dtypes)")
    pdt, sdt, kw, rounding = LAYOUTS[layout]
    dt = np.float32 if pdt == "float32" else ml_dtypes.bfloat16
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n, np.float32).astype(dt)
    g = (1e-3 * rng.standard_normal(n, np.float32)).astype(dt)
    st = lowp.init_lowp_state(p, state_dtype=sdt, **kw)

    def step():
        fa.adam_step_lowp(p, g, st, step=10, lr=1e-3, rounding=rounding, seed=1)

    def floor():
        lowp.floor_lowp(p, g, st, rounding=rounding)
    step(), floor()          # compile, page faults
    return step, floor


class StepLowp:
    params = [SIZES, list(LAYOUTS)]
    param_names = ["size", "layout"]
    timeout = 600

    def setup(self, n, layout):
        self.step, _ = _setup(n, layout)
        self.k = steps_per_call(n)

    def time_step(self, n, layout):
        for _ in range(self.k):
            self.step()


class FloorLowp:
    params = [SIZES, list(LAYOUTS)]
    param_names = ["size", "layout"]
    timeout = 600

    def setup(self, n, layout):
        _, self.floor = _setup(n, layout)
        self.k = steps_per_call(n)

    def time_floor(self, n, layout):
        for _ in range(self.k):
            self.floor()


class PercentOfFloorLowp:
    """The layout's step as % of its own byte floor (issue 13 target: >= 90%)."""
    params = [[10**6, 10**7], list(LAYOUTS)]
    param_names = ["size", "layout"]
    unit = "%"
    timeout = 600

    def setup(self, n, layout):
        from fastadam.bench import measure
        self.measure = measure
        self.step, self.floor = _setup(n, layout)

    def track_percent_of_floor(self, n, layout):
        r = self.measure({"step": self.step, "floor": self.floor}, n)
        return 100.0 * r["floor"]["sec"] / r["step"]["sec"]


class OptimizerState:
    """fa.Adam(state_dtype=...).step() on one float32 buffer (float32 state = None), and
    the optimizer's state bytes per parameter."""
    params = [[10**5, 10**6, 10**7], ["float32", "bfloat16", "int8"]]
    param_names = ["size", "state_dtype"]
    timeout = 600

    def setup(self, n, state_dtype):
        import inspect
        if "state_dtype" not in inspect.signature(fa.Adam).parameters:
            raise NotImplementedError("this fastadam has no Adam(state_dtype=...)")
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n).astype(np.float32)
        self.opt = fa.Adam([p], lr=1e-3,
                           state_dtype=None if state_dtype == "float32" else state_dtype)
        self.opt.grads[0][...] = 1e-3 * rng.standard_normal(n).astype(np.float32)
        self.opt.step()
        self.k = steps_per_call(n)

    def time_step(self, n, state_dtype):
        for _ in range(self.k):
            self.opt.step()

    def track_state_bytes_per_param(self, n, state_dtype):
        return self.opt.state_bytes()

    track_state_bytes_per_param.unit = "bytes"


PARAM_LAYOUTS = ["float32", "bfloat16/nearest", "bfloat16/stochastic",
                 "bfloat16/compensation", "bfloat16/master", "int8/nearest",
                 "float16:bfloat16/nearest", "float16:bfloat16/stochastic",
                 "float16:bfloat16/master"]


def _param_layout(n, layout):
    try:
        import ml_dtypes  # noqa: F401
        from fastadam import bench_lowp
    except ImportError:
        raise NotImplementedError("this fastadam has no bench_lowp (or no ml_dtypes)")
    if layout == "float32":
        return bench_lowp.make_layout(n, "float32", param_dtype="float32")
    pdt, _, rest = layout.rpartition(":")      # "float16:..." float16 params, else bfloat16
    sdt, mode = rest.split("/")
    if pdt and pdt not in getattr(bench_lowp, "PARAM_DTYPES", ()):
        raise NotImplementedError(f"this fastadam has no {pdt} parameters in its benchmarks")
    return bench_lowp.make_layout(n, sdt, mode, pdt or "bfloat16")


class OptimizerParamDtype:
    """fa.Adam(...).step() on bfloat16 parameters and gradients (state dtype / way to keep
    precision; "float16:..." float16 ones; "float32" is the float32 step), its ratio to the float32 step and % of its
    own byte floor, both from one interleaved run (fastadam bench --param-dtype)."""
    params = [[10**5, 10**6, 10**7], PARAM_LAYOUTS]
    param_names = ["size", "layout"]
    timeout = 600

    def setup(self, n, layout):
        self.step, self.floor, self.opt = _param_layout(n, layout)
        self.step()
        self.k = steps_per_call(n)

    def time_step(self, n, layout):
        for _ in range(self.k):
            self.step()

    def track_speedup_vs_float32_step(self, n, layout):
        from fastadam.bench import measure
        base, _, _ = _param_layout(n, "float32")
        r = measure({"float32": base, "layout": self.step}, n)
        return r["float32"]["sec"] / r["layout"]["sec"]

    track_speedup_vs_float32_step.unit = "x"

    def track_percent_of_floor(self, n, layout):
        from fastadam.bench import measure
        r = measure({"step": self.step, "floor": self.floor}, n)
        return 100.0 * r["floor"]["sec"] / r["step"]["sec"]

    track_percent_of_floor.unit = "%"
