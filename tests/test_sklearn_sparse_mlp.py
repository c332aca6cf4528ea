"""The lazy first layer of the MLP estimators, and of the linear models in calls too
small for their compiled epoch: the two-call minibatch path of
``fastadam/sklearn/_lazy_mlp.py`` (``batch_forward`` reading the rows in place and
finding the touched features once, ``batch_step`` with prefetching) gives exactly the
model of the previous path (``take_rows`` + ``csr_forward`` + ``lazy_adam_step``, still
used when ``_batched_lazy`` is False). The lazy path itself is tested against a
float64 NumPy reference in test_sklearn_sparse.py."""
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("sklearn")

from fastadam.sklearn import (AdamClassifier, AdamMLPClassifier, AdamMLPRegressor,  # noqa: E402
                               AdamRegressor)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(n=160, d=300, nnz=6, seed=0, classes=2, zeros=False):
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, d - 5, (n, nnz))          # the last 5 features never occur
    vals = rng.normal(size=(n, nnz))
    if zeros:
        vals[:, 0] = 0.0                             # stored zeros touch no row
    X = sp.csr_matrix((vals.ravel(), cols.ravel(), np.arange(0, n * nnz + 1, nnz)),
                      shape=(n, d))
    X.sum_duplicates()
    w = rng.normal(size=(d, classes))
    y = np.asarray(X @ w).argmax(1)
    return X, y, np.asarray(X @ w[:, 0]).ravel()


def _state(est):
    out = [np.array(a) for a in est._weights + est._intercepts] + [est._lazy_mv.copy()]
    for st in est.optimizer_.state_dict()["state"].values():
        out += [np.asarray(st[k]) for k in ("exp_avg", "exp_avg_sq")]
    return out


def _both(monkeypatch, Est, fit):
    """fit(Est) with the batched path, then with the previous path."""
    a = fit(Est)
    monkeypatch.setattr(Est, "_batched_lazy", lambda self: False)
    b = fit(Est)
    monkeypatch.undo()
    return a, b


def _assert_same(a, b):
    sa, sb = _state(a), _state(b)
    assert len(sa) == len(sb)
    for p, q in zip(sa, sb):
        assert p.dtype == q.dtype
        np.testing.assert_array_equal(p, q)     # the same arithmetic in the same order
    np.testing.assert_array_equal(a.loss_curve_, b.loss_curve_)
    assert a._lazy_t == b._lazy_t > 0


CASES = ["binary", "multiclass-weights", "regressor-huber-zero-batch", "two-hidden",
         "float32", "stored-zeros-logistic"]


@pytest.mark.parametrize("case", CASES)
def test_batched_lazy_mlp_equals_the_previous_path(monkeypatch, case):
    """fit then two partial_fit calls (shuffled; sample weights with a minibatch of
    weight 0; huber; two hidden layers; float32; stored zeros): the weights, lazy
    moments, optimizer state and loss curve are identical."""
    X, y, yr = _data(classes=3 if "multiclass" in case else 2, zeros="zeros" in case)
    sw = None
    if "weights" in case or "zero-batch" in case:
        sw = np.random.default_rng(1).random(X.shape[0])
    if "zero-batch" in case:
        sw[:20] = 0.0                      # with shuffle=False: a minibatch of weight 0
    if case == "float32":
        X = X.astype(np.float32)
    kw = dict(hidden_layer_sizes=(9, 4) if case == "two-hidden" else (11,), alpha=0.05,
              learning_rate_init=0.01, batch_size=20, max_iter=4, tol=0,
              n_iter_no_change=100, random_state=3, sparse_updates="lazy",
              shuffle="zero-batch" not in case,
              activation="logistic" if "logistic" in case else "relu")
    if case.startswith("regressor"):
        Est, target, kw = AdamMLPRegressor, yr, {**kw, "loss": "huber"}
    else:
        Est, target = AdamMLPClassifier, y

    def fit(Est):
        est = Est(**kw).fit(X, target, sample_weight=sw)
        for _ in range(2):
            est.partial_fit(X, target, sample_weight=sw)
        return est

    a, b = _both(monkeypatch, Est, fit)
    _assert_same(a, b)
    if case == "float32":
        assert a.coefs_[0].dtype == np.float32 and a._lazy_mv.dtype == np.float32


