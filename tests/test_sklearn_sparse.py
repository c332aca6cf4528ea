"""Lazy (sparse) Adam in the estimators: ``sparse_updates``.

* ``"dense"`` on CSR/CSC input gives the model of dense input (the existing path);
* ``"lazy"`` equals a slow float64 NumPy reference of lazy Adam written here: per
  minibatch, only the first-layer weight rows of features with a nonzero value in the
  batch get a gradient (with their L2 term ``alpha / batch weight * w``), moments and an
  Adam step using the global step count; untouched rows, their moments and L2 are left.
"""
import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("sklearn")

from fastadam.sklearn import (AdamClassifier, AdamMLPClassifier,  # noqa: E402
                              AdamMLPRegressor, AdamRegressor)

# Fits here stop at max_iter on purpose; the warning saying so is expected.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _sparse_data(n=120, d=40, density=0.1, seed=0, classes=2):
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", random_state=seed,
                  data_rvs=lambda k: rng.normal(size=k))
    mask = np.ones(d)
    mask[:3] = 0                    # three features never present
    X = sp.csr_matrix(X.multiply(mask))
    X.eliminate_zeros()
    w = rng.normal(size=(d, classes))
    y = np.asarray(X @ w).argmax(1)
    return X, y, np.asarray(X @ w[:, 0]).ravel()


def _params(est):
    return [np.array(a) for a in est._weights + est._intercepts]


# ------------------------------------------------------------------ float64 reference
def _adam(p, g, m, v, t, lr, b1, b2, eps):
    m[...] = b1 * m + (1 - b1) * g
    v[...] = b2 * v + (1 - b2) * g * g
    p -= lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)


