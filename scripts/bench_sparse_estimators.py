"""Linear classifiers on hashed sparse data: fastadam's AdamClassifier with lazy sparse
updates (``sparse_updates="lazy"``, the default on sparse X) against its own dense
updates (``sparse_updates="dense"``), scikit-learn's ``SGDClassifier(loss="log_loss")``
and ``LogisticRegression(solver="saga")``: time per epoch against n_features at the same
~30 nonzeros per row, and held-out accuracy.

Data: n_train + n_test rows; each row draws ~30 tokens from a Zipf-like vocabulary,
hashes them into n_features columns (values 1, rows L2-normalised) and gets the label of
a planted linear model on the tokens (5% labels flipped). Every method sees the same rows.

Time per epoch = fit time / epochs run (every fit runs all its epochs: tol disabled);
the dense updates and saga are slow, so they run fewer epochs (stated in the output).
All ratios come from one run; the machine may be shared, so take them as such.

    python scripts/bench_sparse_estimators.py                   # the full table + plot
    python scripts/bench_sparse_estimators.py --quick           # small, seconds
"""
import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastadam.sklearn import AdamClassifier  # noqa: E402


def make_data(n_rows, n_features, nnz_per_row=30, vocab=200_000, seed=0):
    """Hashed bag-of-tokens rows (CSR float64) and labels of a planted linear model."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1)
    p = 1.0 / ranks ** 0.8
    p /= p.sum()
    tokens = rng.choice(vocab, size=(n_rows, nnz_per_row), p=p)
    w_tok = rng.normal(size=vocab)
    score = w_tok[tokens].sum(1)
    y = (score > np.median(score)).astype(np.int64)
    flip = rng.random(n_rows) < 0.05
    y[flip] = 1 - y[flip]
    # a fixed multiplicative hash of the token id, reduced to n_features columns
    cols = ((tokens.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(1 << 32)
            % np.uint64(n_features)).astype(np.int32)
    X = sp.csr_matrix((np.ones(cols.size), cols.ravel(),
                       np.arange(0, cols.size + 1, nnz_per_row)), shape=(n_rows, n_features))
    X.sum_duplicates()
    norms = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
    X = sp.csr_matrix(sp.diags(1.0 / norms) @ X)
    return X, y


def timed_fit(est, X, y, epochs_of):
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    dt = time.perf_counter() - t0
    return dt / epochs_of(est)


def methods(epochs, slow_epochs, batch_size):
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    n_it = lambda e: int(np.max(e.n_iter_))   # noqa: E731
    return {
        "fastadam lazy": (lambda: AdamClassifier(sparse_updates="lazy", max_iter=epochs,
                                                 tol=0, n_iter_no_change=10 ** 6,
                                                 batch_size=batch_size, random_state=0),
                          n_it),
        "fastadam dense": (lambda: AdamClassifier(sparse_updates="dense",
                                                  max_iter=slow_epochs, tol=0,
                                                  n_iter_no_change=10 ** 6,
                                                  batch_size=batch_size, random_state=0),
                           n_it),
        "SGDClassifier(log_loss)": (lambda: SGDClassifier(loss="log_loss", max_iter=epochs,
                                                          tol=None, random_state=0), n_it),
        "LogisticRegression(saga)": (lambda: LogisticRegression(solver="saga",
                                                                max_iter=slow_epochs,
                                                                tol=1e-12), n_it),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--log2-features", type=int, nargs="+", default=[16, 18, 20, 22])
    ap.add_argument("--epochs", type=int, default=5, help="lazy Adam and SGDClassifier")
    ap.add_argument("--slow-epochs", type=int, default=2,
                    help="dense Adam updates and saga (slow at large n_features)")
    ap.add_argument("--dense-max-log2", type=int, default=20,
                    help="skip the dense updates above 2^this many features")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--plot", default=os.path.join("docs", "img", "sparse_estimators.png"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--replot", default=None, metavar="JSON",
                    help="only redraw the plot from the --json file of an earlier run")
    a = ap.parse_args(argv)
    if a.replot:
        with open(a.replot) as f:
            plot(json.load(f), a.plot, a.n_train)
        return
    if a.quick:
        a.n_train, a.n_test, a.log2_features, a.epochs, a.slow_epochs = \
            5000, 2000, [14, 18], 2, 1
    # compile the numba kernels outside the timings
    Xw, yw = make_data(500, 1 << 10, seed=1)
    for s in ("lazy", "dense"):
        AdamClassifier(sparse_updates=s, max_iter=1).fit(Xw, yw)
    ms = methods(a.epochs, a.slow_epochs, a.batch_size)
    print(f"{a.n_train} train + {a.n_test} test rows, ~30 nonzeros per row, batch "
          f"{a.batch_size}; epochs: {a.epochs} (lazy, SGD), {a.slow_epochs} (dense, saga); "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    rows = []
    for lg in a.log2_features:
        X, y = make_data(a.n_train + a.n_test, 1 << lg)
        Xtr, ytr, Xte, yte = X[:a.n_train], y[:a.n_train], X[a.n_train:], y[a.n_train:]
        for name, (make, n_it) in ms.items():
            if name == "fastadam dense" and lg > a.dense_max_log2:
                continue
            est = make()
            t = timed_fit(est, Xtr, ytr, n_it)
            acc = float(np.mean(est.predict(Xte) == yte))
            rows.append({"method": name, "log2_features": lg, "epoch_s": t,
                         "epochs": n_it(est), "accuracy": acc})
            if name == "fastadam dense":
                # the accuracy comparison at the same number of epochs
                m = AdamClassifier(**{**ms["fastadam lazy"][0]().get_params(),
                                      "max_iter": n_it(est)})
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m.fit(Xtr, ytr)
                rows[-1]["lazy_accuracy_same_epochs"] = float(np.mean(m.predict(Xte) == yte))
            print(f"  2^{lg:<3d} {name:26s} {t * 1e3:9.1f} ms/epoch  "
                  f"({n_it(est)} epochs)  held-out accuracy {acc:.4f}", flush=True)
    by = {(r["method"], r["log2_features"]): r for r in rows}
    print("\nratios (one run):")
    for lg in a.log2_features:
        lazy = by[("fastadam lazy", lg)]
        sgd = by[("SGDClassifier(log_loss)", lg)]
        saga = by[("LogisticRegression(saga)", lg)]
        line = (f"  2^{lg}: lazy / SGDClassifier time {lazy['epoch_s'] / sgd['epoch_s']:.2f}, "
                f"saga / lazy {saga['epoch_s'] / lazy['epoch_s']:.1f}")
        if ("fastadam dense", lg) in by:
            d = by[("fastadam dense", lg)]
            line += (f", dense / lazy {d['epoch_s'] / lazy['epoch_s']:.1f}x; accuracy "
                     f"lazy - dense {100 * (d['lazy_accuracy_same_epochs'] - d['accuracy']):+.2f}"
                     f" points (both {d['epochs']} epochs)")
        print(line)
    lo, hi = min(a.log2_features), max(a.log2_features)
    print(f"  lazy time 2^{hi} / 2^{lo} features: "
          f"{by[('fastadam lazy', hi)]['epoch_s'] / by[('fastadam lazy', lo)]['epoch_s']:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    if a.plot:
        plot(rows, a.plot, a.n_train)


def plot(rows, path, n_train):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    names = list(dict.fromkeys(r["method"] for r in rows))
    for name in names:
        pts = [(2 ** r["log2_features"], r["epoch_s"]) for r in rows if r["method"] == name]
        if pts:
            ax.plot(*zip(*pts), "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("n_features (same ~30 nonzeros per row)")
    ax.set_ylabel("seconds per epoch")
    ax.set_title(f"Logistic regression, {n_train} hashed sparse rows")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
