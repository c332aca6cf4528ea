"""``fastadam bench --param-dtype bfloat16,float16``: bfloat16 (``ml_dtypes``) and/or
float16 (IEEE half) parameters and gradients stepped by ``fa.Adam`` (bfloat16 or int8
state; round to nearest, stochastic rounding, Kahan compensation or a float32 master
copy), against the float32 step (float32 parameters and state) and against each layout's
own byte floor, all timed interleaved in one process. The two 16-bit formats move the
same bytes; their rows side by side show what their conversions cost.

The floor of a layout (``fastadam.lowp.floor_lowp``, its arguments checked once) reads
and writes exactly the bytes its step does, with trivial math, over the optimizer's own
arrays: "of floor" = floor time / step time (1.0 = at the memory floor). The float32 step's floor is the same
kernel family on the float32 layout (28 bytes per parameter), so every ratio of a row
comes from one run.
"""
from __future__ import annotations

import numpy as np

#: How a bfloat16 parameter keeps its precision, and the fa.Adam options that say so.
MODES = {"nearest": {}, "stochastic": {"rounding": "stochastic", "seed": 1},
         "compensation": {"compensation": True}, "master": {"master_weights": True}}
STATE_DTYPES = ("bfloat16", "int8", "float32")
PARAM_DTYPES = ("bfloat16", "float16")
#: bytes of state read + written per element and step (int8: + the per-block scales)
_STATE_RW = {"float32": 16.0, "bfloat16": 8.0, "int8": 4.0 + 2 * 2 * 4 / 256}


def bytes_per_param(param_dtype, state_dtype, mode="nearest"):
    """Bytes moved per parameter and step by a layout (docs/low_precision.md, Layouts)."""
    if param_dtype == "float32":
        return 12.0 + _STATE_RW[state_dtype]               # p read + write, g read
    extra = {"nearest": 0.0, "stochastic": 0.0, "compensation": 4.0, "master": 8.0}[mode]
    p = 2.0 if mode == "master" else 4.0                   # master: p is write-only
    return p + 2.0 + extra + _STATE_RW[state_dtype]


def _state_arrays(opt):
    """The optimizer's state arrays of its one parameter, as floor_lowp takes them."""
    return {k: v for k, v in opt.state[0].items() if isinstance(v, np.ndarray)}


def make_layout(n, state_dtype="bfloat16", mode="nearest", param_dtype="bfloat16", seed=0):
    """(step, floor, optimizer) of ``fa.Adam`` over one parameter of n elements
    (``param_dtype`` "bfloat16" or "float16", or "float32" with float32 state: the float32
    step) with a gradient in place; floor is ``floor_lowp`` over the optimizer's own
    arrays."""
    import fastadam as fa
    from .lowp import prepare_floor
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    gx = (1e-3 * rng.standard_normal(n)).astype(np.float32)
    if param_dtype == "float32":
        p = x
        opt = fa.Adam([p], lr=1e-3, state_dtype=state_dtype)
    else:
        if param_dtype == "float16":
            p = x.astype(np.float16)
        else:
            import ml_dtypes
            p = x.astype(ml_dtypes.bfloat16)
        opt = fa.Adam([p], lr=1e-3, state_dtype=state_dtype, **MODES[mode])
    opt.grads[0][...] = gx.astype(p.dtype)
    g, st = opt.grads[0].reshape(-1), _state_arrays(opt)
    flat = p.reshape(-1)
    rounding = "stochastic" if mode == "stochastic" else "nearest"
    return opt.step, prepare_floor(flat, g, st, rounding=rounding), opt


def param_dtype_rows(param_dtype="bfloat16", states=("bfloat16",), modes=tuple(MODES),
                     sizes=None, quick=False, threads=None):
    """Rows of ``fastadam bench --param-dtype``: per size, the float32 step and floor and,
    for every 16-bit ``param_dtype`` (a name of PARAM_DTYPES or a sequence of them) and
    (state_dtype, mode), that layout's step and floor, one process."""
    from . import config
    from .bench import _load, _progress, machine_info, measure
    pdts = (param_dtype,) if isinstance(param_dtype, str) else tuple(param_dtype)
    if not pdts or any(d not in PARAM_DTYPES for d in pdts) or len(set(pdts)) != len(pdts):
        raise ValueError(f"param_dtype must be one of {PARAM_DTYPES} or a sequence of "
                         f"them without repeats, got {param_dtype!r}")
    for s in states:
        if s not in STATE_DTYPES:
            raise ValueError(f"states must be among {STATE_DTYPES}, got {s!r}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"modes must be among {tuple(MODES)}, got {m!r}")
    if threads is not None:
        config.set_num_threads(threads)
    rows = []
    for n in sizes or [10**5, 10**6, 10**7]:
        fns, meta = {}, {}
        fns["float32"], fns["float32 floor"], opt = make_layout(n, "float32",
                                                                param_dtype="float32")
        meta["float32"] = ("float32", "float32", "-", opt.state_bytes())
        for sd in states:
            for mode in modes:
                for pdt in pdts:
                    key = f"{pdt}/{sd}/{mode}"
                    fns[key], fns[key + " floor"], opt = make_layout(n, sd, mode, pdt)
                    meta[key] = (pdt, sd, mode, opt.state_bytes())
        _progress(f"param dtype {','.join(pdts)}: {len(meta)} layouts at n={n}")
        r = measure(fns, n, quick=quick)
        base = r["float32"]["sec"]
        for key, (pdt, sd, mode, sbytes) in meta.items():
            step, floor = r[key]["sec"], r[key + " floor"]["sec"]
            rows.append({"n": n, "param_dtype": pdt, "state_dtype": sd, "mode": mode,
                         "ms": 1e3 * step, "floor_ms": 1e3 * floor,
                         "speedup_vs_float32": base / step, "of_floor": floor / step,
                         "bytes_per_param_step": bytes_per_param(
                             pdt, sd, mode if mode != "-" else "nearest"),
                         "state_bytes_per_param": sbytes})
    return {"machine": machine_info(), "load": _load(), "rows": rows}


def format_param_dtype_rows(res):
    head = (f"{'n':>10}  {'params':>8}  {'state':>8}  {'mode':>12}  {'B/param':>7}  "
            f"{'ms/step':>9}  {'floor ms':>9}  {'of floor':>8}  {'x fp32':>7}  "
            f"{'state B/p':>9}")
    lines = [head]
    for r in res["rows"]:
        lines.append(f"{r['n']:>10.0e}  {r['param_dtype']:>8}  {r['state_dtype']:>8}  "
                     f"{r['mode']:>12}  {r['bytes_per_param_step']:>7.2f}  {r['ms']:>9.3f}  "
                     f"{r['floor_ms']:>9.3f}  {r['of_floor']:>8.2f}  "
                     f"{r['speedup_vs_float32']:>7.2f}  {r['state_bytes_per_param']:>9.3f}")
    lines.append(f"(load {res['load']}; one process, interleaved; 'of floor' = floor time / "
                 "step time, 'x fp32' = float32 step time / step time; ratios are what to "
                 "read)")
    return "\n".join(lines)