def _ref_linear_lazy(X, Y, kind, alpha, lr, batch, epochs, fit_intercept=True,
                     b1=0.9, b2=0.999, eps=1e-8):
    """Lazy Adam for a linear model, float64, no shuffling. X dense (n, d) with zeros
    meaning 'absent'; Y (n, k) encoded targets; kind 'logistic'|'softmax'|'identity'."""
    n, d = X.shape
    k = Y.shape[1]
    W = np.zeros((d, k))
    b = np.zeros(k)
    mW, vW, mb, vb = np.zeros((d, k)), np.zeros((d, k)), np.zeros(k), np.zeros(k)
    t = 0
    for _ in range(epochs):
        for s in range(0, n, batch):
            Xb, Yb = X[s:s + batch], Y[s:s + batch]
            Z = Xb @ W + b
            if kind == "softmax":
                P = np.exp(Z - Z.max(1, keepdims=True))
                P /= P.sum(1, keepdims=True)
                D = (P - Yb) / len(Xb)
            elif kind == "logistic":
                D = (1 / (1 + np.exp(-Z)) - Yb) / len(Xb)
            else:
                D = (Z - Yb) / len(Xb)
            rows = np.flatnonzero((Xb != 0).any(0))
            G = Xb[:, rows].T @ D + alpha / len(Xb) * W[rows]
            gb = D.sum(0) if fit_intercept else np.zeros(k)
            t += 1
            Wr, mr, vr = W[rows], mW[rows], vW[rows]
            _adam(Wr, G, mr, vr, t, lr, b1, b2, eps)
            W[rows], mW[rows], vW[rows] = Wr, mr, vr
            _adam(b, gb, mb, vb, t, lr, b1, b2, eps)
    return W, b


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("classes", [2, 3])
def test_lazy_classifier_equals_float64_reference(fmt, classes):
    X, y, _ = _sparse_data(classes=classes)
    kw = dict(alpha=0.5, learning_rate_init=0.05, batch_size=16, max_iter=4,
              shuffle=False, tol=0, n_iter_no_change=100)
    est = AdamClassifier(sparse_updates="lazy", **kw).fit(X.asformat(fmt), y)
    Y = np.eye(classes)[y] if classes > 2 else y.reshape(-1, 1).astype(float)
    W, b = _ref_linear_lazy(X.toarray(), Y, "softmax" if classes > 2 else "logistic",
                            0.5, 0.05, 16, 4)
    np.testing.assert_allclose(est.coef_, W.T, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(est.intercept_, b, rtol=1e-10, atol=1e-13)
    # rows of features never present stay exactly at their initial value (0)
    absent = np.flatnonzero(X.getnnz(axis=0) == 0)
    assert absent.size and not est.coef_[:, absent].any()
    # and the lazy path really differs from the dense one (alpha reaches every row there)
    dense = AdamClassifier(sparse_updates="dense", **kw).fit(X, y)
    assert not np.allclose(dense.coef_, est.coef_)


def test_lazy_regressor_equals_float64_reference_no_intercept():
    X, _, yr = _sparse_data(seed=3)
    est = AdamRegressor(sparse_updates="lazy", alpha=0.2, learning_rate_init=0.03,
                        batch_size=25, max_iter=3, shuffle=False, tol=0,
                        fit_intercept=False, n_iter_no_change=100).fit(X, yr)
    W, b = _ref_linear_lazy(X.toarray(), yr.reshape(-1, 1), "identity", 0.2, 0.03, 25, 3,
                            fit_intercept=False)
    np.testing.assert_allclose(est.coef_, W[:, 0], rtol=1e-10, atol=1e-13)
    assert not est.intercept_.any()


def _ref_mlp_lazy(X, Y, W1, b1_, W2, b2_, alpha, lr, batch, epochs, b1=0.9, b2=0.999,
                  eps=1e-8):
    """One relu hidden layer, identity output (squared error): lazy first layer,
    dense Adam (with L2 on every weight) for the second layer, float64."""
    n = X.shape[0]
    P = [W1, b1_, W2, b2_]
    M = [np.zeros_like(p) for p in P]
    V = [np.zeros_like(p) for p in P]
    t = 0
    for _ in range(epochs):
        for s in range(0, n, batch):
            Xb, Yb = X[s:s + batch], Y[s:s + batch]
            nb = len(Xb)
            H = np.maximum(Xb @ W1 + b1_, 0)
            D2 = (H @ W2 + b2_ - Yb) / nb
            G2 = H.T @ D2 + alpha / nb * W2
            D1 = (D2 @ W2.T) * (H > 0)
            rows = np.flatnonzero((Xb != 0).any(0))
            G1 = Xb[:, rows].T @ D1 + alpha / nb * W1[rows]
            t += 1
            Wr, mr, vr = W1[rows], M[0][rows], V[0][rows]
            _adam(Wr, G1, mr, vr, t, lr, b1, b2, eps)
            W1[rows], M[0][rows], V[0][rows] = Wr, mr, vr
            _adam(b1_, D1.sum(0), M[1], V[1], t, lr, b1, b2, eps)
            _adam(W2, G2, M[2], V[2], t, lr, b1, b2, eps)
            _adam(b2_, D2.sum(0), M[3], V[3], t, lr, b1, b2, eps)
    return P


def test_lazy_mlp_first_layer_equals_float64_reference():
    X, _, yr = _sparse_data(seed=5)
    kw = dict(hidden_layer_sizes=(7,), alpha=0.3, learning_rate_init=0.01, batch_size=20,
              max_iter=3, shuffle=False, tol=0, n_iter_no_change=100, random_state=0)
    # the same initial weights: Glorot-uniform draws from random_state=0, in order
    rng = np.random.RandomState(0)
    d, h = X.shape[1], 7
    bound1, bound2 = np.sqrt(6 / (d + h)), np.sqrt(6 / (h + 1))
    W1 = rng.uniform(-bound1, bound1, (d, h))
    b1 = rng.uniform(-bound1, bound1, h)
    W2 = rng.uniform(-bound2, bound2, (h, 1))
    b2 = rng.uniform(-bound2, bound2, 1)
    est = AdamMLPRegressor(**kw, sparse_updates="lazy").fit(X, yr)
    ref = _ref_mlp_lazy(X.toarray(), yr.reshape(-1, 1), W1, b1, W2, b2, 0.3, 0.01, 20, 3)
    for got, want in zip(est.coefs_ + est.intercepts_, [ref[0], ref[2], ref[1], ref[3]]):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("Est", [AdamClassifier, AdamRegressor, AdamMLPClassifier,
                                 AdamMLPRegressor])
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_dense_updates_on_sparse_input_equal_the_dense_path(Est, fmt):
    X, y, yr = _sparse_data(seed=1, classes=3)
    target = yr if "Regressor" in Est.__name__ else y
    kw = dict(random_state=0, max_iter=4, batch_size=32, alpha=0.1)
    if "MLP" in Est.__name__:
        kw["hidden_layer_sizes"] = (6,)
    a = Est(**kw).fit(X.toarray(), target)
    b = Est(sparse_updates="dense", **kw).fit(X.asformat(fmt), target)
    assert not b._lazy
    for p, q in zip(_params(a), _params(b)):
        np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-12)


