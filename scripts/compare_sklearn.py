#!/usr/bin/env python
"""Fit time and accuracy of fastadam.sklearn estimators against scikit-learn.

Pairs, each with identical settings (architecture, epochs, batch size, learning rate,
Glorot-uniform init and shuffling from the same random_state; tol disabled so both run
exactly the same number of epochs):

* AdamMLPClassifier  vs  MLPClassifier(solver="adam")
* AdamClassifier     vs  SGDClassifier(loss="log_loss") (same epochs) and
                         LogisticRegression (lbfgs, to convergence; a reference accuracy)

on scikit-learn's bundled digits and breast_cancer data (standardised, 75/25 split,
averaged over seeds) and, with --large, a synthetic 200k x 200 problem.

"opt share" is the fraction of fit time spent in the optimizer's step: for fastadam the
estimator's ``optimizer_time_``; for MLPClassifier the time inside
``AdamOptimizer.update_params`` (timed by wrapping it for that fit).

Every fit runs with the same number of BLAS threads (--blas-threads, default 1: on this
2-core machine a second BLAS thread slows the small minibatch products down).

Usage: python scripts/compare_sklearn.py [--quick] [--large] [--seeds N] [--epochs N]
The table goes to stdout, progress to stderr.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

from sklearn.datasets import load_breast_cancer, load_digits, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.neural_network import _stochastic_optimizers as sk_opt
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from fastadam.sklearn import AdamClassifier, AdamMLPClassifier


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class _TimedSklearnAdam:
    """Accumulate the time scikit-learn's MLP spends in AdamOptimizer.update_params."""

    def __enter__(self):
        self.total = 0.0
        self._orig = sk_opt.AdamOptimizer.update_params
        orig, me = self._orig, self

        def timed(opt, params, grads):
            t0 = time.perf_counter()
            orig(opt, params, grads)
            me.total += time.perf_counter() - t0
        sk_opt.AdamOptimizer.update_params = timed
        return self

    def __exit__(self, *exc):
        sk_opt.AdamOptimizer.update_params = self._orig


def datasets(large):
    out = []
    X, y = load_digits(return_X_y=True)
    out.append(("digits 1797x64", X, y))
    X, y = load_breast_cancer(return_X_y=True)
    out.append(("breast_cancer 569x30", X, y))
    if large:
        X, y = make_classification(200_000, 200, n_informative=40, n_classes=4,
                                   random_state=0)
        out.append(("synthetic 200000x200", X, y))
    return out


def models(epochs, batch, lr, hidden, seed):
    mlp = dict(hidden_layer_sizes=hidden, max_iter=epochs, batch_size=batch,
               learning_rate_init=lr, random_state=seed, tol=0.0, n_iter_no_change=10**9)
    return [
        ("MLP adam", "sklearn MLPClassifier", lambda: MLPClassifier(solver="adam", **mlp)),
        ("MLP adam", "fastadam AdamMLPClassifier", lambda: AdamMLPClassifier(**mlp)),
        ("linear", "sklearn SGDClassifier", lambda: SGDClassifier(
            loss="log_loss", max_iter=epochs, tol=None, random_state=seed)),
        ("linear", "fastadam AdamClassifier", lambda: AdamClassifier(
            max_iter=epochs, batch_size=batch, learning_rate_init=10 * lr,
            random_state=seed, tol=0.0, n_iter_no_change=10**9)),
        ("linear", "sklearn LogisticRegression", lambda: LogisticRegression(max_iter=1000)),
    ]


def run(args):
    rows = []
    for name, X, y in datasets(args.large):
        large = X.shape[0] > 100_000
        epochs = args.large_epochs if large else args.epochs
        seeds = 1 if large else args.seeds
        per = {}
        for seed in range(seeds):
            Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed,
                                                  stratify=y)
            sc = StandardScaler().fit(Xtr)
            Xtr, Xte = sc.transform(Xtr), sc.transform(Xte)
            for kind, label, make in models(epochs, args.batch, args.lr, tuple(args.hidden),
                                            seed):
                est = make()
                log(f"{name} seed {seed}: {label} ...")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    with _TimedSklearnAdam() as timer:
                        t0 = time.perf_counter()
                        est.fit(Xtr, ytr)
                        fit_s = time.perf_counter() - t0
                if hasattr(est, "optimizer_time_"):
                    share = est.optimizer_time_ / fit_s
                elif isinstance(est, MLPClassifier):
                    share = timer.total / fit_s
                else:
                    share = float("nan")
                acc = est.score(Xte, yte)
                loss = log_loss(ytr, est.predict_proba(Xtr), labels=est.classes_)
                d = per.setdefault((kind, label), {"fit": [], "acc": [], "loss": [],
                                                   "share": []})
                d["fit"].append(fit_s)
                d["acc"].append(acc)
                d["loss"].append(loss)
                d["share"].append(share)
        for (kind, label), d in per.items():
            ep = "-" if "LogisticRegression" in label else str(epochs)
            rows.append((name, label, ep, statistics.median(d["fit"]),
                         100 * statistics.mean(d["acc"]),
                         100 * (statistics.pstdev(d["acc"]) if len(d["acc"]) > 1 else 0.0),
                         statistics.mean(d["loss"]), statistics.mean(d["share"]),
                         len(d["fit"])))
    return rows


def print_table(rows, args):
    print(f"\nfastadam.sklearn vs scikit-learn  (hidden={tuple(args.hidden)}, batch="
          f"{args.batch}, lr={args.lr} (AdamClassifier {10 * args.lr}), "
          f"BLAS threads={args.blas_threads or 'default'})")
    head = ("data", "model", "epochs", "fit s (median)", "test acc %", "train log-loss",
            "opt share", "seeds")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    best = {}
    for r in rows:
        if "MLP" in r[1]:
            best.setdefault(r[0], {})[r[1]] = r[3]
    for name, label, ep, fit_s, acc, acc_sd, loss, share, n in rows:
        share_s = "-" if share != share else f"{100 * share:.1f}%"
        print(f"| {name} | {label} | {ep} | {fit_s:.3f} | {acc:.2f} ± {acc_sd:.2f} | "
              f"{loss:.4f} | {share_s} | {n} |")
    for name, d in best.items():
        sk, fa = d.get("sklearn MLPClassifier"), d.get("fastadam AdamMLPClassifier")
        if sk and fa:
            print(f"{name}: AdamMLPClassifier fit is {sk / fa:.2f}x faster than "
                  "MLPClassifier(solver='adam')")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="10 epochs, 1 seed")
    p.add_argument("--large", action="store_true", help="add the 200k x 200 data set")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--large-epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, nargs="+", default=[100])
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads for every fit (0: library default)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.large_epochs = 10, 1, 2
    # JIT warm-up (compiled kernels are cached on disk; the first fit in a fresh process
    # would otherwise include compilation)
    Xw, yw = load_digits(return_X_y=True)
    AdamMLPClassifier(hidden_layer_sizes=(4,), max_iter=1).fit(Xw[:50] / 16, yw[:50])
    AdamClassifier(max_iter=1).fit(Xw[:50] / 16, yw[:50])
    ctx = threadpool_limits(args.blas_threads, "blas") if args.blas_threads else None
    try:
        rows = run(args)
    finally:
        if ctx is not None:
            ctx.restore_original_limits()
    print_table(rows, args)


if __name__ == "__main__":
    main()
