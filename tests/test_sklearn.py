"""Behaviour of the scikit-learn estimators in fastadam.sklearn (conformance checks live in
test_sklearn_checks.py)."""
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import scipy.sparse as sp  # noqa: E402
from sklearn.base import is_classifier  # noqa: E402
from sklearn.datasets import load_digits, load_iris, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from fastadam.sklearn import (AdamClassifier, AdamMLPClassifier,  # noqa: E402
                              AdamMLPRegressor, AdamRegressor)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

NO_STOP = dict(tol=0.0, n_iter_no_change=10**9)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    return X[:600], y[:600]


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _params(est):
    return (est.coefs_ + est.intercepts_) if hasattr(est, "coefs_") \
        else [est.coef_, est.intercept_]


def _assert_params_close(a, b, **kw):
    for i, (x, y) in enumerate(zip(_params(a), _params(b))):
        np.testing.assert_allclose(x, y, err_msg=f"parameter {i} differs", **kw)


def test_import_fastadam_does_not_import_sklearn():
    code = "import sys, fastadam; assert 'sklearn' not in sys.modules, 'sklearn imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ parity with scikit-learn
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic"])
@pytest.mark.parametrize("binary", [False, True])
def test_mlp_classifier_follows_sklearn_trajectory(digits, activation, binary):
    """Same init, shuffles, objective and Adam (eps hat): same weights after 3 epochs."""
    X, y = digits
    if binary:
        y = (y > 4).astype(int)
    kw = dict(hidden_layer_sizes=(12, 7), activation=activation, alpha=1e-3,
              batch_size=64, max_iter=3, random_state=3, **NO_STOP)
    ref = MLPClassifier(solver="adam", **kw).fit(X, y)
    ours = AdamMLPClassifier(**kw).fit(X, y)
    _assert_params_close(ours, ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), rtol=1e-8,
                               atol=1e-12)


def test_mlp_classifier_sample_weight_and_early_stopping_follow_sklearn(digits):
    X, y = digits
    sw = np.random.default_rng(0).uniform(0.2, 2.0, len(y))
    kw = dict(hidden_layer_sizes=(10,), batch_size=100, max_iter=6, random_state=1,
              early_stopping=True, validation_fraction=0.2, **NO_STOP)
    ref = MLPClassifier(solver="adam", **kw).fit(X, y > 4, sample_weight=sw)
    ours = AdamMLPClassifier(**kw).fit(X, y > 4, sample_weight=sw)
    np.testing.assert_allclose(ours.validation_scores_, ref.validation_scores_)
    _assert_params_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_mlp_regressor_follows_sklearn_trajectory():
    X, y = make_regression(300, 6, n_targets=2, noise=1.0, random_state=0)
    y /= y.std()
    kw = dict(hidden_layer_sizes=(9,), batch_size=50, max_iter=4, random_state=2, **NO_STOP)
    ref = MLPRegressor(solver="adam", **kw).fit(X, y)
    ours = AdamMLPRegressor(**kw).fit(X, y)
    _assert_params_close(ours, ref, rtol=1e-9, atol=1e-12)
    assert ours.predict(X).shape == (300, 2)


def test_digits_accuracy_matches_sklearn_within_a_point():
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Xtr, Xte, ytr, yte = X[:1400], X[1400:], y[:1400], y[1400:]
    kw = dict(hidden_layer_sizes=(32,), max_iter=30, random_state=0, **NO_STOP)
    acc_ref = MLPClassifier(solver="adam", **kw).fit(Xtr, ytr).score(Xte, yte)
    acc = AdamMLPClassifier(**kw).fit(Xtr, ytr).score(Xte, yte)
    assert acc > 0.85, acc
    assert abs(acc - acc_ref) <= 0.01, (acc, acc_ref)


# ------------------------------------------------------------------ linear models: optimum
def test_classifier_reaches_logistic_regression_optimum(iris):
    """Full batch: the objective is mean log-loss + alpha/(2n) ||W||^2, which is
    LogisticRegression's with C = 1/alpha."""
    X, y = iris
    alpha = 1.0
    est = AdamClassifier(alpha=alpha, learning_rate_init=0.01, max_iter=3000, shuffle=False,
                         **NO_STOP).fit(X, y)
    ref = LogisticRegression(C=1 / alpha, tol=1e-10, max_iter=10000).fit(X, y)
    # multinomial logits are defined up to a per-feature constant; compare centred
    centred = [c - c.mean(axis=0) for c in (est.coef_, ref.coef_)]
    np.testing.assert_allclose(*centred, atol=2e-3)
    np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(X), atol=2e-3)


def test_binary_classifier_shapes_and_decision(iris):
    X, y = iris
    yb = np.where(y == 2, "virginica", "other")
    est = AdamClassifier(learning_rate_init=0.05, random_state=0).fit(X, yb)
    assert est.coef_.shape == (1, 4) and est.intercept_.shape == (1,)
    d = est.decision_function(X)
    assert d.shape == (150,)
    np.testing.assert_array_equal(est.predict(X), est.classes_[(d > 0).astype(int)])
    np.testing.assert_allclose(est.predict_proba(X)[:, 1], 1 / (1 + np.exp(-d)))
    assert est.score(X, yb) > 0.9