def test_auto_is_lazy_for_sparse_and_dense_for_arrays():
    X, y, _ = _sparse_data()
    assert AdamClassifier(max_iter=2).fit(X, y)._lazy
    assert not AdamClassifier(max_iter=2).fit(X.toarray(), y)._lazy
    # lazy on a dense array equals lazy on the same data as CSR (zeros are absent)
    kw = dict(max_iter=3, random_state=0, sparse_updates="lazy", alpha=0.1)
    a = AdamClassifier(**kw).fit(X.toarray(), y)
    b = AdamClassifier(**kw).fit(X, y)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-12, atol=1e-14)


def test_lazy_float32_close_to_float64_and_stays_float32():
    X, y, _ = _sparse_data(classes=3)
    kw = dict(max_iter=5, random_state=0, sparse_updates="lazy", alpha=0.1)
    a = AdamClassifier(**kw).fit(X.astype(np.float32), y)
    b = AdamClassifier(**kw).fit(X, y)
    assert a.coef_.dtype == np.float32 and a._lazy_mv.dtype == np.float32
    np.testing.assert_allclose(a.coef_, b.coef_, atol=2e-4)


def test_lazy_partial_fit_continues_and_pickles():
    import pickle
    X, y, _ = _sparse_data(classes=3)
    kw = dict(random_state=0, sparse_updates="lazy", shuffle=False, batch_size=30)
    a = AdamClassifier(**kw)
    a.partial_fit(X, y, classes=np.arange(3))
    b = pickle.loads(pickle.dumps(a))
    a.partial_fit(X, y)
    b.partial_fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a._lazy_t == 2 * 4 and a.optimizer_.state_dict()["state"][0]["step"] == 8


def test_lazy_reported_loss_includes_l2_of_all_weights():
    # the L2 term of loss_ uses a running sum of squares of the lazy layer (not an
    # O(n_features) pass per batch): it must equal the float64 formula
    X, y, _ = _sparse_data(classes=2)
    kw = dict(alpha=2.0, batch_size=120, shuffle=False, max_iter=3, tol=0,
              n_iter_no_change=100)
    a = AdamClassifier(sparse_updates="lazy", **kw).fit(X, y)
    # one batch per epoch: the loss of epoch e is that of the weights after e-1 steps
    b = AdamClassifier(sparse_updates="lazy", **{**kw, "max_iter": 2}).fit(X, y)
    Z = X @ b.coef_.T + b.intercept_
    z = np.asarray(Z).ravel()
    data = np.mean(np.logaddexp(0, z) - y * z)
    w = b.coef_.ravel()
    np.testing.assert_allclose(a.loss_curve_[2], data + 0.5 * 2.0 * (w @ w) / 120,
                               rtol=1e-10)


def test_lazy_rows_untouched_by_a_batch_are_not_written():
    X, y, _ = _sparse_data(n=60, d=500, density=0.01, classes=2)
    est = AdamClassifier(sparse_updates="lazy", max_iter=1, batch_size=60, shuffle=False,
                         alpha=1.0)
    est.fit(X, y)
    seen = X.getnnz(axis=0) > 0
    v = est._lazy_mv[..., 1]          # (n_features, 1) exp_avg_sq
    assert np.all(v[~seen] == 0) and np.all(v[seen] > 0)


def test_sparse_updates_validated_in_fit():
    X, y, _ = _sparse_data()
    est = AdamClassifier(sparse_updates="sometimes")      # stored as given
    assert est.sparse_updates == "sometimes"
    with pytest.raises(ValueError, match="sparse_updates"):
        est.fit(X, y)


# ------------------------------------------------------------------ with comm (MPI)
ESTIMATORS = [AdamClassifier, AdamRegressor, AdamMLPClassifier, AdamMLPRegressor]


