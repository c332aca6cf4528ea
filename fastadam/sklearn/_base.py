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
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import (check_array, check_consistent_length, check_is_fitted,
                                      validate_data)

from . import _lazy, _lazy_mlp, _parallel, _stopping
from ._network import _Network
from ._validation import (check_hyperparams, check_sample_weight,
                          check_state_dtype_combination,
                          check_state_dtype_continuation, lowp_state_dtype)

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
        if self.sparse_updates not in ("auto", "lazy", "dense"):
            raise ValueError("sparse_updates must be 'auto', 'lazy' or 'dense', got "
                             f"{self.sparse_updates!r}")
        if self.sparse_updates == "lazy" and getattr(self, "comm", None) is not None:
            # the lazy layer's moments live on the estimator, outside the sharded
            # optimizer: its updates would not be shared by the ranks
            raise ValueError("sparse_updates='lazy' cannot be combined with comm (a "
                             "data-parallel fit): the lazily updated first layer is not "
                             "shared across ranks; use sparse_updates='auto' or 'dense' "
                             "with comm, or comm=None for lazy updates")
        check_state_dtype_combination(self)

    def _lowp_state(self):
        """The low-precision state_dtype ("bfloat16" or "int8"), else None."""
        return lowp_state_dtype(self)

    def _resolve_sparse_updates(self, X):
        """Whether this fit steps the first weight layer lazily: "lazy" always, "dense"
        never, "auto" (the default) when X is a sparse matrix, there is no ``comm``
        (data-parallel fits are dense; "lazy" with a comm is refused by
        ``_validate_hyperparams``) and the state is not low-precision (the lazy layer's
        moments are full precision; "lazy" with a low-precision state_dtype is refused
        too)."""
        if self.sparse_updates == "auto":
            return (sp.issparse(X) and getattr(self, "comm", None) is None
                    and self._lowp_state() is None)
        return self.sparse_updates == "lazy"

    # ---- fitting -----------------------------------------------------------------------
    def _fit(self, X, y, sample_weight, incremental, classes=None):
        comm = getattr(self, "comm", None)
        dp = None
        if comm is not None:
            from ._parallel import DataParallel
            dp = DataParallel(comm)
        # Local checks; with a comm the ranks agree on the outcome before any collective.
        err = None
        try:
            self._validate_hyperparams(incremental)
            fitted = hasattr(self, "optimizer_")
            first = not fitted or (not incremental and not self.warm_start)
            if dp is None:
                X, y = validate_data(self, X, y, reset=first, accept_sparse="csr",
                                     dtype=(np.float64, np.float32), multi_output=True)
            else:
                # the same checks as above, but a rank may hold no rows
                X = validate_data(self, X, reset=first, accept_sparse="csr",
                                  dtype=(np.float64, np.float32), ensure_min_samples=0)
                y = check_array(y, accept_sparse="csr", ensure_2d=False, dtype=None,
                                ensure_min_samples=0, input_name="y", estimator=self)
                check_consistent_length(X, y)
            check_state_dtype_continuation(self, first, incremental)
            if not first:
                X = X.astype(self._flat.dtype, copy=False)
            elif getattr(self, "state_dtype", None) is not None:
                X = X.astype(np.float32, copy=False)     # state_dtype: float32 weights
            labels = None
            if dp is not None:
                labels = _parallel.local_labels(self, y)
        except Exception as e:
            if dp is None:
                raise
            err = e
        if dp is not None:
            dp.agree(err)
            dtype, labels = _parallel.agree_layout(dp, X, y, first, incremental, labels)
            if first and getattr(self, "state_dtype", None) is not None:
                dtype = np.dtype(np.float32)
            X = X.astype(dtype, copy=False)
            err = None
        try:
            dtype = X.dtype
            Y = self._encode_targets(y, first, incremental, classes, dtype,
                                     **({} if labels is None else {"labels": labels}))
            n_samples = X.shape[0]
            sw = check_sample_weight(sample_weight, n_samples, dtype,
                                     allow_zero_sum=dp is not None)
        except Exception as e:
            if dp is None:
                raise
            err = e
        if dp is not None:
            dp.agree(err)
            _parallel.agree_targets(self, dp, Y, sw)
        self._random_state = rng = check_random_state(self.random_state)
        # fresh moments (warm start, or partial_fit under another comm than the
        # optimizer's): the layer updates are chosen again, as for a new model
        renew = not first and (not incremental or
                               getattr(self, "_optimizer_comm", None) is not comm)
        if first or renew:
            self._lazy = self._resolve_sparse_updates(X)
        if first:
            self._allocate(X.shape[1], Y.shape[1], dtype, rng)
            self.n_iter_ = 0
            self.t_ = 0
            self.loss_curve_ = []
        elif renew:
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
            X, Y, sw, early = _stopping.split_validation(self, X, Y, y, sw, rng, dp)
        n = X.shape[0]
        counts = [n] if dp is None else dp.allgather(n)
        n_total = int(sum(counts))
        if self.batch_size == "auto":
            batch_size = min(200, n_total)
        else:
            if self.batch_size > n_total:
                warnings.warn(f"batch_size={self.batch_size} is larger than the number of "
                              f"training samples ({n_total}); it is clipped to {n_total}")
            batch_size = int(min(self.batch_size, n_total))
        plan = None
        if dp is not None:
            from ._parallel import pooled_counts
            steps = -(-n_total // batch_size)
            plan = (dp, steps, pooled_counts(counts, steps), n_total)
            batch_size = max(1, -(-n // steps))       # the largest local slice
        ws = self._make_workspace(batch_size, dtype, sparse=sp.issparse(X))
        if getattr(self, "_lazy", False) and not sp.issparse(X):
            X = sp.csr_matrix(X)     # lazy updates on a dense array: its nonzeros touch
        if not sp.issparse(X):
            X = np.ascontiguousarray(X)
        n_epochs = 1 if incremental else self.max_iter
        converged = False
        units = self._units
        work = batch_size * max(a * b for a, b in zip(units[:-1], units[1:]))
        with _blas_limit(work):
            converged = self._epochs(X, Y, sw, n_epochs, batch_size, ws, rng, incremental,
                                     early, plan)
        if early:
            self._flat[...] = early[3]      # the best validation score's weights
        if not np.isfinite(self._flat).all():
            raise ValueError("Solver produced non-finite parameter weights. The input data "
                             "may contain large values and need to be preprocessed "
                             "(or lower learning_rate_init).")
        if not incremental and not converged and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                          "reached and the optimization hasn't converged yet.",
                          ConvergenceWarning)
        return self

    # ---- training loop ---------------------------------------------------------------------
    def _epochs(self, X, Y, sw, n_epochs, batch_size, ws, rng, incremental, early,
                plan=None):
        """The training loop; returns True when the stopping rule fired. ``plan``: the
        data-parallel batching (see ``_parallel``), None in one process.

        A lazy linear model runs each epoch as one compiled loop on a fit-time table that
        keeps each feature's weights next to their moments (``_lazy_pack``: one row per
        feature present in X), built here and copied back into ``coef_`` and
        ``_lazy_mv`` when the loop ends, however it ends. Finding the features present
        takes one int32 per feature (O(n_features) per call), so the table is used only
        when the call's nonzeros (times its epochs) are at least n_features / 4;
        smaller calls (``partial_fit`` on a few rows of a wide model, say) take the
        minibatch loop, which is O(nnz). Both give the same results (tested)."""
        lazy = getattr(self, "_lazy", False)
        compiled = (lazy and plan is None and self._compiled_lazy_epoch()
                    and 4 * X.nnz * n_epochs >= X.shape[1])
        if not compiled:
            return self._run_epochs(X, Y, sw, n_epochs, batch_size, ws, rng, incremental,
                                    early, plan, False)
        self._lazy_pack(X)
        try:
            return self._run_epochs(X, Y, sw, n_epochs, batch_size, ws, rng, incremental,
                                    early, plan, True)
        finally:
            self._lazy_unpack(moments=True)

    def _run_epochs(self, X, Y, sw, n_epochs, batch_size, ws, rng, incremental, early, plan,
                    compiled):
        n = X.shape[0]
        idx = np.arange(n)
        step = self._train_step()
        lazy = getattr(self, "_lazy", False)
        take = _lazy.take_rows if lazy else _take_rows
        if lazy and self._batched_lazy():
            take = _lazy_mlp.take_batch          # rows read in place by batch_forward
        if compiled:
            # exact sum of squares of the lazy layer at the start of the call; the
            # compiled loop keeps it up to date from each step's changes
            w = self._weights[0].reshape(-1)
            self._lazy_sq = float(np.dot(w, w)) if self.alpha else 0.0
        clock = time.perf_counter
        t_opt = 0.0
        converged = False
        if plan is None:
            starts = list(range(0, n, batch_size))
            bounds = starts + [n]
        else:
            from ._parallel import slice_bounds
            dp, steps, pooled, n_total = plan
            bounds = slice_bounds(n, steps).tolist()
            starts = range(steps)
            adds_l2 = dp.rank == 0
        for _ in range(n_epochs):
            if self.shuffle:
                rng.shuffle(idx)
            if lazy and not compiled:
                # exact sum of squares of the lazy layer once an epoch (O(n_features)
                # per epoch, not per minibatch); _lazy_step keeps it up to date
                w = self._weights[0].reshape(-1)
                self._lazy_sq = float(np.dot(w, w)) if self.alpha else 0.0
            acc = 0.0
            if compiled:
                # lazy linear model: the whole epoch in one compiled loop (the step is
                # fused with the gradient, so all of it counts as optimizer time)
                t0 = clock()
                acc = self._lazy_epoch(X, Y, sw, idx, batch_size, ws)
                t_opt += clock() - t0
                if early:
                    self._lazy_unpack(moments=False)     # coef_ for the validation score
                bounds_epoch = ()
            else:
                bounds_epoch = range(len(bounds) - 1)
            for k in bounds_epoch:
                start, stop = bounds[k], bounds[k + 1]
                if self.shuffle:
                    bi = idx[start:stop]
                    Xb = take(X, bi, ws["X"])
                    Yb = np.take(Y, bi, axis=0, out=ws["Y"][:stop - start])
                    swb = None if sw is None else np.take(sw, bi, out=ws["w"][:stop - start])
                else:
                    Xb = take(X, idx[start:stop], None) if lazy else X[start:stop]
                    Yb = Y[start:stop]
                    swb = None if sw is None else sw[start:stop]
                if plan is None:
                    loss = self._loss_grad(Xb, Yb, swb, ws)
                    if loss is None:
                        continue
                    weight = stop - start
                else:
                    # the pooled minibatch's total weight: known from the row counts
                    # without sample weights, else summed over the ranks
                    total = float(pooled[k]) if sw is None else \
                        float(dp.sum([0.0 if swb is None else swb.sum()])[0])
                    if not total > 0:
                        continue                  # every rank skips this step
                    loss = self._loss_grad(Xb, Yb, swb, ws, total=total, l2=adds_l2)
                    weight = float(pooled[k])
                t0 = clock()
                step()
                t_opt += clock() - t0
                acc += loss * weight
            self.n_iter_ += 1
            if plan is None:
                self.t_ += n
                self.loss_ = acc / n
            else:
                self.t_ += n_total
                self.loss_ = float(dp.sum([acc])[0]) / n_total
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            if incremental:
                break
            if not np.isfinite(self.loss_):
                break
            if _stopping.no_improvement(self, early, None if plan is None else dp):
                converged = True
                break
        self.optimizer_time_ = t_opt
        return converged

    def fit(self, X, y, sample_weight=None):
        """Fit by minibatch Adam for up to ``max_iter`` epochs.

        X: {array, sparse matrix} (n_samples, n_features); y: (n_samples,) or
        (n_samples, n_outputs); sample_weight: (n_samples,) or None. Returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def _check_X(self, X, keep_dtype=False):
        """X validated for prediction and cast to the weights' dtype; with
        ``keep_dtype`` also its own dtype (float32 or float64) before the cast."""
        check_is_fitted(self, "optimizer_")
        X = validate_data(self, X, reset=False, accept_sparse="csr",
                          dtype=(np.float64, np.float32))
        Xc = X.astype(self._flat.dtype, copy=False)
        return (Xc, X.dtype) if keep_dtype else Xc

    def __sklearn_clone__(self):
        # A communicator is shared by the clone, never copied (clone would deep-copy
        # it, which mpi4py refuses for all but the predefined communicators).
        comm = getattr(self, "comm", None)
        if comm is None:
            return super().__sklearn_clone__()
        self.comm = None
        try:
            new = super().__sklearn_clone__()
        finally:
            self.comm = comm
        new.comm = comm
        return new

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
