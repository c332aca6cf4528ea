import numpy as np
import pytest

from fastadam import config

DTYPES = [np.float32, np.float64]


@pytest.fixture(params=["serial", "parallel"])
def launch_mode(request, monkeypatch):
    """Run a test once with the serial kernels and once with the parallel ones (threshold
    0), so both paths are held to the same results."""
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 0 if request.param == "parallel" else 1 << 62)
    return request.param


@pytest.fixture
def torch_one_thread():
    """torch's intra-op pool costs milliseconds per small op when other processes hold
    the cores (the test workers do): SparseAdam's coalesce ran ~50x slower with 2
    threads on a loaded 2-core machine. Tensors in these tests are tiny, and neither
    torch's results nor fastadam's (every element updated by one thread with the same
    arithmetic) depend on torch's thread count."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_state(rng, n, dtype, *, amsgrad=False, warm=True):
    """Random parameter, gradient and (warm) moment buffers of length n."""
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    m = (0.1 * rng.standard_normal(n)).astype(dtype) if warm else np.zeros(n, dtype)
    v = (0.01 * rng.random(n)).astype(dtype) if warm else np.zeros(n, dtype)
    vmax = (v + 0.005 * rng.random(n).astype(dtype)) if amsgrad else None
    return p, g, m, v, vmax