class _FakeComm:
    """Stands for a communicator where no collective is reached."""


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_lazy_with_comm_refused_and_auto_resolves_to_dense(Est):
    # the lazy layer's moments live outside the sharded optimizer: "lazy" + comm is an
    # error naming both parameters, "auto" + comm is dense even for sparse X
    X, _, _ = _sparse_data()
    est = Est(sparse_updates="lazy", comm=_FakeComm())
    with pytest.raises(ValueError, match=r"sparse_updates='lazy'.*comm"):
        est._validate_hyperparams(False)
    assert not Est(comm=_FakeComm())._resolve_sparse_updates(X)
    assert not Est(sparse_updates="dense", comm=_FakeComm())._resolve_sparse_updates(X)
    assert Est()._resolve_sparse_updates(X)
    Est(comm=_FakeComm())._validate_hyperparams(False)          # "auto": accepted


def _comm_self():
    pytest.importorskip("mpi4py")
    from mpi4py import MPI
    return MPI.COMM_SELF


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_fit_with_comm_and_lazy_raises_before_training(Est):
    comm = _comm_self()
    X, y, r = _sparse_data(classes=3)
    target = y if Est in (AdamClassifier, AdamMLPClassifier) else r
    est = Est(sparse_updates="lazy", comm=comm, max_iter=2)
    with pytest.raises(ValueError, match=r"sparse_updates='lazy'.*comm"):
        est.fit(X, target)
    assert not hasattr(est, "optimizer_")


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_comm_auto_on_sparse_input_is_the_dense_fit(Est):
    from fastadam.distributed import ShardedOptimizer
    comm = _comm_self()
    X, y, r = _sparse_data(classes=3)
    target = y if Est in (AdamClassifier, AdamMLPClassifier) else r
    kw = {"max_iter": 3, "random_state": 0, "batch_size": 30, "alpha": 0.1}
    if Est in (AdamMLPClassifier, AdamMLPRegressor):
        kw["hidden_layer_sizes"] = (8,)
    a = Est(comm=comm, **kw).fit(X, target)
    assert not a._lazy and isinstance(a.optimizer_, ShardedOptimizer)
    assert not hasattr(a, "_lazy_mv")
    b = Est(sparse_updates="dense", **kw).fit(X, target)
    for p, q in zip(_params(a), _params(b)):
        np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-12)


def test_lazy_model_under_a_comm_continues_dense():
    # partial_fit under another comm than the optimizer's starts fresh moments: the
    # layer updates are chosen again, dense with the comm
    from fastadam.distributed import ShardedOptimizer
    comm = _comm_self()
    X, y, _ = _sparse_data(classes=3)
    est = AdamClassifier(random_state=0)
    est.partial_fit(X, y, classes=np.arange(3))
    assert est._lazy and hasattr(est, "_lazy_mv")
    est.set_params(comm=comm)
    est.partial_fit(X, y)
    assert not est._lazy and not hasattr(est, "_lazy_mv")
    assert isinstance(est.optimizer_, ShardedOptimizer)
    est.set_params(comm=None)
    est.partial_fit(X, y)                    # back to one process: "auto" is lazy again
    assert est._lazy and not isinstance(est.optimizer_, ShardedOptimizer)


@pytest.mark.parametrize("case", ["binary", "multinomial-weights", "regressor-no-intercept",
                                  "huber-weights-zero-batch"])
def test_compiled_lazy_epoch_equals_the_minibatch_loop(monkeypatch, case):
    """The whole-epoch compiled loop of the lazy linear models (shuffled, sample
    weights with an all-zero minibatch, no intercept, huber) gives the weights, moments,
    intercept optimizer state and losses of the minibatch-by-minibatch path."""
    X, y, yr = _sparse_data(n=150, classes=3 if "multinomial" in case else 2)
    rng = np.random.default_rng(3)
    sw = rng.random(150) if "weights" in case else None
    if case.endswith("zero-batch"):
        sw[:25] = 0.0                       # with shuffle=False: a minibatch of weight 0
    kw = dict(sparse_updates="lazy", max_iter=4, tol=0, n_iter_no_change=100, alpha=0.05,
              batch_size=25, random_state=1, shuffle="zero-batch" not in case)
    if case.startswith("regressor"):
        Est, target, kw = AdamRegressor, yr, {**kw, "fit_intercept": False}
    elif case.startswith("huber"):
        Est, target, kw = AdamRegressor, yr, {**kw, "loss": "huber"}
    else:
        Est, target = AdamClassifier, y
    fits = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(Est, "_compiled_lazy_epoch", lambda self: False)
        est = Est(**kw).fit(X, target, sample_weight=sw)
        est.partial_fit(X, target, sample_weight=sw)
        fits.append(est)
    a, b = fits
    for p, q in zip(_params(a) + [a._lazy_mv], _params(b) + [b._lazy_mv]):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-12)
    assert a._lazy_t == b._lazy_t > 0
    sa, sb = (e.optimizer_.state_dict()["state"][0] for e in (a, b))
    assert sa["step"] == sb["step"] == a._lazy_t
    for k in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_allclose(sa[k], sb[k], rtol=1e-12, atol=1e-15)


