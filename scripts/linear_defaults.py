#!/usr/bin/env python
"""The measurement behind the linear estimators' default ``learning_rate_init``.

Fits ``AdamRegressor`` and ``AdamClassifier`` with their defaults except the learning
rate, for several learning rates, on standardised features (and, for regression, targets
standardised or raw), 75/25 split, ``random_state=0``: held-out R^2 / accuracy and the
epochs used (``n_iter_``; 200 = max_iter reached), beside the closed-form optimum
(``Ridge(alpha=1e-4)`` / ``LogisticRegression(C=1e4)``) as the score to reach.

Usage: python scripts/linear_defaults.py [--lrs 1e-3,3e-3,1e-2,3e-2,1e-1]
"""
from __future__ import annotations

import argparse
import warnings

from sklearn.datasets import (load_breast_cancer, load_diabetes, load_digits, load_wine,
                              make_classification, make_friedman1, make_regression)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import scale

from fastadam.sklearn import AdamClassifier, AdamRegressor


def regression_sets():
    # scikit-learn's check_regressors_train data: 200 x 10, one informative feature.
    X, y = make_regression(200, 10, n_informative=1, bias=5.0, noise=20, random_state=42)
    yield "make_regression 200x10 (y std)", scale(X), scale(y)
    X, y = load_diabetes(return_X_y=True)
    yield "diabetes 442x10 (y std)", scale(X), scale(y)
    yield "diabetes 442x10 (y raw)", scale(X), y
    X, y = make_regression(2000, 20, n_informative=10, noise=10, random_state=0)
    yield "make_regression 2000x20 (y std)", scale(X), scale(y)
    X, y = make_friedman1(1000, random_state=0)
    yield "friedman1 1000x10 (y raw)", scale(X), y


def classification_sets():
    X, y = load_breast_cancer(return_X_y=True)
    yield "breast_cancer 569x30", scale(X), y
    X, y = load_digits(return_X_y=True)
    yield "digits 1797x64", X / 16.0, y
    X, y = load_wine(return_X_y=True)
    yield "wine 178x13", scale(X), y
    X, y = make_classification(5000, 20, n_informative=8, random_state=0)
    yield "make_classification 5000x20", scale(X), y


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2,3e-2,1e-1")
    lrs = [float(x) for x in ap.parse_args().lrs.split(",")]
    warnings.filterwarnings("ignore")          # ConvergenceWarning at max_iter is expected
    print("held-out score (epochs) per learning_rate_init; 'optimum' is the closed form")
    print(f"{'data':34s} {'optimum':>8s} " + " ".join(f"{lr:>13g}" for lr in lrs))
    for kind, sets, ref_model, est in (
            ("R^2", regression_sets, lambda: Ridge(alpha=1e-4), AdamRegressor),
            ("accuracy", classification_sets,
             lambda: LogisticRegression(C=1e4, max_iter=5000), AdamClassifier)):
        print(f"-- {est.__name__} ({kind})")
        for name, X, y in sets():
            Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
            ref = ref_model().fit(Xtr, ytr).score(Xte, yte)
            cells = []
            for lr in lrs:
                m = est(learning_rate_init=lr, random_state=0).fit(Xtr, ytr)
                cells.append(f"{m.score(Xte, yte):7.3f} ({m.n_iter_:3d})")
            print(f"{name:34s} {ref:8.3f} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
