"""The stopping rules of scikit-learn's MLP, shared by every estimator: the validation
split of ``early_stopping`` and the end-of-epoch test of ``tol`` / ``n_iter_no_change``
(on the validation score with early stopping, else on the training loss). ``dp`` is the
data-parallel context of a fit with ``comm`` (``_parallel.DataParallel``), else None."""
from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.model_selection import train_test_split


def split_validation(est, X, Y, y, sw, rng, dp):
    """Hold out ``est.validation_fraction`` of the rows for early stopping; returns
    (X, Y, sw) of the training rows and ``early`` = (X_val, y_val, sw_val, best_flat),
    best_flat a copy of the weights to keep the best validation score's. Resets the
    estimator's validation record."""
    n_samples = X.shape[0]
    # scikit-learn's MLP stratifies single-output classification only; same rule so
    # that the same random_state gives the same split.
    stratify = y if (isinstance(est, ClassifierMixin) and Y.shape[1] == 1) else None
    err = None
    try:
        if dp is not None and stratify is not None and (
                n_samples == 0 or np.unique(stratify, return_counts=True)[1].min() < 2):
            stratify = None        # this rank's rows are too few to stratify
        if dp is not None and n_samples < 2:
            idx_train, idx_val = np.arange(n_samples), np.arange(0)
        else:
            idx_train, idx_val = train_test_split(
                np.arange(n_samples), random_state=rng,
                test_size=est.validation_fraction, stratify=stratify)
        n_val = idx_val.shape[0]
    except Exception as e:
        if dp is None:
            raise
        err, n_val = e, 0
    if dp is not None:
        dp.agree(err)
        n_val = int(dp.sum([n_val])[0])
    if n_val < 2:
        raise ValueError("The validation set is too small. Increase "
                         "'validation_fraction' or the size of your dataset.")
    early = (X[idx_val], y[idx_val], None if sw is None else sw[idx_val], est._flat.copy())
    X, Y = X[idx_train], Y[idx_train]
    sw = None if sw is None else sw[idx_train]
    est.validation_scores_ = []
    est.best_validation_score_ = -np.inf
    est.best_loss_ = None
    return X, Y, sw, early


def no_improvement(est, early, dp):
    """The end-of-epoch test (after ``est.loss_`` is set): records the validation score
    (``early`` from :func:`split_validation`, keeping the best score's weights) or the
    best loss, and returns True when neither improved by ``tol`` for more than
    ``n_iter_no_change`` epochs in a row."""
    if early:
        X_val, y_val, sw_val, best_flat = early
        if dp is None:
            score = est._score_raw(X_val, y_val, sw_val)
        else:
            from ._parallel import score_from_stats, score_stats
            score = score_from_stats(est, dp.sum(score_stats(est, X_val, y_val, sw_val)))
        est.validation_scores_.append(score)
        if est.verbose:
            print(f"Validation score: {score:f}")
        if score < est.best_validation_score_ + est.tol:
            est._no_improvement_count += 1
        else:
            est._no_improvement_count = 0
        if score > est.best_validation_score_:
            est.best_validation_score_ = score
            best_flat[...] = est._flat
    else:
        if est.loss_ > est.best_loss_ - est.tol:
            est._no_improvement_count += 1
        else:
            est._no_improvement_count = 0
        est.best_loss_ = min(est.best_loss_, est.loss_)
    if est._no_improvement_count > est.n_iter_no_change:
        if est.verbose:
            what = "Validation score" if early else "Training loss"
            print(f"{what} did not improve more than tol={est.tol:f} for "
                  f"{est.n_iter_no_change} consecutive epochs. Stopping.")
        return True
    return False
