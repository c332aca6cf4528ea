"""Data-parallel estimators (comm=): each rank holds its own, unevenly sized, rows.

* exact: with shuffle=False, a data-parallel fit equals one process stepping, by
  partial_fit, on the pooled minibatches (every rank's slice k of its rows), with sample
  weights, L2, a rank that holds fewer rows than there are steps (empty slices) and
  ranks that see only some of the classes;
* accuracy: held-out accuracy (R^2 for regressors) within one point of a single-process
  fit on all the data, identical parameters on every rank;
* early stopping decided on the pooled validation score, the same everywhere;
* bad input on one rank raises the same error on every rank; pickling drops the comm.
* sparse X takes dense steps under a comm; sparse_updates="lazy" (even on one rank)
  raises the same error on every rank.
"""
import pickle
import warnings

import numpy as np
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from _common import COMM, RANK, SIZE, assert_same_everywhere, done, ok
import fastadam.sklearn as fsk

warnings.simplefilter("ignore", ConvergenceWarning)


def shares(n, fractions):
    """Row bounds of each rank: uneven shares of n rows."""
    f = np.asarray(fractions[:SIZE], float)
    f = f / f.sum()
    return np.concatenate([[0], np.round(np.cumsum(f) * n).astype(int)])


def mine(bounds, *arrays):
    lo, hi = bounds[RANK], bounds[RANK + 1]
    return [None if a is None else a[lo:hi] for a in arrays]


def clf_data(n=1500, classes=3, seed=0):
    X, y = make_classification(n + 500, 12, n_informative=8, n_classes=classes,
                               n_clusters_per_class=1, class_sep=1.2, random_state=seed)
    X = StandardScaler().fit_transform(X)
    return train_test_split(X, y, train_size=n, random_state=seed)


def reg_data(n=1500, seed=0):
    X, y = make_regression(n + 500, 12, n_informative=8, noise=5.0, random_state=seed)
    X = StandardScaler().fit_transform(X)
    y = (y - y.mean()) / y.std()
    return train_test_split(X, y, train_size=n, random_state=seed)


