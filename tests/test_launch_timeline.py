"""scripts/launch_timeline.py: its instrumented kernel is the shipped Adam step (same
results as fa.adam_step, serial and parallel alike), it records every block, and its
report is complete. Nothing timed is asserted."""
import importlib.util
import json
import pathlib
import platform

import numpy as np
import pytest

import fastadam as fa

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the script reads the x86 time-stamp counter")

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "launch_timeline.py"


@pytest.fixture(scope="module")
def lt():
    spec = importlib.util.spec_from_file_location("launch_timeline", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fa.config.ensure_threading()     # settle the layer before the script's own prange
    return mod


def test_instrumented_kernels_compute_the_adam_step(lt):
    n = 3 * lt.BLOCK + 1001                      # a partial last block too
    p, g, m, v, sc = lt.buffers(n)
    ref = [p.copy(), g, m.copy(), v.copy()]
    # the script's scalars are those of lr=1e-4, eps=1e-8 "hat", no bias correction
    fa.adam_step(ref[0], ref[1], ref[2], ref[3], step=1, lr=1e-4, eps=1e-8,
                 bias_correction=False, eps_mode="hat")
    nb = (n + lt.BLOCK - 1) // lt.BLOCK
    rec = np.full((nb, 4), -1, np.int64)
    par = [p.copy(), g, m.copy(), v.copy()]
    assert lt._timed_parallel(*par, sc, rec, True) > 0
    ser = [p.copy(), g, m.copy(), v.copy()]
    assert lt._timed_serial(*ser, sc, True) > 0
    for got in (par, ser):
        for a, b in zip(got, ref):
            assert np.array_equal(a.view(np.int32), b.view(np.int32))
    assert ((rec[:, 0] >= 0) & (rec[:, 0] < fa.get_num_threads())).all()
    assert ((rec[:, 1] >= 0) & (rec[:, 2] >= rec[:, 1]) & (rec[:, 3] >= 0)).all()


def test_floor_kernel_is_the_floor(lt):
    n = 2 * lt.BLOCK + 7
    p, g, m, v, sc = lt.buffers(n)
    want = (p + g, m + g, v + g)
    rec = np.zeros((3, 4), np.int64)
    lt._timed_parallel(p, g, m, v, sc, rec, False)
    for a, b in zip((p, m, v), want):
        assert np.array_equal(a, b)


def test_report(lt, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert lt.main(["--n", "40000", "--launches", "5", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["kernel"] for r in res] == ["adam", "floor"]
    for r in res:
        assert r["blocks"] == 3 and r["launches"] == 5
        assert 0 <= r["worker_on_other_cpu"] <= r["worker_joined"] <= 5
        assert r["serial_us_p10_p50"][0] > 0
        if r["worker_joined"] < 5:
            assert r["parallel_us_alone_p10_p50"][0] > 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
