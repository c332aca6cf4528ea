"""The minibatch-Adam training loop every estimator shares: input validation, batching,
shuffling, the stopping rules of scikit-learn's MLP (``tol``, ``n_iter_no_change``,
``early_stopping``), ``fit`` / ``partial_fit`` plumbing and BLAS thread limits.
Subclasses add the task (target encoding, prediction) and the layout (linear or MLP)."""
from __future__ import annotations

import contextlib
import time
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from ._network import _Network
from ._validation import check_hyperparams, check_sample_weight

#: Minibatch matrix products smaller than this (multiply-adds of the largest layer) run
#: with one BLAS thread during fit: measured here (2 cores), a second OpenBLAS thread makes
#: a 200 x 64 x 100 product 2x slower. Larger products keep the user's BLAS setting.
BLAS_SINGLE_THREAD_BELOW = 1 << 22
_blas_controller = None


def _blas_limit(work):
    """Context limiting BLAS to one thread when ``work`` multiply-adds are too few to
    share; a no-op context otherwise."""
    global _blas_controller
    if work >= BLAS_SINGLE_THREAD_BELOW:
        return contextlib.nullcontext()
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


def _take_rows(X, idx, buf):
    if sp.issparse(X):
        return X[idx]
    return np.take(X, idx, axis=0, out=buf[:idx.shape[0]])


class _BaseAdam(_Network, BaseEstimator):
    """Shared minibatch-Adam training loop. Subclasses define the network layout and the
    target encoding; the parameters live in one flat buffer (``_flat``), weights first."""

    def _validate_hyperparams(self, incremental):
        check_hyperparams(self, incremental)

    # ---- fitting -----------------------------------------------------------------------
    def _fit(self, X, y, sample_weight, incremental, classes=None):
        self._validate_hyperparams(incremental)
        fitted = hasattr(self, "optimizer_")
        first = not fitted or (not incremental and not self.warm_start)
        X, y = validate_data(self, X, y, reset=first, accept_sparse="csr",
                             dtype=(np.float64, np.float32), multi_output=True)
        if not first:
            X = X.astype(self._flat.dtype, copy=False)
        elif getattr(self, "state_dtype", None) is not None:
            X = X.astype(np.float32, copy=False)    # state_dtype: float32 weights
        dtype = X.dtype
        Y = self._encode_targets(y, first, incremental, classes, dtype)
        n_samples = X.shape[0]
        sw = check_sample_weight(sample_weight, n_samples, dtype)
        self._random_state = rng = check_random_state(self.random_state)
        if first:
            self._allocate(X.shape[1], Y.shape[1], dtype, rng)
            self.n_iter_ = 0
            self.t_ = 0
            self.loss_curve_ = []
        elif not incremental:
            self._new_optimizer()            # warm start: keep weights, fresh moments
        self._sync_optimizer_hyperparams()
        if not incremental:
            self.n_iter_ = 0
            self._no_improvement_count = 0
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

        early = self.early_stopping and not incremental
        if early:
            # scikit-learn's MLP stratifies single-output classification only; same
            # rule so that the same random_state gives the same split.
            stratify = y if (isinstance(self, ClassifierMixin) and Y.shape[1] == 1) else None
            idx_train, idx_val = train_test_split(
                np.arange(n_samples), random_state=rng, test_size=self.validation_fraction,
                stratify=stratify)
            if idx_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            X_val, y_val = X[idx_val], y[idx_val]
            sw_val = None if sw is None else sw[idx_val]
            X, Y = X[idx_train], Y[idx_train]
            sw = None if sw is None else sw[idx_train]
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
            best_flat = self._flat.copy()
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn(f"batch_size={self.batch_size} is larger than the number of "
                              f"training samples ({n}); it is clipped to {n}")
            batch_size = int(min(self.batch_size, n))
        ws = self._make_workspace(batch_size, dtype)
        if not sp.issparse(X):
            X = np.ascontiguousarray(X)
        n_epochs = 1 if incremental else self.max_iter
        converged = False
        units = self._units
        work = batch_size * max(a * b for a, b in zip(units[:-1], units[1:]))
        with _blas_limit(work):
            converged = self._epochs(X, Y, sw, n_epochs, batch_size, ws, rng, incremental,
                                     early and (X_val, y_val, sw_val, best_flat))
        if early:
            self._flat[...] = best_flat
        if not np.isfinite(self._flat).all():
            raise ValueError("Solver produced non-finite parameter weights. The input data "
                             "may contain large values and need to be preprocessed "
                             "(or lower learning_rate_init).")
        if not incremental and not converged and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                          "reached and the optimization hasn't converged yet.",
                          ConvergenceWarning)
        return self

    def _epochs(self, X, Y, sw, n_epochs, batch_size, ws, rng, incremental, early):
        """The training loop; returns True when the stopping rule fired."""
        if early:
            X_val, y_val, sw_val, best_flat = early
        n = X.shape[0]
        idx = np.arange(n)
        step = self.optimizer_.step
        clock = time.perf_counter
        t_opt = 0.0
        converged = False
        for _ in range(n_epochs):
            if self.shuffle:
                rng.shuffle(idx)
            acc = 0.0
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                if self.shuffle:
                    bi = idx[start:stop]
                    Xb = _take_rows(X, bi, ws["X"])
                    Yb = np.take(Y, bi, axis=0, out=ws["Y"][:stop - start])
                    swb = None if sw is None else np.take(sw, bi, out=ws["w"][:stop - start])
                else:
                    Xb, Yb = X[start:stop], Y[start:stop]
                    swb = None if sw is None else sw[start:stop]
                loss = self._loss_grad(Xb, Yb, swb, ws)
                if loss is None:
                    continue
                t0 = clock()
                step()
                t_opt += clock() - t0
                acc += loss * (stop - start)
            self.n_iter_ += 1
            self.t_ += n
            self.loss_ = acc / n
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            if incremental:
                break
            if not np.isfinite(self.loss_):
                break
            if early:
                score = self._score_raw(X_val, y_val, sw_val)
                self.validation_scores_.append(score)
                if self.verbose:
                    print(f"Validation score: {score:f}")
                if score < self.best_validation_score_ + self.tol:
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    best_flat[...] = self._flat
            else:
                if self.loss_ > self.best_loss_ - self.tol:
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
                self.best_loss_ = min(self.best_loss_, self.loss_)
            if self._no_improvement_count > self.n_iter_no_change:
                converged = True
                if self.verbose:
                    what = "Validation score" if early else "Training loss"
                    print(f"{what} did not improve more than tol={self.tol:f} for "
                          f"{self.n_iter_no_change} consecutive epochs. Stopping.")
                break
        self.optimizer_time_ = t_opt
        return converged

    def fit(self, X, y, sample_weight=None):
        """Fit by minibatch Adam for up to ``max_iter`` epochs.

        X: {array, sparse matrix} (n_samples, n_features); y: (n_samples,) or
        (n_samples, n_outputs); sample_weight: (n_samples,) or None. Returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def _check_X(self, X):
        check_is_fitted(self, "optimizer_")
        X = validate_data(self, X, reset=False, accept_sparse="csr",
                          dtype=(np.float64, np.float32))
        return X.astype(self._flat.dtype, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