def test_regressor_reaches_ridge_optimum():
    X, y = make_regression(150, 5, noise=5.0, random_state=0)
    y = (y - y.mean()) / y.std() + 3.0
    alpha = 2.0
    est = AdamRegressor(alpha=alpha, learning_rate_init=0.01, max_iter=3000, shuffle=False,
                        **NO_STOP).fit(X, y)
    ref = Ridge(alpha=alpha).fit(X, y)
    np.testing.assert_allclose(est.coef_, ref.coef_, atol=2e-3)
    np.testing.assert_allclose(est.intercept_[0], ref.intercept_, atol=2e-3)


def test_huber_resists_outliers():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 3))
    w = np.array([1.0, -2.0, 0.5])
    y = X @ w + 0.05 * rng.standard_normal(400)
    y[:20] += 50.0
    kw = dict(learning_rate_init=0.02, max_iter=300, random_state=0, alpha=0.0)
    huber = AdamRegressor(loss="huber", **kw).fit(X, y)
    sq = AdamRegressor(loss="squared_error", **kw).fit(X, y)
    assert np.abs(huber.coef_ - w).max() < 0.1
    assert np.abs(huber.coef_ - w).max() < np.abs(sq.coef_ - w).max()


# ------------------------------------------------------------------ gradients vs finite diff
@pytest.mark.parametrize("make", [
    lambda: AdamClassifier(alpha=0.3),
    lambda: AdamRegressor(alpha=0.3),
    lambda: AdamRegressor(loss="huber", huber_delta=0.5, alpha=0.3),
    lambda: AdamMLPClassifier(hidden_layer_sizes=(5, 4), activation="tanh", alpha=0.3),
    lambda: AdamMLPClassifier(hidden_layer_sizes=(6,), activation="logistic", alpha=0.3),
    lambda: AdamMLPRegressor(hidden_layer_sizes=(6,), activation="relu", alpha=0.3),
    lambda: AdamMLPRegressor(loss="huber", hidden_layer_sizes=(4,), activation="tanh"),
], ids=["clf", "reg", "huber", "mlp-tanh", "mlp-logistic", "mlp-relu", "mlp-huber"])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_matches_finite_differences(make, weighted):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4))
    est = make()
    if is_classifier(est):
        y = rng.integers(0, 3, 30)
    else:
        y = 2 * rng.standard_normal(30)
    est.set_params(max_iter=1, random_state=0).fit(X, y)
    est._flat[...] = 0.5 * rng.standard_normal(est._flat.size)
    sw = rng.uniform(0.5, 2.0, 30) if weighted else None
    Y = est._encode_targets(y, False, False, None, np.float64)
    ws = est._make_workspace(30, np.float64)
    est._loss_grad(X, Y, sw, ws)
    grad = np.concatenate([g.ravel() for g in est.optimizer_.grads])
    h = 1e-6
    num = np.empty_like(grad)
    for k in range(est._flat.size):
        old = est._flat[k]
        est._flat[k] = old + h
        up = est._loss_grad(X, Y, sw, ws)
        est._flat[k] = old - h
        down = est._loss_grad(X, Y, sw, ws)
        est._flat[k] = old
        num[k] = (up - down) / (2 * h)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ data handling
@pytest.mark.parametrize("Est", [AdamClassifier, AdamMLPClassifier])
def test_sparse_csr_gives_same_model_as_dense(iris, Est):
    X, y = iris
    X = np.where(np.abs(X) < 0.5, 0.0, X)
    a = Est(random_state=0, max_iter=5).fit(X, y)
    b = Est(random_state=0, max_iter=5, sparse_updates="dense").fit(sp.csr_matrix(X), y)
    _assert_params_close(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(sp.csr_matrix(X)))


def test_float32_input_trains_float32_parameters(iris):
    X, y = iris
    a = AdamMLPClassifier(hidden_layer_sizes=(8,), random_state=0, max_iter=20)
    a.fit(X.astype(np.float32), y)
    assert all(p.dtype == np.float32 for p in _params(a))
    b = AdamMLPClassifier(hidden_layer_sizes=(8,), random_state=0, max_iter=20).fit(X, y)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-4)


def test_zero_weight_equals_dropping_samples_full_batch(iris):
    X, y = iris
    sw = np.ones(150)
    sw[::3] = 0
    kw = dict(shuffle=False, max_iter=20, learning_rate_init=0.01)
    a = AdamClassifier(**kw).fit(X, y, sample_weight=sw)
    b = AdamClassifier(**kw).fit(X[sw > 0], y[sw > 0])
    _assert_params_close(a, b, rtol=1e-9, atol=1e-12)


def test_parameters_are_views_of_one_buffer(digits):
    X, y = digits
    est = AdamMLPClassifier(hidden_layer_sizes=(5, 3), max_iter=1).fit(X, y)
    flat = est._flat
    for p in _params(est):
        assert np.shares_memory(p, flat)
    assert sum(p.size for p in _params(est)) == flat.size
    lin = AdamClassifier(max_iter=1).fit(X, y)
    assert np.shares_memory(lin.coef_, lin._flat) and np.shares_memory(lin.intercept_, lin._flat)


