"""Kernel cache: a fresh process can import fastadam and step when the installed package
directory is read-only, and the compiled kernels land in a writable fallback.

Locations, in numba's order of preference (see fastadam/config.py):
1. NUMBA_CACHE_DIR when set; 2. the package's kernels/__pycache__; 3. numba's user-wide
cache ($XDG_CACHE_HOME/numba); 4. fastadam's fallback <tempdir>/fastadam-numba-cache-<uid>.

The package copy is made unwritable twice over: chmod a-w (enough for a normal user)
and a regular *file* named __pycache__ in each package directory (which also stops
root, for whom permission bits do not apply)."""
import glob
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

import fastadam as fa

PKG = os.path.dirname(os.path.abspath(fa.__file__))

STEP = """
    import json
    import numpy as np
    import fastadam as fa
    from fastadam import config
    p, g, m, v = (np.full(1000, x, np.float32) for x in (1.0, 0.5, 0.0, 0.0))
    fa.adam_step(p, g, m, v, step=1)
    assert np.allclose(p, 1.0 - 1e-3), p[:3]
    print(json.dumps({"cache_dir": config.cache_dir(), "file": fa.__file__}))
"""

# The same, through one small cached kernel (the floor kernel, cache=True like every
# kernel, its directory chosen by the same import-time logic): an Adam step compiles
# its launchers from an empty cache for ~10 s of CPU in every fresh process; the tests
# that only check where the cache goes use this.
FLOOR = """
    import json
    import numpy as np
    import fastadam as fa
    from fastadam import config
    from fastadam.kernels.floor import floor_step
    p, g, m, v = (np.full(1000, x, np.float32) for x in (1.0, 0.5, 0.0, 0.0))
    floor_step(p, g, m, v)
    assert np.allclose(p, 1.5), p[:3]
    print(json.dumps({"cache_dir": config.cache_dir(), "file": fa.__file__}))
"""


@pytest.fixture
def readonly_install(tmp_path):
    """A copy of the package in a read-only directory; restores permissions afterwards
    so tmp_path can be cleaned up."""
    site = tmp_path / "site"
    shutil.copytree(PKG, site / "fastadam",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    dirs = [str(site)] + [d for d, _, _ in os.walk(site / "fastadam")]
    for d in dirs[1:]:
        with open(os.path.join(d, "__pycache__"), "w") as f:
            f.write("not a directory: blocks bytecode and numba's in-tree cache\n")
    for d in dirs:
        os.chmod(d, stat.S_IRUSR | stat.S_IXUSR)
    yield site
    for d in dirs:
        os.chmod(d, stat.S_IRWXU)


def run_step(site, env, debug_cache=False, script=STEP):
    full = {k: v for k, v in os.environ.items()
            if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH", "XDG_CACHE_HOME", "TMPDIR")}
    full.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1", **env)
    if debug_cache:
        full["NUMBA_DEBUG_CACHE"] = "1"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=full,
                          capture_output=True, text=True, timeout=180, cwd=str(site))
    assert proc.returncode == 0, (f"fresh process failed on a read-only install:\n"
                                  f"{proc.stderr[-3000:]}")
    import json
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


def cached_files(root):
    return glob.glob(os.path.join(str(root), "**", "*.nbi"), recursive=True)


def test_read_only_install_caches_in_numbas_user_wide_dir(readonly_install, tmp_path):
    xdg = tmp_path / "xdg"
    info, _ = run_step(readonly_install, {"XDG_CACHE_HOME": str(xdg),
                                          "TMPDIR": str(tmp_path)})
    assert info["file"].startswith(str(readonly_install)), "imported the wrong fastadam"
    assert info["cache_dir"] == str(xdg / "numba")
    assert cached_files(xdg), "numba wrote no kernel cache to the user-wide fallback"
    assert not cached_files(readonly_install)


def test_read_only_install_and_home_fall_back_to_tempdir(readonly_install, tmp_path):
    # XDG_CACHE_HOME under a regular file: numba's user-wide cache is unusable too, and
    # without fastadam's fallback numba would refuse to define cached kernels at import.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"XDG_CACHE_HOME": str(blocker / "cache"), "TMPDIR": str(tmpdir)}
    info, _ = run_step(readonly_install, env, script=FLOOR)
    expected = tmpdir / f"fastadam-numba-cache-{os.getuid()}"
    assert info["cache_dir"] == str(expected)
    assert cached_files(expected), "no kernel cache written to the temp-dir fallback"
    # A second fresh process reuses it (loads at least one compiled kernel).
    _, out = run_step(readonly_install, env, debug_cache=True, script=FLOOR)
    assert "data loaded from '" + str(expected) in out, out[-2000:]


def test_numba_cache_dir_wins(readonly_install, tmp_path):
    mine = tmp_path / "mine"
    info, _ = run_step(readonly_install, {"NUMBA_CACHE_DIR": str(mine),
                                          "XDG_CACHE_HOME": str(tmp_path / "xdg")},
                       script=FLOOR)
    assert info["cache_dir"] == str(mine)
    assert cached_files(mine)
    assert not cached_files(tmp_path / "xdg")
