"""The asv suite never rots: `asv check -E existing` imports every benchmark and
validates its parameters against this checkout (skipped when asv is not installed)."""
import os
import shutil
import subprocess

import pytest

import fastadam as fa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fa.__file__)))
ASV_DIR = os.path.join(ROOT, "asv_benches")


@pytest.mark.skipif(shutil.which("asv") is None, reason="asv is not installed")
def test_asv_check_passes_in_existing_environment():
    env = dict(os.environ, ASV_PYTHONPATH=ROOT)
    proc = subprocess.run(["asv", "check", "-E", "existing"], cwd=ASV_DIR, env=env,
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "No problems found" in out, out[-3000:]
