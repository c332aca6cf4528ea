"""Smoke tests of scripts/reproduce_paper.py at tiny sizes (--quick): every subcommand
writes a readable CSV and a small PNG, and shows the property it is about."""
import csv
import importlib.util
import math
import pathlib

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
pytest.importorskip("scipy")

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "reproduce_paper.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rp():
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), f"{path.name} is not a PNG"
    assert 5_000 < len(data) < 200_000, f"{path.name} has {len(data)} bytes"


def selected_curves(rows):
    out = {}
    for r in rows:
        if r["selected"] == "1":
            out.setdefault(r["method"], []).append((int(r["epoch"]), float(r["train_loss"])))
    return {m: [y for _, y in sorted(c)] for m, c in out.items()}


def test_logreg_writes_files_and_every_method_learns(rp, tmp_path, capsys):
    results = rp.main(["logreg", "--quick", "--out", str(tmp_path), "--seed", "1"])["logreg"]
    check_png(tmp_path / "logreg.png")
    rows = read_csv(tmp_path / "logreg.csv")
    curves = selected_curves(rows)
    assert set(curves) == {"adam", "sgd_nesterov", "adagrad"}
    for m, c in curves.items():
        assert c == pytest.approx(results[m][1][results[m][0]]), f"{m}: CSV != returned curve"
        assert c[-1] < 0.5 * c[0], f"{m} did not learn: loss {c[0]:.3f} -> {c[-1]:.3f}"
    out = capsys.readouterr()
    assert "Adam" in out.out and "AdaGrad" in out.out and "best alpha" in out.out
    assert "[logreg]" in out.err, "no progress on stderr"


def test_sparse_adaptive_methods_beat_sgd(rp, tmp_path):
    results = rp.main(["sparse", "--quick", "--out", str(tmp_path)])["sparse"]
    check_png(tmp_path / "sparse.png")
    curves = selected_curves(read_csv(tmp_path / "sparse.csv"))
    assert set(curves) == {"adam", "sgd_nesterov", "adagrad"}
    for m in ("adam", "adagrad"):
        assert curves[m][-1] < curves["sgd_nesterov"][-1], \
            f"{m} final loss {curves[m][-1]:.4f} not below SGD's {curves['sgd_nesterov'][-1]:.4f}"
    assert all(len(c) == len(curves["adam"]) for c in curves.values())
    assert results["adam"][0] in results["adam"][1]


def test_bias_correction_uncorrected_is_unstable_for_beta2_near_one(rp, tmp_path):
    rp.main(["bias-correction", "--quick", "--out", str(tmp_path)])
    check_png(tmp_path / "bias_correction.png")
    rows = read_csv(tmp_path / "bias_correction.csv")
    assert len(rows) == 2 * 3 * 2 * 4            # beta1 x beta2 x correction x step sizes
    short = [k for k in rows[0] if k.startswith("loss_epoch")][0]

    def loss(b1, b2, bc, lg):
        (r,) = [r for r in rows if float(r["beta1"]) == b1 and float(r["beta2"]) == b2
                and r["bias_correction"] == str(bc) and float(r["log10_lr"]) == lg]
        x = float(r[short])
        return x if math.isfinite(x) else math.inf
    # beta2 = 0.9999, beta1 = 0, largest step size: the first steps are ~100x too large
    # without the correction, so the loss after the short run is clearly worse.
    assert loss(0.0, 0.9999, 0, -1.0) > 1.5 * loss(0.0, 0.9999, 1, -1.0)
    # with the correction, beta2 barely matters at a moderate step size
    a, b = loss(0.9, 0.99, 1, -3.0), loss(0.9, 0.9999, 1, -3.0)
    assert abs(a - b) < 0.1 * a


def test_cli_rejects_unknown_command(rp):
    with pytest.raises(SystemExit):
        rp.main(["figure-9"])
