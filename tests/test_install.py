"""A plain install is the fast install: build a fresh virtualenv, ``pip install`` this
checkout with no extras, and check that fastadam runs its parallel steps on numba's tbb
layer there (tbb is a core dependency wherever PyPI has wheels for it).

Slow (a minute or two: the dependencies come from pip's cache, the kernels compile in
the new environment). Skipped, saying why, only when no package index can be reached."""
import os
import platform
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Platforms with tbb wheels on PyPI: the environment markers of pyproject.toml.
HAS_TBB_WHEEL = ((sys.platform.startswith("linux") and platform.machine() == "x86_64")
                 or (sys.platform == "win32" and platform.machine() == "AMD64")
                 or (sys.platform == "darwin" and platform.machine() == "x86_64"))

PARALLEL_STEP = """
    import numba
    import numpy as np
    import fastadam as fa
    from fastadam import config
    from numba.np.ufunc import parallel as P
    assert not P._is_initialized                   # nothing settled at import
    n = 2 * config.PARALLEL_THRESHOLD
    p = np.ones(n, np.float32); g = np.full(n, 0.5, np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    assert config.use_parallel(n)
    fa.adam_step(p, g, m, v, step=1, lr=0.1)
    assert np.allclose(p, 0.9, rtol=0, atol=1e-6), p[:4]
    opt = fa.Adam([np.ones(n, np.float32)], lr=0.1)
    opt.step([g])
    assert np.allclose(opt.param_groups[0]["params"][0], 0.9, rtol=0, atol=1e-6)
    print("LAYER", numba.threading_layer(), fa.threading_layer(), "FROM", fa.__file__)
"""


def _clean_env():
    """The environment for the virtualenv's processes: nothing pointing back at this
    checkout or this interpreter's packages; 2 numba threads so parallel kernels run
    even on a 1-core machine."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "NUMBA_THREADING_LAYER",
                        "NUMBA_CACHE_DIR", "FASTADAM_PARALLEL_THRESHOLD")}
    env["NUMBA_NUM_THREADS"] = "2"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _index_reachable(env):
    """Whether pip can reach a package index (reads the index page of tbb)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "tbb"],
                              env=env, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "tbb" in proc.stdout


def _copy_checkout(dest):
    """The files of this checkout, without build products or caches (pip builds in the
    source tree; the copy keeps the checkout clean)."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "dist", ".asv", ".pytest_cache",
        ".hypothesis", "out", ".venv", "*.nbi", "*.nbc"))


def test_plain_pip_install_runs_parallel_steps_on_tbb(tmp_path):
    env = _clean_env()
    if not _index_reachable(env):
        pytest.skip("no package index reachable (pip index versions tbb failed): cannot "
                    "install fastadam's dependencies into a fresh virtualenv")
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                          text=True, timeout=300)
    if made.returncode != 0 and "ensurepip" in (made.stdout + made.stderr):
        pytest.skip(f"this Python cannot create virtualenvs with pip: {made.stderr[-300:]}")
    assert made.returncode == 0, made.stderr
    py = str(venv / ("Scripts" if os.name == "nt" else "bin") / "python")
    src = tmp_path / "src"
    _copy_checkout(src)

    inst = subprocess.run([py, "-m", "pip", "install", "--quiet", str(src)], env=env,
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert inst.returncode == 0, f"pip install failed:\n{inst.stdout}\n{inst.stderr[-3000:]}"

    frozen = subprocess.run([py, "-m", "pip", "freeze"], env=env, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path).stdout.lower()
    if HAS_TBB_WHEEL:
        assert "tbb==" in frozen, f"tbb was not installed by a plain install:\n{frozen}"

    info = subprocess.run([py, "-m", "fastadam", "info"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert info.returncode == 0, info.stderr[-3000:]
    layer_line = [ln for ln in info.stdout.splitlines() if ln.startswith("threading_layer")]
    assert layer_line, info.stdout

    step = subprocess.run([py, "-c", textwrap.dedent(PARALLEL_STEP)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert step.returncode == 0, f"{step.stdout}\n{step.stderr[-3000:]}"
    assert str(venv) in step.stdout, f"imported fastadam from elsewhere: {step.stdout}"
    if HAS_TBB_WHEEL:
        assert layer_line[0].split()[-1] == "tbb", info.stdout
        assert "LAYER tbb tbb" in step.stdout, step.stdout + step.stderr
        assert "SlowThreadingLayerWarning" not in step.stderr, step.stderr
    else:   # no wheel here: the documented fallback, with its one warning
        assert "LAYER workqueue workqueue" in step.stdout, step.stdout
        assert "SlowThreadingLayerWarning" in step.stderr, step.stderr