def _wide(n=60, d=4000, nnz=5, seed=4):
    """Few nonzeros over many features: nnz * epochs < n_features / 4 for one epoch."""
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, d, (n, nnz))
    X = sp.csr_matrix((rng.normal(size=n * nnz), cols.ravel(), np.arange(0, n * nnz + 1, nnz)),
                      shape=(n, d))
    X.sum_duplicates()
    return X, (np.asarray(X.sum(1)).ravel() > 0).astype(int)


def test_table_epoch_is_skipped_when_it_would_not_pay_and_results_agree(monkeypatch):
    """The compiled epoch packs a table of all n_features (O(n_features) per call); a
    call with nnz * epochs < n_features / 4 (partial_fit on a few rows of a wide model)
    takes the O(nnz) minibatch loop instead. Both paths give the same model, and every
    path leaves the public weights and moments (coef_, _lazy_mv) up to date."""
    X, y = _wide()
    packs = []
    orig = AdamClassifier._lazy_pack
    monkeypatch.setattr(AdamClassifier, "_lazy_pack",
                        lambda self, X: packs.append(1) or orig(self, X))
    kw = dict(sparse_updates="lazy", batch_size=8, alpha=0.01, random_state=0)
    a = AdamClassifier(**kw, max_iter=20, tol=0, n_iter_no_change=100).fit(X, y)
    assert packs == [1]                       # 20 epochs * 300 nnz >= 4000 / 4
    for _ in range(3):
        a.partial_fit(X[:10], y[:10])         # 50 nnz < 1000: the minibatch loop
    assert packs == [1]
    monkeypatch.setattr(AdamClassifier, "_compiled_lazy_epoch", lambda self: False)
    b = AdamClassifier(**kw, max_iter=20, tol=0, n_iter_no_change=100).fit(X, y)
    for _ in range(3):
        b.partial_fit(X[:10], y[:10])
    for p, q in zip(_params(a) + [a._lazy_mv], _params(b) + [b._lazy_mv]):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-15)
    assert not hasattr(a, "_lazy_table")
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-12)


def test_compiled_epoch_with_early_stopping_scores_the_current_weights(monkeypatch):
    """Under early stopping the validation score of each epoch is computed from coef_,
    which the compiled loop's table is copied into after every epoch: the scores, the
    best weights restored at the end and the moments equal the minibatch path's."""
    X, y, _ = _sparse_data(n=300, d=30)
    kw = dict(sparse_updates="lazy", max_iter=12, early_stopping=True,
              validation_fraction=0.2, n_iter_no_change=3, tol=1e-3, alpha=0.01,
              batch_size=20, random_state=2, learning_rate_init=0.05)
    a = AdamClassifier(**kw).fit(X, y)
    monkeypatch.setattr(AdamClassifier, "_compiled_lazy_epoch", lambda self: False)
    b = AdamClassifier(**kw).fit(X, y)
    assert len(a.validation_scores_) == len(b.validation_scores_) >= 3
    np.testing.assert_allclose(a.validation_scores_, b.validation_scores_, rtol=1e-12)
    for p, q in zip(_params(a) + [a._lazy_mv], _params(b) + [b._lazy_mv]):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-15)


def test_compact_columns_renumbers_the_present_features():
    from fastadam.sklearn._lazy_linear import compact_columns
    rng = np.random.default_rng(5)
    indices = rng.integers(0, 1000, 300).astype(np.int32)
    ids, local = compact_columns(indices, 1000)
    np.testing.assert_array_equal(ids, np.unique(indices))
    np.testing.assert_array_equal(ids[local], indices)
    assert local.dtype == np.int32 and compact_columns(indices[:0], 10)[0].shape == (0,)
