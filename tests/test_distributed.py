"""fastadam.distributed under mpiexec: N ranks equal one process on the mean gradient
(2 and 3 ranks, oversubscribing small machines), checkpoints resharded across world
sizes, and bad input on one rank raising the same error everywhere instead of hanging.

The MPI programs live in tests/mpi/; each is run by mpiexec in a subprocess with a
timeout, so a deadlock fails the test instead of blocking the suite. Skipped (with the
reason) when mpi4py or mpiexec is missing; ``pip install ".[mpi]"`` provides both.
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MPI_DIR = os.path.join(HERE, "mpi")
TIMEOUT = 900          # seconds: generous for a cold numba cache on a loaded machine


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def _why_skip():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install '.[mpi]')"
    if _mpiexec() is None:
        return "no mpiexec found (pip install '.[mpi]' installs MPICH's)"
    return None


needs_mpi = pytest.mark.skipif(_why_skip() is not None, reason=str(_why_skip()))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "")
                                                  .split(os.pathsep) if p])
    env.setdefault("NUMBA_NUM_THREADS", "1")     # ranks share the cores
    return env


def run_mpi(n, script, *args):
    """Run tests/mpi/<script> on ``n`` ranks; return its output, failing the test on a
    non-zero exit, a timeout (a hang), or a rank that did not finish."""
    cmd = [_mpiexec(), "-n", str(n)]
    version = subprocess.run([_mpiexec(), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        cmd += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    cmd += [sys.executable, os.path.join(MPI_DIR, script), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                              env=_env(), cwd=MPI_DIR)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script} on {n} ranks did not finish in {TIMEOUT} s (a hang?)\n"
                    f"{e.stdout}\n{e.stderr}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} on {n} ranks failed:\n{out[-6000:]}"
    finished = sorted(int(r) for r in re.findall(r"ALL OK rank (\d+)", proc.stdout))
    assert finished == list(range(n)), f"ranks that finished: {finished}\n{out[-6000:]}"
    return proc.stdout


def cases(out, n):
    """{case name: number of ranks that passed it}."""
    found = {}
    for name, _ in re.findall(r"CASE (\S+) ok rank (\d+)", out):
        found[name] = found.get(name, 0) + 1
    return found


@needs_mpi
@pytest.mark.parametrize("n", [1, 2, 3])
def test_n_ranks_equal_one_process(n):
    out = run_mpi(n, "equality.py")
    found = cases(out, n)
    expected = {f"{c}-{t}" for c in ("adam-plain", "adam-groups-amsgrad", "adamw-clip-average",
                                     "adamax-maximize-clip", "adam-hat-nobc-flat-optgrads",
                                     "adam-skip", "adam-skip-inf", "adam-schedule", "adamw-sum")
                for t in ("f32", "f64")}
    expected |= {"mixed-dtypes", "mixed-dtypes-flat", "bitwise-dyadic-f32",
                 "bitwise-dyadic-f64", "tiny-empty-shards", "uneven-shards"}
    assert set(found) == expected
    assert all(v == n for v in found.values()), found


@needs_mpi
@pytest.mark.parametrize("n_save,n_load", [(3, 2), (2, 3)])
def test_checkpoint_across_world_sizes(tmp_path, n_save, n_load):
    run_mpi(n_save, "checkpoint.py", "save", str(tmp_path))
    files = sorted(os.listdir(tmp_path / "sharded"))
    assert files[0] == "manifest.npz" and len(files) == n_save + 1, files
    out = run_mpi(n_load, "checkpoint.py", "load", str(tmp_path))
    found = cases(out, n_load)
    assert found == {k: n_load for k in ("load_sharded", "load_state_dict", "resume",
                                         "refused", "torn-save")}, found
    # The consolidated state is a single-process checkpoint: fa.AdamW loads it.
    import fastadam as fa
    from fastadam import checkpoint
    sd = checkpoint.read_checkpoint(tmp_path / "full.npz")
    shapes = [(9, 7), (31,), (5,), (17, 3)]
    dts = [np.float32, np.float64, np.float64, np.float32]
    ps = [np.zeros(s, d) for s, d in zip(shapes, dts)]
    opt = fa.AdamW([{"params": ps[:2], "lr": 2e-2, "weight_decay": 0.05},
                    {"params": ps[2:], "amsgrad": False}],
                   lr=1e-2, amsgrad=True, average=0.9, max_grad_norm=1.0)
    opt.load_state_dict(sd)
    assert opt.state[0]["step"] == 7


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_failure_on_one_rank_raises_everywhere(n):
    out = run_mpi(n, "failures.py")
    found = cases(out, n)
    assert set(found) == {"wrong-shape", "wrong-dtype-count-type", "nan-raise",
                          "overflow-raise", "bad-hyperparameter", "diverging-hyperparameters",
                          "bad-load", "bad-construction", "still-works"}
    assert all(v == n for v in found.values()), found


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_data_parallel_estimators(n):
    """tests/mpi/estimators.py: each rank holds its own uneven rows; comm= fits equal
    partial_fit on the pooled minibatches, score within one point of one process."""
    pytest.importorskip("sklearn")
    out = run_mpi(n, "estimators.py")
    found = cases(out, n)
    assert set(found) == {"exact_linear_classifier_sorted_weighted", "exact_mlp_classifier",
                          "exact_linear_regressor_huber", "exact_mlp_regressor",
                          "accuracy_linear_classifier", "accuracy_linear_regressor",
                          "accuracy_mlp_classifier", "accuracy_mlp_regressor",
                          "pickle_drops_comm", "clone_keeps_comm", "early_stopping",
                          "errors_everywhere", "partial_fit_blocks", "zero_rows",
                              "sparse_dense_under_comm"}
    assert all(v == n for v in found.values()), found


def test_estimator_comm_parameter_without_mpiexec():
    """comm is an ordinary parameter: stored as given, None by default; a value that is
    not a communicator is refused when fitting, naming it (clone: tests/mpi/estimators.py)."""
    pytest.importorskip("sklearn")
    import fastadam.sklearn as fsk
    X = np.random.default_rng(0).standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(int)
    for cls in (fsk.AdamClassifier, fsk.AdamRegressor, fsk.AdamMLPClassifier,
                fsk.AdamMLPRegressor):
        assert cls().comm is None
        marker = object()
        est = cls(comm=marker)
        assert est.get_params()["comm"] is marker
        assert est.set_params(comm=None).comm is None
        with pytest.raises((TypeError, ImportError), match="comm"):
            cls(comm="world", max_iter=2).fit(X, y)


@pytest.mark.parametrize("kind", ["clf", "clf-multilabel", "reg", "reg-2d"])
def test_pooled_validation_score_from_parts(kind):
    """The data-parallel validation score (sufficient statistics summed over ranks)
    equals scikit-learn's score on the pooled rows, for every kind of target."""
    pytest.importorskip("sklearn")
    import warnings

    import fastadam.sklearn as fsk
    from fastadam.sklearn._parallel import score_from_stats, score_stats
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 4))
    w = rng.uniform(0.1, 2.0, 90)
    y = {"clf": (X[:, 0] + 0.5 * rng.standard_normal(90) > 0).astype(int),
         "clf-multilabel": (X[:, :2] > 0).astype(int),
         "reg": X @ [1.0, -2.0, 0.5, 0.0], "reg-2d": np.c_[X[:, 0], X[:, 1] ** 2]}[kind]
    cls = {"clf": fsk.AdamClassifier, "clf-multilabel": fsk.AdamMLPClassifier}.get(
        kind, fsk.AdamRegressor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = cls(max_iter=5, random_state=0).fit(X, y)
    parts = [slice(0, 40), slice(40, 40), slice(40, 90)]      # one "rank" without rows
    v = sum(score_stats(est, X[s], y[s], w[s]) for s in parts)
    # (R^2 from sums of squares about zero: a little cancellation, hence 1e-10)
    assert score_from_stats(est, v) == pytest.approx(est.score(X, y, sample_weight=w),
                                                     rel=1e-10, abs=1e-10)


def test_shard_bounds():
    from fastadam.distributed import shard_bounds
    b = shard_bounds(1001, 3, itemsize=4)            # 16-element (64-byte) alignment
    assert b.tolist() == [0, 320, 656, 1001]
    assert shard_bounds(10, 3).tolist() == [0, 0, 0, 10]      # small: empty shards
    assert shard_bounds(64, 2).tolist() == [0, 32, 64]
    for n in (0, 1, 7, 100, 12345):
        for r in (1, 2, 3, 8):
            b = shard_bounds(n, r)
            assert b[0] == 0 and b[-1] == n and (np.diff(b) >= 0).all()


def test_no_mpi_import_until_used_and_clear_error_without_mpi4py():
    code = ("import sys, numpy as np\n"
            "import fastadam, fastadam.schedules, fastadam.distributed\n"
            "assert 'mpi4py' not in sys.modules\n"
            "sys.modules['mpi4py'] = None\n"
            "try:\n"
            "    fastadam.distributed.ShardedOptimizer([np.zeros(3)])\n"
            "except ImportError as e:\n"
            "    assert 'fastadam[mpi]' in str(e), e\n"
            "    print('clear error')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "clear error" in proc.stdout
