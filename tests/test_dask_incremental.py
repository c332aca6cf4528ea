"""Out-of-core training through dask-ml's ``Incremental`` wrapper: ``partial_fit`` is
called block by block on a dask array of many blocks, never on the whole array at once.
Skipped when dask-ml is not installed."""
import numpy as np
import pytest

da = pytest.importorskip("dask.array")
Incremental = pytest.importorskip("dask_ml.wrappers").Incremental


def _data(n=6000, d=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    y_reg = X @ w + 0.1 * rng.standard_normal(n)
    y_clf = (X @ w > 0).astype(int)
    return X, y_clf, y_reg


@pytest.mark.parametrize("name", ["AdamClassifier", "AdamMLPClassifier"])
def test_incremental_classifier_block_by_block(name):
    from dask import config

    import fastadam.sklearn as fsk
    X, y, _ = _data()
    Xd = da.from_array(X, chunks=(500, X.shape[1]))        # 12 blocks
    yd = da.from_array(y, chunks=500)
    est = getattr(fsk, name)(random_state=0, max_iter=1, batch_size=100, learning_rate_init=0.02)
    inc = Incremental(est, scoring="accuracy", shuffle_blocks=False)
    with config.set(scheduler="synchronous"):
        for _ in range(3):                                     # three passes over the data
            inc.partial_fit(Xd, yd, classes=[0, 1])
        acc = inc.score(Xd, yd)
    fitted = inc.estimator_
    assert fitted.classes_.tolist() == [0, 1]
    assert acc > 0.9, acc
    # the same blocks by hand give the same model: Incremental only routes blocks
    ref = getattr(fsk, name)(random_state=0, max_iter=1, batch_size=100, learning_rate_init=0.02)
    for _ in range(3):
        for k in range(12):
            ref.partial_fit(X[500 * k:500 * (k + 1)], y[500 * k:500 * (k + 1)], classes=[0, 1])
    np.testing.assert_allclose(fitted.predict_proba(X), ref.predict_proba(X), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("name", ["AdamRegressor", "AdamMLPRegressor"])
def test_incremental_regressor_sees_only_blocks(name):
    from dask import config

    import fastadam.sklearn as fsk
    X, _, y = _data()
    Xd = da.from_array(X, chunks=(400, X.shape[1]))        # 15 blocks
    yd = da.from_array(y, chunks=400)

    class Recording(getattr(fsk, name)):          # survives Incremental's clone()
        sizes = []

        def partial_fit(self, X, y, **kw):
            Recording.sizes.append(len(X))
            return super().partial_fit(X, y, **kw)

    est = Recording(random_state=0, max_iter=1, batch_size=100, learning_rate_init=0.05)
    inc = Incremental(est, shuffle_blocks=False)
    with config.set(scheduler="synchronous"):
        for _ in range(4):
            inc.partial_fit(Xd, yd)
    # scored on NumPy: dask-ml's own r2_score trips over the unknown chunk sizes of
    # predictions on current dask (a dask-ml issue, not the estimator's)
    r2 = inc.estimator_.score(X, y)
    assert r2 > 0.95, r2
    # partial_fit only ever saw one block: 4 passes x 15 blocks of 400 rows
    assert Recording.sizes == [400] * 60, Recording.sizes
