"""Thread controls and thread safety: set_num_threads / threads(), bit-identical results
for any thread count, concurrent steps from Python threads, stepping in a forked child.

Anything that could abort or hang the interpreter runs in a subprocess, so a crash fails
the test instead of killing pytest."""
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

import fastadam as fa
from fastadam import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fa.__file__)))
MAX_THREADS = numba.config.NUMBA_NUM_THREADS
needs_two = pytest.mark.skipif(MAX_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")


def run_python(code, env=None, timeout=120):
    """Run ``code`` in a fresh interpreter importing this checkout's fastadam."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([ROOT, full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- set_num_threads, threads()
@pytest.mark.parametrize("bad", [1.0, "2", None, True])
def test_set_num_threads_rejects_non_int(bad):
    before = fa.get_num_threads()
    with pytest.raises(TypeError, match="n must be an int"):
        fa.set_num_threads(bad)
    assert fa.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, MAX_THREADS + 1])
def test_set_num_threads_rejects_out_of_range(bad):
    before = fa.get_num_threads()
    with pytest.raises(ValueError, match="between 1 and"):
        fa.set_num_threads(bad)
    assert fa.get_num_threads() == before


def test_set_num_threads_accepts_python_and_numpy_ints_in_range():
    before = fa.get_num_threads()
    try:
        fa.set_num_threads(1)
        assert fa.get_num_threads() == 1
        fa.set_num_threads(np.int64(MAX_THREADS))
        assert fa.get_num_threads() == MAX_THREADS
    finally:
        numba.set_num_threads(before)


def test_threads_context_sets_and_restores():
    before = fa.get_num_threads()
    with fa.threads(1):
        assert fa.get_num_threads() == 1
    assert fa.get_num_threads() == before


def test_threads_context_restores_on_error():
    before = fa.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        with fa.threads(1):
            raise RuntimeError("boom")
    assert fa.get_num_threads() == before


def test_threads_context_nested_restores_each_level():
    before = fa.get_num_threads()
    with fa.threads(MAX_THREADS):
        with fa.threads(1):
            assert fa.get_num_threads() == 1
        assert fa.get_num_threads() == MAX_THREADS
    assert fa.get_num_threads() == before


def test_threads_context_invalid_count_changes_nothing():
    before = fa.get_num_threads()
    with pytest.raises(ValueError):
        with fa.threads(0):
            pytest.fail("the block must not run")
    assert fa.get_num_threads() == before


def test_threading_layer_is_reported():
    assert fa.threading_layer() in ("tbb", "workqueue", "omp")
    assert config.ensure_threading() == fa.threading_layer() == numba.threading_layer()


# ---------------------------------------------------------------- no surprises at import
IMPORT_LEAVES_NUMBA_ALONE = """
    import os, sys
    import numba
    from numba.np.ufunc import parallel as P
    before = numba.config.THREADING_LAYER

    def tbb_mapped():
        if not os.path.exists("/proc/self/maps"):
            return False
        with open("/proc/self/maps") as f:
            return "libtbb" in f.read()

    import numpy as np
    import fastadam as fa
    from fastadam import config
    assert numba.config.THREADING_LAYER == before, numba.config.THREADING_LAYER
    assert not P._is_initialized, "import fastadam started numba's thread pool"
    assert not tbb_mapped(), "import fastadam loaded libtbb"
    # Small buffers run serially and settle nothing either.
    p = np.zeros(1000, np.float32); g = np.ones_like(p)
    m, v = np.zeros_like(p), np.zeros_like(p)
    fa.adam_step(p, g, m, v, step=1)
    fa.Adam([p]).step([g])
    assert not P._is_initialized and config._layer is None
    assert numba.config.THREADING_LAYER == before
    # The first parallel launch settles the layer, once.
    n = 2 * config.PARALLEL_THRESHOLD
    p = np.zeros(n, np.float32); g = np.ones_like(p)
    m, v = np.zeros_like(p), np.zeros_like(p)
    fa.adam_step(p, g, m, v, step=1)
    assert P._is_initialized
    layer = numba.threading_layer()
    assert config._layer == layer == fa.threading_layer()
    print("LAYER", layer, "MAPPED", tbb_mapped(), "OK")
"""


def test_import_does_not_touch_numba_threading():
    proc = run_python(IMPORT_LEAVES_NUMBA_ALONE,
                      env={"NUMBA_THREADING_LAYER": "", "FASTADAM_PARALLEL_THRESHOLD": ""})
    _check_ok(proc)
    if numba.config.NUMBA_NUM_THREADS > 1 and fa.threading_layer() == "tbb":
        # tbb is loadable here, so the first parallel launch chose it (and loaded libtbb).
        assert "LAYER tbb" in proc.stdout, proc.stdout
        if sys.platform.startswith("linux"):
            assert "MAPPED True" in proc.stdout, proc.stdout


USER_LAYER_IN_CODE = """
    import numpy as np
    import numba
    import fastadam as fa
    from fastadam import config
    numba.config.THREADING_LAYER = "workqueue"     # set in code after import fastadam
    n = 2 * config.PARALLEL_THRESHOLD
    p = np.zeros(n, np.float32); g = np.ones_like(p)
    m, v = np.zeros_like(p), np.zeros_like(p)
    fa.adam_step(p, g, m, v, step=1)
    assert config._launch_lock is not None         # workqueue is not thread-safe
    print("LAYER", fa.threading_layer(), "OK")
"""

POOL_STARTED_FIRST = """
    import numpy as np
    import numba
    numba.config.THREADING_LAYER = "workqueue"

    @numba.njit(parallel=True)
    def user_kernel(x):
        for i in numba.prange(x.shape[0]):
            x[i] += 1.0

    user_kernel(np.zeros(10))                      # the user's own pool starts first
    import fastadam as fa
    from fastadam import config
    assert config.ensure_threading() == "workqueue"
    assert config._launch_lock is not None
    print("LAYER", fa.threading_layer(), "OK")
"""


@pytest.mark.parametrize("code", [USER_LAYER_IN_CODE, POOL_STARTED_FIRST],
                         ids=["config-set-in-code", "pool-started-first"])
def test_users_layer_choice_is_honoured(code):
    proc = run_python(code, env={"NUMBA_THREADING_LAYER": ""})
    _check_ok(proc, expect_layer="workqueue")


NO_TBB_FALLBACK = """
    import os, warnings
    import numpy as np
    import fastadam as fa
    from fastadam import config
    config._load_tbb = lambda: False               # as on a platform without tbb wheels
    n = 2 * config.PARALLEL_THRESHOLD
    p = np.zeros(n, np.float32); g = np.ones_like(p)
    m, v = np.zeros_like(p), np.zeros_like(p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(1, 4):
            fa.adam_step(p, g, m, v, step=t)
            fa.Adam([p]).step([g])
    slow = [str(w.message) for w in caught
            if issubclass(w.category, config.SlowThreadingLayerWarning)]
    user_chose = bool(os.environ.get("NUMBA_THREADING_LAYER"))
    assert len(slow) == (0 if user_chose else 1), slow
    for text in slow:
        assert "'workqueue'" in text and "tbb" in text and "NUMBA_THREADING_LAYER" in text
    assert config._launch_lock is not None
    print("LAYER", fa.threading_layer(), "OK")
"""


@needs_two
@pytest.mark.parametrize("chosen", ["", "workqueue"], ids=["fallback", "user-chose"])
def test_without_tbb_workqueue_runs_and_warns_once_unless_chosen(chosen):
    # Without TBB fastadam falls back to workqueue (locked) and says so once; a layer the
    # user chose runs without a warning.
    proc = run_python(NO_TBB_FALLBACK, env={"NUMBA_THREADING_LAYER": chosen,
                                            "NUMBA_NUM_THREADS": "2"})
    _check_ok(proc, expect_layer="workqueue")


def test_use_parallel_follows_the_calling_threads_count(monkeypatch):
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 10)
    with fa.threads(1):
        assert not config.use_parallel(100)
    if MAX_THREADS > 1:
        with fa.threads(2):
            assert config.use_parallel(100)
    assert not config.use_parallel(9)


def test_portable_mode_asks_numba_for_the_thread_count():
    proc = run_python("""
        import numba
        from fastadam import config
        config.ensure_threading()
        assert config._thread_count is numba.get_num_threads, config._thread_count
        print("OK")
    """, env={"FASTADAM_PORTABLE": "1"})
    _check_ok(proc)


def test_thread_controls_settle_the_layer_first():
    # set_num_threads starts numba's pool; fastadam must have chosen the layer by then.
    proc = run_python("""
        import numba
        import fastadam as fa
        from fastadam import config
        fa.set_num_threads(1)
        assert config._layer == numba.threading_layer()
        print("LAYER", config._layer, "OK")
    """, env={"NUMBA_THREADING_LAYER": ""})
    _check_ok(proc)


@pytest.mark.parametrize("text,expected", [("", 5), ("1000", 1000), ("1e5", 100000),
                                           (" 0 ", 0)])
def test_threshold_env_values_are_parsed(text, expected, monkeypatch):
    monkeypatch.setenv("FASTADAM_TEST_INT", text)
    assert config._env_int("FASTADAM_TEST_INT", 5) == expected


@pytest.mark.parametrize("text", ["abc", "-3", "inf"])
def test_bad_threshold_env_value_warns_and_keeps_default(text, monkeypatch):
    monkeypatch.setenv("FASTADAM_TEST_INT", text)
    with pytest.warns(RuntimeWarning, match="FASTADAM_TEST_INT"):
        assert config._env_int("FASTADAM_TEST_INT", 5) == 5


# ---------------------------------------------------------------- bit-identical results
def _run_functional(n, dtype, flags, steps=5):
    rng = np.random.default_rng(7)
    p = rng.standard_normal(n).astype(dtype)
    m = np.zeros(n, dtype)
    v = np.zeros(n, dtype)
    vmax = np.zeros(n, dtype) if flags.get("amsgrad") else None
    for t in range(1, steps + 1):
        g = rng.standard_normal(n).astype(dtype)
        fa.adam_step(p, g, m, v, step=t, lr=1e-2, max_exp_avg_sq=vmax, **flags)
    return [p, m, v] + ([vmax] if vmax is not None else [])


def _run_object(sizes, dtype, cls, kw, steps=5):
    rng = np.random.default_rng(11)
    params = [rng.standard_normal(k).astype(dtype) for k in sizes]
    opt = cls(params, lr=1e-2, **kw)
    for _ in range(steps):
        opt.step([rng.standard_normal(k).astype(dtype) for k in sizes])
    return params + [x for st in opt.state.values() for k, x in sorted(st.items())
                     if isinstance(x, np.ndarray)]


def _assert_bitwise_equal(a_list, b_list):
    assert len(a_list) == len(b_list)
    for i, (a, b) in enumerate(zip(a_list, b_list)):
        assert a.dtype == b.dtype and a.shape == b.shape
        bits = np.uint32 if a.dtype == np.float32 else np.uint64
        diff = np.flatnonzero(a.view(bits) != b.view(bits))
        assert diff.size == 0, (f"array {i}: {diff.size} elements differ between thread "
                                f"counts, first at {diff[:5]}")


FUNCTIONAL_FLAGS = [dict(), dict(amsgrad=True), dict(weight_decay=0.1),
                    dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True)]


@needs_two
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("flags", FUNCTIONAL_FLAGS, ids=["plain", "amsgrad", "l2", "adamw-max"])
def test_adam_step_bit_identical_for_1_and_2_threads(dtype, flags, monkeypatch):
    # 3 * BLOCK + 5 elements: several parallel blocks and a ragged tail.
    n = 3 * config.BLOCK + 5
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 0)
    with fa.threads(1):
        one = _run_functional(n, dtype, flags)
    with fa.threads(2):
        assert config.use_parallel(n)
        two = _run_functional(n, dtype, flags)
    _assert_bitwise_equal(one, two)


@needs_two
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kw", [(fa.Adam, {}), (fa.Adam, {"amsgrad": True}),
                                    (fa.AdamW, {"weight_decay": 0.05})],
                         ids=["adam", "amsgrad", "adamw"])
def test_optimizer_step_bit_identical_for_1_and_2_threads(dtype, cls, kw, monkeypatch):
    sizes = [7, config.BLOCK + 3, 1000, 2 * config.BLOCK]
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 0)
    with fa.threads(1):
        one = _run_object(sizes, dtype, cls, kw)
    with fa.threads(2):
        two = _run_object(sizes, dtype, cls, kw)
    _assert_bitwise_equal(one, two)


# ---------------------------------------------------------------- concurrency (subprocess)
CONCURRENT = """
    import threading
    import numpy as np
    import fastadam as fa
    from fastadam import config

    N_THREADS, STEPS, SIZES = 4, 30, [40000, 3000, 50000]

    def train(seed, out, serial=False):
        rng = np.random.default_rng(seed)
        params = [rng.standard_normal(k).astype(np.float32) for k in SIZES]
        opt = fa.Adam(params, lr=1e-2, amsgrad=bool(seed % 2))
        flat = rng.standard_normal(60000).astype(np.float32)
        m, v = np.zeros_like(flat), np.zeros_like(flat)
        grads = [rng.standard_normal(k).astype(np.float32) for k in SIZES]
        g_flat = rng.standard_normal(60000).astype(np.float32)
        for t in range(1, STEPS + 1):
            opt.step(grads)                           # table kernels
            fa.adam_step(flat, g_flat, m, v, step=t)  # flat kernels
        out[seed] = [p.copy() for p in params] + [flat.copy()]

    results, errors = {}, []

    def worker(seed):
        try:
            train(seed, results)
        except BaseException as e:  # noqa: BLE001 - reported to the parent test
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # Same training, one Python thread at a time and serial kernels: must match exactly.
    config.PARALLEL_THRESHOLD = 1 << 62
    expected = {}
    for s in range(N_THREADS):
        train(s, expected)
    for s in range(N_THREADS):
        for a, b in zip(results[s], expected[s]):
            assert np.array_equal(a, b), f"thread {s}: concurrent result differs"
    print("LAYER", fa.threading_layer(), "OK")
"""


def _check_ok(proc, expect_layer=None):
    assert proc.returncode == 0, (f"subprocess failed (code {proc.returncode}; negative = "
                                  f"killed by signal)\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr[-3000:]}")
    assert "OK" in proc.stdout, proc.stdout
    if expect_layer:
        assert f"LAYER {expect_layer}" in proc.stdout, proc.stdout


@needs_two
def test_concurrent_steps_from_python_threads_default_layer():
    # Threshold 0: every launch is parallel, the case that aborts an unguarded workqueue.
    proc = run_python(CONCURRENT, env={"FASTADAM_PARALLEL_THRESHOLD": "0"})
    _check_ok(proc, expect_layer=fa.threading_layer())


@needs_two
def test_concurrent_steps_from_python_threads_workqueue_uses_lock():
    # workqueue aborts the process ("Concurrent access has been detected") when two Python
    # threads launch at once; fastadam's launch lock must serialise them.
    proc = run_python(CONCURRENT, env={"FASTADAM_PARALLEL_THRESHOLD": "0",
                                       "NUMBA_THREADING_LAYER": "workqueue"})
    _check_ok(proc, expect_layer="workqueue")


FORK = """
    import multiprocessing as mp
    import numpy as np
    import fastadam as fa

    def steps(n_steps=3):
        rng = np.random.default_rng(3)
        p = rng.standard_normal(100000).astype(np.float32)
        g = rng.standard_normal(100000).astype(np.float32)
        m, v = np.zeros_like(p), np.zeros_like(p)
        for t in range(1, n_steps + 1):
            fa.adam_step(p, g, m, v, step=t)
        parts = [p[:70000].copy(), p[70000:].copy()]
        opt = fa.Adam(parts)
        opt.step([g[:70000].copy(), g[70000:].copy()])
        return np.concatenate([p] + parts)

    def child(conn):
        conn.send(steps())
        conn.close()

    expected = steps()      # the parent's thread pool is running before the fork
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe()
    proc = ctx.Process(target=child, args=(b,))
    proc.start()
    got = a.recv()
    proc.join(60)
    assert proc.exitcode == 0, proc.exitcode
    assert np.array_equal(got, expected), "forked child computed a different step"
    print("LAYER", fa.threading_layer(), "OK")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_can_step():
    proc = run_python(FORK, env={"FASTADAM_PARALLEL_THRESHOLD": "0"}, timeout=90)
    _check_ok(proc)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_can_step_with_workqueue():
    proc = run_python(FORK, env={"FASTADAM_PARALLEL_THRESHOLD": "0",
                                 "NUMBA_THREADING_LAYER": "workqueue"}, timeout=90)
    _check_ok(proc, expect_layer="workqueue")