# ------------------------------------------------------------------ partial_fit, warm start
def test_partial_fit_continues_the_optimizer_state(iris):
    X, y = iris
    kw = dict(shuffle=False, batch_size=50, learning_rate_init=0.01, **NO_STOP)
    full = AdamClassifier(max_iter=3, **kw).fit(X, y)
    inc = AdamClassifier(**kw)
    for _ in range(3):
        inc.partial_fit(X, y, classes=[0, 1, 2])
    _assert_params_close(full, inc, rtol=1e-12)
    assert inc.optimizer_.state[0]["step"] == 9
    assert inc.n_iter_ == 3 and len(inc.loss_curve_) == 3
    # partial_fit after fit continues fit's optimizer (step count keeps growing)
    full.partial_fit(X, y)
    assert full.optimizer_.state[0]["step"] == 12


def test_warm_start_keeps_weights_and_restarts_moments(iris):
    X, y = iris
    est = AdamMLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0,
                            warm_start=True, **NO_STOP).fit(X, y)
    before = est._flat.copy()
    est.set_params(max_iter=1, learning_rate_init=0.0 + 1e-12)
    est.fit(X, y)
    np.testing.assert_allclose(est._flat, before, atol=1e-9)
    assert est.optimizer_.state[0]["step"] == 1


def test_pickle_roundtrip_keeps_predictions_and_optimizer(digits):
    X, y = digits
    est = AdamMLPClassifier(hidden_layer_sizes=(6,), max_iter=2, random_state=0).fit(X, y)
    clone = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(clone.predict_proba(X), est.predict_proba(X))
    for p in _params(clone):
        assert np.shares_memory(p, clone._flat)
        assert not np.shares_memory(p, est._flat)
    snapshot = est._flat.copy()
    est.partial_fit(X, y)
    clone.partial_fit(X, y)     # continues the same moments: same result, separate memory
    np.testing.assert_allclose(clone._flat, est._flat, rtol=1e-12)
    assert not np.array_equal(snapshot, est._flat)


# ------------------------------------------------------------------ stopping rules
def test_tol_stops_training_before_max_iter(iris):
    X, y = iris
    est = AdamClassifier(learning_rate_init=0.05, max_iter=500, tol=1e-3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est.fit(X, y)
    assert est.n_iter_ < 500 and len(est.loss_curve_) == est.n_iter_


def test_early_stopping_restores_best_validation_weights(digits):
    X, y = digits
    est = AdamMLPClassifier(hidden_layer_sizes=(10,), early_stopping=True, max_iter=15,
                            random_state=0, n_iter_no_change=2, tol=0.0).fit(X, y)
    assert len(est.validation_scores_) == est.n_iter_
    assert est.best_validation_score_ == max(est.validation_scores_)


def test_optimizer_time_is_recorded(digits):
    X, y = digits
    est = AdamMLPClassifier(hidden_layer_sizes=(10,), max_iter=3).fit(X, y)
    assert 0 < est.optimizer_time_


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("Est, params, exc, name", [
    (AdamClassifier, dict(alpha=-1.0), ValueError, "alpha"),
    (AdamClassifier, dict(learning_rate_init=0.0), ValueError, "learning_rate_init"),
    (AdamClassifier, dict(beta_1=1.0), ValueError, "beta_1"),
    (AdamClassifier, dict(beta_2="0.9"), TypeError, "beta_2"),
    (AdamClassifier, dict(epsilon=0.0), ValueError, "epsilon"),
    (AdamClassifier, dict(batch_size=0), ValueError, "batch_size"),
    (AdamClassifier, dict(max_iter=1.5), TypeError, "max_iter"),
    (AdamClassifier, dict(validation_fraction=1.0), ValueError, "validation_fraction"),
    (AdamClassifier, dict(loss="hinge"), ValueError, "loss"),
    (AdamClassifier, dict(shuffle=1), TypeError, "shuffle"),
    (AdamRegressor, dict(huber_delta=0.0), ValueError, "huber_delta"),
    (AdamMLPClassifier, dict(hidden_layer_sizes=(3, 0)), ValueError, "hidden_layer_sizes"),
    (AdamMLPRegressor, dict(activation="softplus"), ValueError, "activation"),
])
def test_bad_hyperparameters_are_named(iris, Est, params, exc, name):
    X, y = iris
    with pytest.raises(exc, match=name):
        Est(**params).fit(X, y)


def test_partial_fit_errors(iris):
    X, y = iris
    with pytest.raises(ValueError, match="classes"):
        AdamClassifier().partial_fit(X, y)
    with pytest.raises(ValueError, match="early_stopping"):
        AdamMLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])
    est = AdamClassifier().partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(X[:, :2], y)


def test_linear_classifier_rejects_single_class(iris):
    X, y = iris
    with pytest.raises(ValueError, match="class"):
        AdamClassifier().fit(X[:50], y[:50])
