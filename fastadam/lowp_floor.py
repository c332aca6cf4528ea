"""The byte floor of a low-precision layout (benchmarks only): :func:`floor_lowp` moves
the bytes :func:`fastadam.lowp.adam_step_lowp` would move on the same arrays with
trivial, value-preserving math. Exported from :mod:`fastadam.lowp` too."""
from __future__ import annotations

import numpy as np

from . import config
from .kernels import adam_lowp as A
from .kernels.spec import N_HYPER
from .lowp import _EMPTY32, _layout, _precision_arrays, _u16, pmode_of


def floor_lowp(param, grad, state, *, rounding="nearest"):
    """The byte floor of the step :func:`adam_step_lowp` would take on these arrays:
    the same bytes read and written, trivial value-preserving math (benchmarks only)."""
    prepare_floor(param, grad, state, rounding=rounding)()


def prepare_floor(param, grad, state, *, rounding="nearest"):
    """:func:`floor_lowp` as a callable with the arrays checked once (benchmarks: the
    floor of a small buffer is then not timed with the argument checks)."""
    param_kind, kind, arrays = _layout(param, grad, state)
    pmode = pmode_of(param_kind, arrays, rounding)
    # the floor moves uint16 bits without decoding them: float16 parameters share the
    # bfloat16 floor kernels (one compile fewer per layout)
    kernels = A.build_floor(A.PARAM_BF16 if param_kind == A.PARAM_F16 else param_kind,
                            kind, pmode)
    w, c = _precision_arrays(arrays)
    args = (_u16(param), _u16(grad), _u16(arrays["exp_avg"]), _u16(arrays["exp_avg_sq"]),
            w, c, arrays.get("exp_avg_absmax", _EMPTY32),
            arrays.get("exp_avg_sq_absmax", _EMPTY32), np.zeros(N_HYPER), 1, 0)
    if config.use_parallel(param.shape[0]):
        kernel = kernels[1]

        def run():
            with config.launch_lock():
                kernel(*args)
    else:
        kernel = kernels[0]

        def run():
            kernel(*args)
    return run