LINEAR_CASES = ["binary", "multinomial-weights", "regressor-huber-zero-batch", "float32",
                "no-intercept"]


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_batched_lazy_linear_minibatch_path_equals_the_previous_path(monkeypatch, case):
    """The linear models' minibatch loop (a model so wide that fit and partial_fit skip
    the fit-time table; coef_ is a transposed view, prefetched element by element):
    fit then two partial_fit calls give the model of the previous path bit for bit."""
    X, y, yr = _data(d=20000, classes=4 if "multinomial" in case else 2)
    assert 4 * X.nnz * 3 < X.shape[1]               # the compiled epoch is skipped
    sw = None
    if "weights" in case or "zero-batch" in case:
        sw = np.random.default_rng(1).random(X.shape[0])
    if "zero-batch" in case:
        sw[:20] = 0.0                      # with shuffle=False: a minibatch of weight 0
    if case == "float32":
        X = X.astype(np.float32)
    kw = dict(alpha=0.05, learning_rate_init=0.01, batch_size=20, max_iter=3, tol=0,
              n_iter_no_change=100, random_state=3, sparse_updates="lazy",
              shuffle="zero-batch" not in case, fit_intercept=case != "no-intercept")
    if case.startswith("regressor"):
        Est, target, kw = AdamRegressor, yr, {**kw, "loss": "huber"}
    else:
        Est, target = AdamClassifier, y

    def fit(Est):
        est = Est(**kw).fit(X, target, sample_weight=sw)
        for _ in range(2):
            est.partial_fit(X, target, sample_weight=sw)
        return est

    def no_table(self, X):
        raise AssertionError("the compiled epoch ran")

    monkeypatch.setattr(Est, "_lazy_pack", no_table)
    a = fit(Est)
    monkeypatch.setattr(Est, "_batched_lazy", lambda self: False)
    b = fit(Est)
    monkeypatch.undo()
    _assert_same(a, b)
    if case == "float32":
        assert a.coef_.dtype == np.float32 and a._lazy_mv.dtype == np.float32


def test_batched_lazy_mlp_early_stopping(monkeypatch):
    X, y, _ = _data(n=300)
    kw = dict(hidden_layer_sizes=(8,), sparse_updates="lazy", max_iter=15,
              early_stopping=True, validation_fraction=0.2, n_iter_no_change=3, tol=1e-3,
              alpha=0.01, batch_size=20, random_state=2, learning_rate_init=0.05)
    a, b = _both(monkeypatch, AdamMLPClassifier, lambda Est: Est(**kw).fit(X, y))
    assert len(a.validation_scores_) == len(b.validation_scores_) >= 3
    np.testing.assert_array_equal(a.validation_scores_, b.validation_scores_)
    _assert_same(a, b)


def test_batched_lazy_mlp_partial_fit_after_pickling(monkeypatch):
    X, y, _ = _data()
    kw = dict(hidden_layer_sizes=(6,), sparse_updates="lazy", batch_size=25,
              random_state=0, alpha=0.1)

    def fit(Est):
        est = Est(**kw)
        est.partial_fit(X[:80], y[:80], classes=[0, 1])
        est = pickle.loads(pickle.dumps(est))
        est.partial_fit(X[80:], y[80:])
        return est

    _assert_same(*_both(monkeypatch, AdamMLPClassifier, fit))


@pytest.mark.filterwarnings("ignore:batch_size")     # the one-row first call
@pytest.mark.parametrize("alpha", [0.0, 5.0])
def test_batched_lazy_mlp_leaves_untouched_rows_alone(alpha):
    """One minibatch: the first-layer rows (and moments) of the features it does not
    touch keep their values exactly, with or without L2 (no decay, no catch-up); the
    touched rows get the L2 term (alpha changes them)."""
    X, y, _ = _data(n=40, zeros=True)
    kw = dict(hidden_layer_sizes=(5,), sparse_updates="lazy", batch_size=40,
              random_state=0, shuffle=False)
    init = AdamMLPClassifier(**kw, max_iter=1, alpha=alpha)
    init.partial_fit(X[:1], y[:1], classes=[0, 1])
    W0 = init.coefs_[0].copy()
    mv0 = init._lazy_mv.copy()
    init.partial_fit(X, y)
    touched = np.zeros(X.shape[1], bool)
    touched[X.indices[X.data != 0]] = True
    np.testing.assert_array_equal(init.coefs_[0][~touched], W0[~touched])
    np.testing.assert_array_equal(init._lazy_mv[~touched], mv0[~touched])
    assert np.all(init._lazy_mv[touched][..., 1].max(1) > 0)    # each touched row stepped
    other = AdamMLPClassifier(**kw, max_iter=1, alpha=alpha + 1.0)
    other.partial_fit(X[:1], y[:1], classes=[0, 1])
    other.partial_fit(X, y)
    assert np.all(np.abs(other.coefs_[0][touched] - init.coefs_[0][touched]).max(1) > 0)
    np.testing.assert_array_equal(other.coefs_[0][~touched], W0[~touched])


def test_prefetch_weights_any_layout():
    """prefetch_weights compiles for an MLP's C-contiguous rows and for a linear model's
    transposed coef_ view (and a Fortran-ordered array), emits prefetch hints in both
    cases, and changes nothing."""
    import numba

    from fastadam.sklearn._lazy_mlp import prefetch_weights

    @numba.njit
    def touch(W, rows):
        for j in rows:
            prefetch_weights(W, j, False)
            prefetch_weights(W, j, True)
        return W.sum()

    rows = np.array([0, 3, 7])
    coef = np.arange(3 * 8, dtype=np.float64).reshape(3, 8)
    for W in (np.arange(8 * 20, dtype=np.float32).reshape(8, 20), coef.T,
              np.asfortranarray(coef.T), coef.T[:, :1]):
        before = W.copy()
        assert touch(W, rows) == before.sum()
        np.testing.assert_array_equal(W, before)
    for sig in touch.signatures:
        assert "llvm.prefetch" in touch.inspect_llvm(sig)
