"""`fastadam bench` / `fastadam info`: runs end to end at tiny sizes and reports what it
promises. Never asserts on speed: timings here are meaningless (quick mode, busy CI)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastadam as fa
from fastadam import bench, bench_report, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fa.__file__)))
HAVE_TORCH = bench._have("torch")


def run_module(*args, timeout=240):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "fastadam", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run():
    """One `python -m fastadam bench --quick --json` run shared by the tests below."""
    proc = run_module("bench", "--quick", "--json", "--sizes", "1e3,2e4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr


def test_bench_json_has_every_section(quick_run):
    res, _ = quick_run
    for key in ("machine", "sizes", "dtypes", "fastadam", "peers", "cold_start", "targets"):
        assert key in res, f"missing {key!r} in bench --json output"
    assert res["sizes"] == [1000, 20000]
    assert res["dtypes"] == ["float32", "float64"]
    m = res["machine"]
    for key in ("threading_layer", "num_threads", "parallel_threshold", "numba",
                "numpy", "fastadam", "numba_cache_dir"):
        assert key in m, f"machine info lacks {key!r}"


def test_bench_measures_floor_and_step_for_every_size_and_dtype(quick_run):
    res, _ = quick_run
    fa_res = res["fastadam"]
    for impl in ("flat", "floor"):
        for dtype in ("float32", "float64"):
            for n in ("1000", "20000"):
                d = fa_res[impl][dtype][n]
                assert d["sec"] > 0 and d["p25"] <= d["sec"] <= d["p75"], (impl, dtype, n, d)
                assert d["samples"] >= 5
    for case in ("object_1e3_2arrays", "many_100x1e4", "many_100x1e4_flat"):
        assert fa_res["cases"][case]["sec"] > 0, case
    assert fa_res["threading_layer"] == res["machine"]["threading_layer"]
    if fa_res["num_threads"] >= 2:
        assert fa_res["threads"]["sec_1"]["sec"] > 0


def test_bench_runs_numpy_and_torch_peers(quick_run):
    res, _ = quick_run
    assert res["peers"]["numpy"]["flat"]["float64"]["20000"]["sec"] > 0
    if HAVE_TORCH:
        torch = res["peers"]["torch"]
        assert "error" not in torch, torch
        assert torch["flat"]["float32"]["1000"]["sec"] > 0
        assert torch["cases"]["object_1e3_2arrays"]["sec"] > 0
    else:
        assert res["peers"]["torch"] == {"error": "not installed"}


def test_bench_cold_start_is_measured(quick_run):
    res, _ = quick_run
    warm = res["cold_start"]["warm"]
    assert warm["beyond_numba"] > 0 and warm["import_numba"] > 0
    assert warm["beyond_numba"] >= warm["import_fastadam"]


def test_bench_targets_each_have_a_verdict(quick_run):
    res, _ = quick_run
    whats = [t["what"] for t in res["targets"]]
    assert len(whats) == len(set(whats)) >= 10
    for t in res["targets"]:
        assert set(t) == {"what", "target", "measured", "met"}
        if t["target"] != "-":      # "-": an informational row, measured but no target
            assert (t["measured"] is None) == (t["met"] is None), t
    # 1e7 was not measured in this run, so its target must say so rather than guess.
    t = next(t for t in res["targets"] if t["what"].startswith("float32 step 1e+07"))
    assert t["met"] is None


def test_bench_shows_progress_on_stderr(quick_run):
    _, stderr = quick_run
    assert "[fastadam bench]" in stderr
    assert "numpy" in stderr and "cold start" in stderr


def test_report_table_lists_sizes_ratios_and_targets(quick_run):
    res, _ = quick_run
    text = bench_report.format_report(res)
    assert "threading layer " + res["machine"]["threading_layer"] in text
    assert "% floor" in text and "x numpy" in text and "GB/s" in text
    assert "1e+03" in text and "2e+04" in text
    assert "Targets" in text and ("met" in text or "NOT MET" in text)


def test_plot_writes_png(quick_run, tmp_path):
    pytest.importorskip("matplotlib")
    res, _ = quick_run
    out = tmp_path / "bench.png"
    bench_report.plot(res, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _fake(sec):
    return {"sec": sec, "p25": sec, "p75": sec, "samples": 5}


def test_targets_compare_the_right_ratios():
    # fastadam at 1e7 takes 10 ms, the floor 9.4 ms: 0.94 x floor, just short of 0.95.
    res = {"fastadam": {"flat": {"float32": {"10000000": _fake(10e-3), "100000": _fake(1e-5),
                                             "1000": _fake(1.2e-6)}},
                        "floor": {"float32": {"10000000": _fake(9.4e-3)}},
                        "cases": {"object_1e3_2arrays": _fake(2e-6),
                                  "object_1e3_2arrays_list": _fake(4e-6),
                                  "many_100x1e4": _fake(470e-6),
                                  "many_100x1e4_flat": _fake(400e-6)},
                        "threads": {"threads": 2, "sec_n": _fake(1.0), "sec_1": _fake(1.8)}},
           "peers": {"torch": {"flat": {"float32": {"100000": _fake(1.9e-5),
                                                    "1000": _fake(30e-6)}},
                               "cases": {"object_1e3_2arrays": _fake(60e-6),
                                         "many_100x1e4": _fake(1300e-6)}}},
           "cold_start": {"warm": {"beyond_numba": 0.6}}}
    got = {t["what"]: (t["measured"], t["met"]) for t in bench_report.targets(res)}
    assert got["float32 step 1e+07 vs floor"] == (0.94, False)
    assert got["float32 step 1e+08 vs floor"] == (None, None)
    assert got["float32 step 1e5 vs torch fused"] == (1.9, False)
    assert got["object API step (opt.grads), 1e3 params in 2 arrays, vs torch fused"] == (30.0, True)
    assert got["  same with a grads list each step, vs torch fused"] == (15.0, False)
    assert got["  same with a grads list each step: microseconds"] == (4.0, False)
    assert got["functional adam_step, float32 1e3: microseconds"] == (1.2, True)
    assert got["functional adam_step, float32 1e3, vs torch fused"] == (25.0, True)
    assert got["100 separate arrays of 1e4 vs flat path"] == (0.851, False)
    assert got["100 separate arrays of 1e4 vs torch fused"] == (2.766, False)
    assert got["2 threads vs 1, float32 1e6"] == (1.8, True)
    assert got["cold start, warm cache: import + first step beyond import numba"] == (0.6, False)


def test_merge_runs_takes_the_median_run_per_figure():
    runs = [{"flat": {"float32": {"1000": _fake(s)}}, "cases": {"x": _fake(c)}, "layer": "tbb"}
            for s, c in ((3.0, 1.0), (1.0, 9.0), (2.0, 5.0))]
    merged = bench.merge_runs(runs)
    assert merged["flat"]["float32"]["1000"]["sec"] == 2.0
    assert merged["cases"]["x"]["sec"] == 5.0
    assert merged["layer"] == "tbb"
    assert bench.merge_runs([{"error": "boom"}]) == {"error": "boom"}


def test_merge_runs_keeps_step_and_floor_from_the_same_run():
    runs = [{"flat": {"float32": {"1000": _fake(s)}}, "floor": {"float32": {"1000": _fake(f)}}}
            for s, f in ((3.0, 0.1), (1.0, 0.2), (2.0, 0.9))]
    merged = bench.merge_runs(runs)
    assert merged["flat"]["float32"]["1000"]["sec"] == 2.0
    assert merged["floor"]["float32"]["1000"]["sec"] == 0.9


def test_numpy_peer_matches_fastadam():
    # The NumPy peer must compute Adam, or its ratios would be meaningless.
    rng = np.random.default_rng(0)
    p, g, m, v = (rng.random(1000) for _ in range(4))
    q, mm, vv = p.copy(), m.copy(), v.copy()
    from fastadam.bench_workers import numpy_adam_step
    numpy_adam_step(p, g, m, v, 3)
    fa.adam_step(q, g, mm, vv, step=3)
    np.testing.assert_allclose(p, q, rtol=1e-12)
    np.testing.assert_allclose(v, vv, rtol=1e-12)


@pytest.mark.parametrize("args,msg", [
    (["bench", "--dtypes", "float16"], "--dtypes"),
    (["bench", "--peers", "jax"], "unknown peer"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--runs", "0"], "--runs"),
])
def test_bench_rejects_bad_arguments(args, msg, capsys):
    assert cli.main(args) == 2
    assert msg in capsys.readouterr().err


def test_bench_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--sizes", "1e3,abc"])
    assert e.value.code == 2
    assert "sizes" in capsys.readouterr().err


def test_info_reports_threading_layer_and_threshold():
    proc = run_module("info", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "threading_layer" in proc.stdout and "parallel_threshold" in proc.stdout
    assert fa.threading_layer() in proc.stdout


# ------------------------------------------------------------ --param-dtype bfloat16,float16
# Each bfloat16 / float16 layout compiles its own step and floor kernels (a few seconds
# of compiling each). The tests below time only a few of them, mostly float32-state ones,
# which test_lowp.py's tiny-update test compiles anyway (the same fa.Adam options); the
# numerics of every layout are held to the reference in test_lowp*.py.
def test_bench_param_dtype_rows_from_one_run():
    pytest.importorskip("ml_dtypes")
    from fastadam import bench_lowp
    # one mode: the other modes' rows come from the same loop, their steps and floors are
    # checked below (test_bench_param_dtype_layout_steps_and_floor_preserves), their byte
    # counts from bytes_per_param here
    modes = ["master"]
    res = bench_lowp.param_dtype_rows("bfloat16", states=["float32", "int8"], modes=modes,
                                      sizes=[1000], quick=True)
    rows = res["rows"]
    keys = [(r["param_dtype"], r["state_dtype"], r["mode"]) for r in rows]
    assert keys == [("float32", "float32", "-")] + [
        ("bfloat16", s, m) for s in ("float32", "int8") for m in modes]
    scale = 2 * 2 * 4 / 256          # int8: two float32 absmax per 256 elements, r + w
    assert [r["bytes_per_param_step"] for r in rows] == [28, 28, 16 + scale]
    every = ["nearest", "stochastic", "compensation", "master"]
    assert [bench_lowp.bytes_per_param("bfloat16", s, m) for s in ("bfloat16", "int8")
            for m in every] == [14, 14, 18, 20, 10 + scale, 10 + scale, 14 + scale, 16 + scale]
    blocks = 2 * 4 * 4 / 1000        # 4 blocks of 256 for 1000 elements, two scales each
    # a master copy adds its 4 bytes per parameter to the state
    assert [r["state_bytes_per_param"] for r in rows] == [8, 12, 6 + blocks]
    base = rows[0]["ms"]
    for r in rows:
        assert r["ms"] > 0 and r["floor_ms"] > 0
        assert r["speedup_vs_float32"] == pytest.approx(base / r["ms"])
        assert r["of_floor"] == pytest.approx(r["floor_ms"] / r["ms"])
    text = bench_lowp.format_param_dtype_rows(res)
    assert "of floor" in text and "x fp32" in text and "master" in text


def test_bench_float16_rows_beside_bfloat16():
    """float16 rows next to bfloat16 ones, one run: one layout of each (one float16 kernel
    compiled: the float16 floor is the bfloat16 one); float16 moves the bytes of bfloat16
    in every mode."""
    pytest.importorskip("ml_dtypes")
    from fastadam import bench_lowp
    res = bench_lowp.param_dtype_rows(("bfloat16", "float16"), states=["float32"],
                                      modes=["nearest"], sizes=[1000], quick=True)
    rows = res["rows"]
    assert [(r["param_dtype"], r["state_dtype"], r["mode"]) for r in rows] == [
        ("float32", "float32", "-"), ("bfloat16", "float32", "nearest"),
        ("float16", "float32", "nearest")]
    assert [r["bytes_per_param_step"] for r in rows] == [28, 22, 22]
    assert [r["state_bytes_per_param"] for r in rows] == [8, 8, 8]
    for r in rows:
        assert r["ms"] > 0 and r["floor_ms"] > 0
    for s in ("bfloat16", "int8"):
        for m in bench_lowp.MODES:
            assert bench_lowp.bytes_per_param("float16", s, m) == \
                bench_lowp.bytes_per_param("bfloat16", s, m)
    assert "float16" in bench_lowp.format_param_dtype_rows(res)
    with pytest.raises(ValueError, match="param_dtype"):
        bench_lowp.param_dtype_rows(("float16", "float16"), sizes=[1000])


# Every mode (float32 state), int8 state and float16 parameters: the layouts the two
# tests above time.
@pytest.mark.parametrize("param_dtype,state_dtype,mode", [
    ("bfloat16", "float32", "nearest"), ("bfloat16", "float32", "master"),
    ("bfloat16", "float32", "compensation"), ("bfloat16", "float32", "stochastic"),
    ("bfloat16", "int8", "master"), ("float16", "float32", "nearest")])
def test_bench_param_dtype_layout_steps_and_floor_preserves(param_dtype, state_dtype, mode):
    # what is timed: the step changes the bfloat16 parameters; the floor reads and writes
    # the same arrays without changing a value (with a master copy the parameter is
    # write-only, in the floor as in the step: the floor writes zeros, the step the
    # rounded master)
    pytest.importorskip("ml_dtypes")
    from fastadam import bench_lowp
    step, floor, opt = bench_lowp.make_layout(3000, state_dtype, mode, param_dtype)
    p = opt.param_groups[0]["params"][0]
    assert p.dtype.name == param_dtype and opt.grads[0].dtype == p.dtype
    st = {k: v.copy() for k, v in bench_lowp._state_arrays(opt).items()}
    before = p.copy()
    floor()
    if mode != "master":
        assert np.array_equal(p.view(np.uint16), before.view(np.uint16))
    for k, v in bench_lowp._state_arrays(opt).items():
        assert np.array_equal(v.view(np.uint8), st[k].view(np.uint8)), k
    step()
    assert not np.array_equal(p.view(np.uint16), before.view(np.uint16))
    if mode == "master":
        assert np.array_equal(p, opt.state[0]["master"].astype(p.dtype))
    assert set(st) >= {"exp_avg", "exp_avg_sq"} | (
        {"master"} if mode == "master" else {"compensation"} if mode == "compensation"
        else set())


def test_bench_param_dtype_cli_json():
    # end to end in a fresh process, every mode, on the float32-state layouts the tests
    # above compile (numba's on-disk cache); the default state is checked below
    pytest.importorskip("ml_dtypes")
    proc = run_module("bench", "--param-dtype", "bfloat16", "--state", "float32", "--quick",
                      "--json", "--sizes", "2e3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert [r["mode"] for r in res["rows"]] == ["-", "nearest", "stochastic",
                                                "compensation", "master"]
    assert {r["state_dtype"] for r in res["rows"][1:]} == {"float32"}
    assert all(r["ms"] > 0 and r["floor_ms"] > 0 for r in res["rows"])
    assert "param dtype bfloat16" in proc.stderr


def test_bench_param_dtype_defaults_to_bfloat16_state_and_every_mode(monkeypatch, capsys):
    # what `bench --param-dtype` asks bench_lowp for (the rows themselves: the tests above)
    pytest.importorskip("ml_dtypes")
    import inspect
    from fastadam import bench_lowp
    # modes: param_dtype_rows' default, every mode
    assert inspect.signature(bench_lowp.param_dtype_rows).parameters["modes"].default == \
        tuple(bench_lowp.MODES) == ("nearest", "stochastic", "compensation", "master")
    calls = []

    def rows(pdts, **kw):
        calls.append((pdts, kw))
        return {"machine": {}, "load": "-", "rows": []}

    monkeypatch.setattr(bench_lowp, "param_dtype_rows", rows)
    assert cli.main(["bench", "--param-dtype", "bfloat16,float16", "--quick", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == []
    assert calls == [(["bfloat16", "float16"], dict(states=["bfloat16"], sizes=[10**3, 10**4],
                                                    quick=True, threads=None))]


@pytest.mark.parametrize("args,msg", [
    (["bench", "--param-dtype", "float32"], "--param-dtype"),
    (["bench", "--param-dtype", "bfloat16,bfloat16"], "--param-dtype"),
    (["bench", "--param-dtype", "bfloat16", "--state", "fp8"], "--state"),
    (["bench", "--param-dtype", "bfloat16", "--threads", "0"], "--threads"),
])
def test_bench_param_dtype_rejects_bad_arguments(args, msg, capsys):
    assert cli.main(args) == 2
    assert msg in capsys.readouterr().err