# ------------------------------------------------------------------------ exact
def exact(name, cls, kw, X, y, sw, fractions, batch_size, epochs, classes=None):
    """The data-parallel fit == partial_fit on the pooled minibatches, one step each."""
    b = shares(len(X), fractions)
    Xr, yr, swr = mine(b, X, y, sw)
    est = cls(comm=COMM, shuffle=False, batch_size=batch_size, max_iter=epochs,
              n_iter_no_change=10 ** 6, random_state=0, **kw)
    est.fit(Xr, yr, sample_weight=swr)
    assert_same_everywhere(name, [est._flat])
    # the pooled minibatches, as one process sees them
    counts = np.diff(b)
    steps = -(-len(X) // batch_size)
    cuts = [(k * counts[:, None]) // steps for k in range(steps + 1)]
    ref = cls(shuffle=False, batch_size=len(X), random_state=0, **kw)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # batch_size > rows: clipped
        for _ in range(epochs):
            acc = 0.0
            for k in range(steps):
                rows = np.concatenate([np.arange(b[r] + cuts[k][r, 0], b[r] + cuts[k + 1][r, 0])
                                       for r in range(SIZE)])
                extra = {} if classes is None else {"classes": classes}
                if sw is not None and not sw[rows].sum() > 0:
                    continue
                ref.partial_fit(X[rows], y[rows], None if sw is None else sw[rows], **extra)
                acc += ref.loss_ * len(rows)
            losses.append(acc / len(X))
    err = np.abs(est._flat - ref._flat).max() / max(1.0, np.abs(ref._flat).max())
    assert err < 1e-9, f"{name}: data-parallel differs from the pooled batches by {err:.3g}"
    assert est.t_ == len(X) * epochs and est.n_iter_ == epochs
    np.testing.assert_allclose(est.loss_curve_, losses, rtol=1e-9, err_msg=name)
    ok(name)


rng = np.random.default_rng(5)
Xc, Xc_test, yc, yc_test = clf_data()
order = np.argsort(yc, kind="stable")          # rank 0 sees class 0 (and 1), the last 2
Xs, ys = Xc[order], yc[order]
swc = rng.uniform(0.0, 2.0, len(Xs))
# the last rank holds 2 rows: fewer than the 8 steps, so it has empty slices
fr = [0.6, 0.4] if SIZE == 2 else [0.6, 0.4 - 2 / 1500, 2 / 1500]
exact("exact_linear_classifier_sorted_weighted", fsk.AdamClassifier, dict(alpha=1e-2),
      Xs, ys, swc, fr, 200, 3, classes=[0, 1, 2])
exact("exact_mlp_classifier", fsk.AdamMLPClassifier,
      dict(hidden_layer_sizes=(16,), alpha=1e-3), Xs, ys, None, fr, 190, 2,
      classes=[0, 1, 2])
Xr_, _, yr_, _ = reg_data()
exact("exact_linear_regressor_huber", fsk.AdamRegressor,
      dict(loss="huber", alpha=1e-3), Xr_, yr_, rng.uniform(0.5, 1.5, len(Xr_)),
      fr, 128, 3)
exact("exact_mlp_regressor", fsk.AdamMLPRegressor, dict(hidden_layer_sizes=(8,)),
      Xr_, np.c_[yr_, -yr_], None, [0.3, 0.5, 0.2], 256, 2)


# ------------------------------------------------------------------------ accuracy
def accuracy(name, cls, kw, data, fractions=(0.5, 0.3, 0.2)):
    X, X_test, y, y_test = data
    single = cls(random_state=0, **kw).fit(X, y)
    b = shares(len(X), fractions)
    Xr, yr = mine(b, X, y)
    est = cls(random_state=0, comm=COMM, **kw).fit(Xr, yr)
    assert_same_everywhere(name, [est._flat])
    s1, s2 = single.score(X_test, y_test), est.score(X_test, y_test)
    assert abs(s1 - s2) <= 0.01, f"{name}: single process {s1:.4f}, {SIZE} ranks {s2:.4f}"
    if RANK == 0:
        print(f"{name}: single {s1:.4f} ({single.n_iter_} epochs), {SIZE} ranks {s2:.4f} "
              f"({est.n_iter_} epochs)", flush=True)
    ok(name)
    return est


est = accuracy("accuracy_linear_classifier", fsk.AdamClassifier, {}, clf_data())
accuracy("accuracy_linear_regressor", fsk.AdamRegressor, {}, reg_data())
accuracy("accuracy_mlp_classifier", fsk.AdamMLPClassifier,
         dict(hidden_layer_sizes=(32,), max_iter=60, learning_rate_init=3e-3), clf_data())
accuracy("accuracy_mlp_regressor", fsk.AdamMLPRegressor,
         dict(hidden_layer_sizes=(32,), max_iter=60, learning_rate_init=3e-3), reg_data())

# ---- pickling: the comm is dropped, the model kept
copy = pickle.loads(pickle.dumps(est))
assert copy.comm is None and est.comm is COMM
np.testing.assert_array_equal(copy.coef_, est.coef_)
copy.partial_fit(Xc[:50], yc[:50])              # a plain single-process model now
ok("pickle_drops_comm")

# ---- clone keeps the very communicator (one that cannot be deep-copied, too)
from sklearn.base import clone  # noqa: E402
dup = COMM.Dup()
c = clone(fsk.AdamRegressor(alpha=1e-3, comm=dup))
assert c.comm is dup and c.alpha == 1e-3
c.fit(*mine(shares(len(Xr_), [1, 1, 1]), Xr_, yr_))
assert_same_everywhere("clone", [c._flat])
cc = clone(c)
assert cc.comm is dup and not hasattr(cc, "coef_")
dup.Free()
ok("clone_keeps_comm")

# ---- early stopping on the pooled validation score: same decision everywhere
X, X_test, y, y_test = clf_data(seed=1)
b = shares(len(X), [0.5, 0.3, 0.2])
Xr, yr = mine(b, X, y)
kw = dict(hidden_layer_sizes=(16,), early_stopping=True, max_iter=300, random_state=0)
single = fsk.AdamMLPClassifier(**kw).fit(X, y)
es = fsk.AdamMLPClassifier(comm=COMM, **kw).fit(Xr, yr)
assert_same_everywhere("early_stopping", [es._flat])
runs = COMM.allgather((es.n_iter_, es.validation_scores_))
assert all(r == runs[0] for r in runs), runs
assert es.n_iter_ < 300 and len(es.validation_scores_) == es.n_iter_
assert es.best_validation_score_ == max(es.validation_scores_)
# the validation sets differ (each rank splits its own rows): a looser bound than above
s1, s2 = single.score(X_test, y_test), es.score(X_test, y_test)
assert abs(s1 - s2) <= 0.03, (s1, s2)
if RANK == 0:
    print(f"early_stopping: single {s1:.4f} ({single.n_iter_} epochs), {SIZE} ranks "
          f"{s2:.4f} ({es.n_iter_} epochs)", flush=True)
ok("early_stopping")

# ---- partial_fit: classes given everywhere; bad input on one rank raises everywhere
pf = fsk.AdamClassifier(random_state=0, comm=COMM)
pf.partial_fit(Xr, yr, classes=[0, 1, 2])
assert_same_everywhere("partial_fit", [pf._flat])
for what, args in [("n_features", (Xr[:, :5] if RANK == SIZE - 1 else Xr, yr)),
                   ("nan", (np.where(RANK == 0, np.nan, Xr), yr)),
                   ("new_class", (Xr, np.where(RANK == SIZE - 1, 7, yr)))]:
    try:
        pf.partial_fit(*args)
    except ValueError as e:
        msg = str(e)
    else:
        raise AssertionError(f"{what}: no error")
    msgs = COMM.allgather(msg)
    assert all(m == msgs[0] for m in msgs), msgs
    assert "on rank" in msg, msg
assert_same_everywhere("after_errors", [pf._flat])
ok("errors_everywhere")

# ---- partial_fit block by block (the Dask route on every rank): blocks of different
# sizes on each rank, the same number of calls
inc = fsk.AdamMLPRegressor(hidden_layer_sizes=(8,), random_state=0, comm=COMM)
X, _, y, _ = reg_data(seed=2)
b = shares(len(X), [0.5, 0.3, 0.2])
Xr, yr = mine(b, X, y)
for block in np.array_split(np.arange(len(Xr)), 4):
    inc.partial_fit(Xr[block], yr[block])
assert_same_everywhere("partial_fit_blocks", [inc._flat])
assert inc.t_ == len(X) and inc.n_iter_ == 4
ok("partial_fit_blocks")

# ---- a rank without rows takes part in every step (and in the validation score)
b = np.array([0, 700] + [1000] * (SIZE - 1))        # the last rank: no rows
for cls in (fsk.AdamClassifier, fsk.AdamMLPRegressor):
    X, _, y, _ = clf_data(seed=3) if cls is fsk.AdamClassifier else reg_data(seed=3)
    Xr, yr = mine(b, X[:1000], y[:1000])
    e = cls(random_state=0, comm=COMM, early_stopping=True, max_iter=30).fit(Xr, yr)
    assert_same_everywhere("zero_rows", [e._flat])
    runs = COMM.allgather(e.validation_scores_)
    assert all(r == runs[0] for r in runs) and e.t_ == 900 * e.n_iter_
    e.set_params(early_stopping=False).partial_fit(Xr, yr)
    assert_same_everywhere("zero_rows_partial_fit", [e._flat])
ok("zero_rows")

# ---- sparse X: "auto" is dense under a comm (the lazy layer's moments would stay on
# each rank); "lazy" on any rank raises the same error everywhere, before training
import scipy.sparse as sp  # noqa: E402
X, X_test, y, y_test = clf_data(seed=4)
X = sp.csr_matrix(np.where(np.abs(X) > 0.8, X, 0.0))
b = shares(X.shape[0], [0.5, 0.3, 0.2])
Xr, yr = mine(b, X, y)
kw = dict(hidden_layer_sizes=(8,), random_state=0, max_iter=5, shuffle=False)
sparse_dp = fsk.AdamMLPClassifier(comm=COMM, **kw).fit(Xr, yr)
assert not sparse_dp._lazy and not hasattr(sparse_dp, "_lazy_mv")
assert_same_everywhere("sparse_auto_dense", [sparse_dp._flat])
mode = "lazy" if RANK == 0 else "auto"
bad = fsk.AdamClassifier(comm=COMM, sparse_updates=mode, max_iter=2)
try:
    bad.fit(Xr, yr)
except ValueError as e:
    msg = str(e)
else:
    raise AssertionError("sparse_updates='lazy' with comm: no error")
msgs = COMM.allgather(msg)
assert all(m == msgs[0] for m in msgs), msgs
assert "sparse_updates" in msg and "comm" in msg and "on rank 0" in msg, msg
assert not hasattr(bad, "optimizer_")
ok("sparse_dense_under_comm")
done()
