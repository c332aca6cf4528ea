"""scikit-learn estimators trained by minibatch Adam through :class:`fastadam.Adam`.

* :class:`AdamClassifier` - multinomial (or binary) logistic regression, ``log_loss``.
* :class:`AdamRegressor` - linear regression, ``squared_error`` or ``huber`` loss.
* :class:`AdamMLPClassifier`, :class:`AdamMLPRegressor` - fully connected networks with
  the interface of scikit-learn's ``MLPClassifier``/``MLPRegressor(solver="adam")``.

Importing this module imports scikit-learn (install ``fastadam[sklearn]``); ``import
fastadam`` alone does not.

How the estimators use fastadam (the recipe of ``docs/embedding.md``): every parameter
array (weights first, then intercepts) is a view of one aligned flat buffer made by
:func:`fastadam.flatten`; each minibatch writes its gradient into the optimizer's
preallocated ``opt.grads`` views and calls ``opt.step()``, one kernel launch for the whole
model. ``partial_fit`` keeps the optimizer, so its moments and step count carry on.

Conventions shared by all four estimators (chosen to match ``MLPClassifier``):

* **Adam formula.** ``epsilon`` is the "epsilon hat" of Kingma & Ba, end of section 2
  (fastadam ``eps_mode="hat"``, as in scikit-learn, TensorFlow and Keras)::

      p -= learning_rate_init * sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (sqrt(v) + epsilon)

* **Objective of one minibatch** B with sample weights s (all 1 without
  ``sample_weight``) and weights W (not intercepts)::

      ( sum_{i in B} s_i * loss_i  +  0.5 * alpha * ||W||^2 ) / sum_{i in B} s_i

  This is exactly scikit-learn's MLP convention, so ``alpha`` has the same effect as in
  ``MLPClassifier`` (note that the L2 term is divided by the minibatch's weight, so its
  strength depends on ``batch_size``; it is *not* SGDClassifier's ``alpha``).
  ``loss_curve_`` holds the epoch average of this objective.
* **Losses.** ``log_loss``: binary cross-entropy per output (binary and multilabel) or
  softmax cross-entropy (multiclass), computed from logits (no clipping).
  ``squared_error``: ``0.5 * sum_outputs (y - p)**2`` per sample (equals scikit-learn's
  reported loss for one output). ``huber``: per output ``0.5 r**2`` if ``|r| <=
  huber_delta`` else ``huber_delta * (|r| - 0.5 * huber_delta)``.
* **Stopping.** ``tol``/``n_iter_no_change``/``early_stopping``/``validation_fraction``
  mean what they mean in ``MLPClassifier``; ``max_iter`` counts epochs.
* **Randomness.** ``random_state`` seeds the initial weights (Glorot-uniform, as
  scikit-learn; linear models start at zero), the validation split and the per-epoch
  shuffles, drawing from the random stream in the same order as scikit-learn's MLP.

Fitted attributes besides scikit-learn's: ``optimizer_`` (the :class:`fastadam.Adam`),
``optimizer_time_`` (seconds spent in ``optimizer_.step()`` during the last ``fit`` or
``partial_fit`` call; the rest of the fit time is gradients, batching and bookkeeping).
"""
from __future__ import annotations

import contextlib
import numbers
import time
import warnings

import numba
import numpy as np
import scipy.sparse as sp
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import config
from .flat import flatten
from .optimizer import Adam

__all__ = ["AdamClassifier", "AdamRegressor", "AdamMLPClassifier", "AdamMLPRegressor"]

_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")


# ----------------------------------------------------------------------------- helpers
def _check_sample_weight(sample_weight, n_samples, dtype):
    """1-D float array of n_samples non-negative finite weights with a positive sum, or
    None."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Number):
        sample_weight = np.full(n_samples, sample_weight, dtype=dtype)
    sw = check_array(sample_weight, ensure_2d=False, dtype=dtype, order="C",
                     input_name="sample_weight")
    if sw.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D, got shape {sw.shape}")
    if sw.shape[0] != n_samples:
        raise ValueError(f"sample_weight.shape == {sw.shape}, expected ({n_samples},) "
                         "(one weight per sample)")
    if np.any(sw < 0):
        raise ValueError("sample_weight must be non-negative")
    if not sw.sum() > 0:
        raise ValueError("sample_weight must not be all zero: the weights must have a "
                         "positive sum")
    return sw


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_real(name, value, lo, hi, lo_closed=True, hi_closed=True):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    ok_lo = value >= lo if lo_closed else value > lo
    ok_hi = value <= hi if hi_closed else value < hi
    if not (ok_lo and ok_hi):
        interval = (("[" if lo_closed else "(") + f"{lo}, {hi}" + ("]" if hi_closed else ")"))
        raise ValueError(f"{name} must be in {interval}, got {value}")


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


# Elementwise passes of the forward and backward computations, fused in numba kernels
# (one pass each over a batch's activations; numpy would need several with temporaries).
_ACT_CODE = {"identity": 0, "relu": 1, "tanh": 2, "logistic": 3}
_OUT_CODE = {"identity": 0, "huber": 1, "logistic": 2, "softmax": 3}


@numba.njit(**config.JIT_OPTIONS)
def _bias_activate(Z, b, kind):
    """Z = f(Z + b) in place; Z (n, k) C-contiguous, b (k,)."""
    n, k = Z.shape
    for i in range(n):
        for j in range(k):
            z = Z[i, j] + b[j]
            if kind == 1:
                if z < 0:
                    z = 0.0
            elif kind == 2:
                z = np.tanh(z)
            elif kind == 3:
                z = 1.0 / (1.0 + np.exp(-z))
            Z[i, j] = z


@numba.njit(**config.JIT_OPTIONS)
def _activation_backward(D, A, kind):
    """D *= f'(z) in place, with f'(z) written through the activation's output A = f(z)."""
    n, k = D.shape
    for i in range(n):
        for j in range(k):
            a = A[i, j]
            if kind == 1:
                if not a > 0:
                    D[i, j] = 0.0
            elif kind == 2:
                D[i, j] *= 1.0 - a * a
            elif kind == 3:
                D[i, j] *= a * (1.0 - a)


@numba.njit(**config.JIT_OPTIONS)
def _output_loss_delta(Z, Y, sw, has_sw, scale, kind, huber_delta):
    """From the output pre-activations Z (n, k; overwritten): returns the batch's
    sample-weighted summed loss and leaves in Z the gradient of (that sum * scale) with
    respect to Z. kind: 0 squared error, 1 huber, 2 logistic (per-output binary
    cross-entropy), 3 softmax cross-entropy."""
    n, k = Z.shape
    total = 0.0
    for i in range(n):
        w = sw[i] if has_sw else 1.0
        ws = w * scale
        li = 0.0
        if kind == 3:
            m = Z[i, 0]
            for j in range(1, k):
                if Z[i, j] > m:
                    m = Z[i, j]
            s = 0.0
            for j in range(k):
                s += np.exp(Z[i, j] - m)
            log_s = np.log(s)
            for j in range(k):
                zj = Z[i, j] - m
                y = Y[i, j]
                if y != 0:
                    li -= y * (zj - log_s)
                Z[i, j] = (np.exp(zj - log_s) - y) * ws
        else:
            for j in range(k):
                z = Z[i, j]
                y = Y[i, j]
                if kind == 2:
                    # log(1 + e^z) - y z, and its derivative expit(z) - y, without overflow
                    li += max(z, 0.0) + np.log1p(np.exp(-abs(z))) - y * z
                    Z[i, j] = (1.0 / (1.0 + np.exp(-z)) - y) * ws
                else:
                    r = z - y
                    if kind == 1 and abs(r) > huber_delta:
                        li += huber_delta * (abs(r) - 0.5 * huber_delta)
                        r = huber_delta if r > 0 else -huber_delta
                    else:
                        li += 0.5 * r * r
                    Z[i, j] = r * ws
        total += w * li
    return total


@numba.njit(**config.JIT_OPTIONS)
def _add_scaled(g, w, c):
    """g += c * w over 1-D views."""
    for i in range(g.shape[0]):
        g[i] += c * w[i]


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


# ----------------------------------------------------------------------------- base
class _BaseAdam(BaseEstimator):
    """Shared minibatch-Adam training loop. Subclasses define the network layout and the
    target encoding; the parameters live in one flat buffer (``_flat``), weights first."""

    _linear = False          # linear models store coef_ as (n_outputs, n_features)

    # ---- hyperparameters -------------------------------------------------------------
    def _validate_hyperparams(self, incremental):
        _check_real("alpha", self.alpha, 0, np.inf)
        _check_real("learning_rate_init", self.learning_rate_init, 0, np.inf, lo_closed=False)
        _check_real("beta_1", self.beta_1, 0, 1, hi_closed=False)
        _check_real("beta_2", self.beta_2, 0, 1, hi_closed=False)
        _check_real("epsilon", self.epsilon, 0, np.inf, lo_closed=False)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("max_iter", self.max_iter)
        _check_real("tol", self.tol, 0, np.inf)
        _check_positive_int("n_iter_no_change", self.n_iter_no_change)
        _check_real("validation_fraction", self.validation_fraction, 0, 1,
                    lo_closed=False, hi_closed=False)
        for name in ("early_stopping", "shuffle", "warm_start"):
            _check_bool(name, getattr(self, name))
        if not isinstance(self.verbose, (bool, np.bool_, numbers.Integral)):
            raise TypeError(f"verbose must be a bool or an int, got {type(self.verbose).__name__}")
        if self._linear:
            _check_bool("fit_intercept", self.fit_intercept)
        else:
            sizes = self.hidden_layer_sizes
            sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
            for i, s in enumerate(sizes):
                if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral) or s <= 0:
                    raise ValueError(f"hidden_layer_sizes must contain positive ints, got "
                                     f"{self.hidden_layer_sizes!r} (entry {i}: {s!r})")
            if self.activation not in _ACTIVATIONS:
                raise ValueError(f"activation must be one of {_ACTIVATIONS}, got "
                                 f"{self.activation!r}")
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")

    def _hidden_sizes(self):
        if self._linear:
            return []
        s = self.hidden_layer_sizes
        return [int(x) for x in s] if hasattr(s, "__iter__") else [int(s)]

    # ---- parameters --------------------------------------------------------------------
    def _allocate(self, n_features, n_outputs, dtype, rng):
        """Create the flat parameter buffer, publish its views and build the optimizer."""
        units = [n_features] + self._hidden_sizes() + [n_outputs]
        self._units = units
        arrays_w, arrays_b = [], []
        for fan_in, fan_out in zip(units[:-1], units[1:]):
            if self._linear:
                arrays_w.append(np.zeros((fan_out, fan_in)))
                arrays_b.append(np.zeros(fan_out))
            else:
                # Glorot-uniform like scikit-learn's MLP, same draws in the same order.
                factor = 2.0 if self.activation == "logistic" else 6.0
                bound = np.sqrt(factor / (fan_in + fan_out))
                arrays_w.append(rng.uniform(-bound, bound, (fan_in, fan_out)))
                arrays_b.append(rng.uniform(-bound, bound, fan_out))
        self._set_param_arrays(arrays_w + arrays_b, dtype)
        self._new_optimizer()

    def _set_param_arrays(self, arrays, dtype):
        self._flat, views = flatten(arrays, dtype=dtype)
        n = len(arrays) // 2
        self._weights, self._intercepts = views[:n], views[n:]
        self._publish()

    def _new_optimizer(self):
        self.optimizer_ = Adam(self._weights + self._intercepts, lr=self.learning_rate_init,
                               betas=(self.beta_1, self.beta_2), eps=self.epsilon,
                               eps_mode="hat")

    def _sync_optimizer_hyperparams(self):
        g = self.optimizer_.param_groups[0]
        g["lr"] = float(self.learning_rate_init)
        g["betas"] = (float(self.beta_1), float(self.beta_2))
        g["eps"] = float(self.epsilon)

    def __getstate__(self):
        # The optimizer holds raw data addresses of the parameters; pickle its plain
        # state_dict and rebuild it (over fresh views of one buffer) on unpickling.
        state = super().__getstate__()
        if "optimizer_" in state:
            state = dict(state)
            state["optimizer_"] = self.optimizer_.state_dict()
            state["_param_arrays"] = [np.array(a) for a in self._weights + self._intercepts]
            for k in ("_flat", "_weights", "_intercepts", "_workspace",
                      "coef_", "intercept_", "coefs_", "intercepts_"):
                state.pop(k, None)
        return state

    def __setstate__(self, state):
        state = dict(state)
        arrays = state.pop("_param_arrays", None)
        opt_state = state.get("optimizer_")
        super().__setstate__(state)
        if arrays is not None:
            self._set_param_arrays(arrays, arrays[0].dtype)
            self._new_optimizer()
            self.optimizer_.load_state_dict(opt_state)

    # ---- forward / backward ------------------------------------------------------------
    @property
    def _act_code(self):
        return _ACT_CODE[getattr(self, "activation", "identity")]

    def _dense_weights(self):
        """Weights as (fan_in, fan_out) arrays (a transposed view for linear models)."""
        return [W.T for W in self._weights] if self._linear else self._weights

    def _forward(self, X, buffers=None):
        """Activations of every layer for X; the last entry holds the output layer's
        pre-activations. ``buffers``: optional preallocated (rows >= n) arrays."""
        n = X.shape[0]
        acts = [X]
        A = X
        Ws = self._dense_weights()
        last = len(Ws) - 1
        for l, (W, b) in enumerate(zip(Ws, self._intercepts)):
            if buffers is not None:
                Z = buffers[l][:n]
                if sp.issparse(A):
                    Z[...] = A @ W
                else:
                    np.dot(A, W, out=Z)
            else:
                Z = np.ascontiguousarray(A @ W)
            _bias_activate(Z, b, self._act_code if l < last else 0)
            acts.append(Z)
            A = Z
        return acts

    def _loss_grad(self, Xb, Yb, swb, ws):
        """Batch objective; writes its gradient into ``optimizer_.grads``. None when the
        batch has zero total weight (nothing to learn from it)."""
        n = Xb.shape[0]
        sw_sum = float(n) if swb is None else float(swb.sum())
        if not sw_sum > 0:
            return None
        acts = self._forward(Xb, ws["Z"])
        D = acts[-1]
        loss = _output_loss_delta(D, Yb, ws["w"] if swb is None else swb, swb is not None,
                                  1.0 / sw_sum, _OUT_CODE[self._out_kind],
                                  float(getattr(self, "huber_delta", 1.0)))
        grads = self.optimizer_.grads
        L = len(self._weights)
        Ws = self._dense_weights()
        reg = self.alpha / sw_sum
        sq = 0.0
        for l in range(L - 1, -1, -1):
            A = acts[l]
            gW = grads[l]
            if sp.issparse(A):
                g = A.T @ D
                gW[...] = g.T if self._linear else g
            elif self._linear:
                np.dot(D.T, A, out=gW)
            else:
                np.dot(A.T, D, out=gW)
            W = self._weights[l]
            if self.alpha:
                w = W.reshape(-1)
                sq += float(np.dot(w, w))
                _add_scaled(gW.reshape(-1), w, reg)
            if getattr(self, "fit_intercept", True):
                np.sum(D, axis=0, out=grads[L + l])
            else:
                grads[L + l].fill(0)
            if l > 0:
                Dp = ws["D"][l - 1][:n]
                np.dot(D, Ws[l].T, out=Dp)
                _activation_backward(Dp, acts[l], self._act_code)
                D = Dp
        return (loss + 0.5 * self.alpha * sq) / sw_sum

    def _make_workspace(self, batch_size, dtype):
        units = self._units
        return {"Z": [np.empty((batch_size, u), dtype) for u in units[1:]],
                "D": [np.empty((batch_size, u), dtype) for u in units[1:-1]],
                "X": np.empty((batch_size, units[0]), dtype),
                "Y": np.empty((batch_size, units[-1]), dtype),
                "w": np.empty(batch_size, dtype)}

    def _raw_output(self, X):
        return self._forward(X)[-1]

    # ---- fitting -----------------------------------------------------------------------
    def _fit(self, X, y, sample_weight, incremental, classes=None):
        self._validate_hyperparams(incremental)
        fitted = hasattr(self, "optimizer_")
        first = not fitted or (not incremental and not self.warm_start)
        X, y = validate_data(self, X, y, reset=first, accept_sparse="csr",
                             dtype=(np.float64, np.float32), multi_output=True)
        if not first:
            X = X.astype(self._flat.dtype, copy=False)
        dtype = X.dtype
        Y = self._encode_targets(y, first, incremental, classes, dtype)
        n_samples = X.shape[0]
        sw = _check_sample_weight(sample_weight, n_samples, dtype)
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


# ----------------------------------------------------------------------------- classifiers
class _ClassifierMixinAdam:
    """Target encoding, prediction and partial_fit for the classifiers."""

    _multilabel = False

    def _encode_targets(self, y, first, incremental, classes, dtype):
        if y.ndim == 2 and y.shape[1] == 1:
            warnings.warn("A column-vector y was passed when a 1d array was expected. "
                          "Please change the shape of y to (n_samples, ), for example "
                          "using ravel().", DataConversionWarning)
            y = y.ravel()
        if y.ndim == 2 and not self._multilabel:
            raise ValueError(f"{type(self).__name__} expects y of shape (n_samples,), got "
                             f"{y.shape}; for several binary targets use AdamMLPClassifier")
        check_classification_targets(y)
        if incremental and not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            lb = LabelBinarizer()
            lb.fit(y if type_of_target(y).startswith("multilabel") else np.asarray(classes))
            self._label_binarizer = lb
            self.classes_ = lb.classes_
        elif first:
            lb = LabelBinarizer()
            lb.fit(y)
            self._label_binarizer = lb
            self.classes_ = lb.classes_
        else:
            if classes is not None and not np.array_equal(np.unique(classes), self.classes_):
                raise ValueError(f"classes={classes!r} is not the same as on the first call "
                                 f"to partial_fit: {self.classes_!r}")
            seen = np.unique(y) if y.ndim == 1 else self.classes_
            if len(np.setdiff1d(seen, self.classes_)):
                raise ValueError(f"y has classes not in classes_ {self.classes_!r}: "
                                 f"{np.setdiff1d(seen, self.classes_)!r}")
        if self._linear and len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes "
                             f"in the data, but the data contains only one class: "
                             f"{self.classes_[0]!r}")
        self._out_kind = "softmax" if self._label_binarizer.y_type_ == "multiclass" \
            else "logistic"
        self.out_activation_ = self._out_kind
        return np.ascontiguousarray(self._label_binarizer.transform(y), dtype=dtype)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch of minibatch Adam over (X, y), continuing the optimizer state (moments
        and step count) of earlier fit/partial_fit calls. ``classes`` is required on the
        first call. Returns self."""
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes) in the order of ``classes_``."""
        Z = self._raw_output(self._check_X(X))
        if self._out_kind == "softmax":
            Z -= Z.max(axis=1, keepdims=True)
            np.exp(Z, out=Z)
            Z /= Z.sum(axis=1, keepdims=True)
            return Z
        expit(Z, out=Z)
        if Z.shape[1] == 1 and not self._label_binarizer.y_type_.startswith("multilabel"):
            return np.hstack([1 - Z, Z])
        return Z

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """Predicted labels, (n_samples,) (or an indicator matrix for multilabel y)."""
        Z = self._raw_output(self._check_X(X))
        lb = self._label_binarizer
        if self._out_kind == "softmax":
            return self.classes_[np.argmax(Z, axis=1)]
        if lb.y_type_.startswith("multilabel"):
            return lb.inverse_transform((Z > 0).astype(int))
        return self.classes_[(Z[:, 0] > 0).astype(int)] if len(self.classes_) > 1 \
            else np.repeat(self.classes_, Z.shape[0])

    def _score_raw(self, X, y, sample_weight):
        return accuracy_score(y, self.predict(X), sample_weight=sample_weight)


class AdamClassifier(ClassifierMixin, _ClassifierMixinAdam, _BaseAdam):
    """Logistic regression (binary, or multinomial for > 2 classes) fitted by minibatch
    Adam with fastadam.

    Parameters are named as in ``MLPClassifier``; see the module docstring for the
    objective (``alpha`` is L2 on ``coef_`` with scikit-learn's MLP scaling) and for the
    Adam formula (``epsilon`` is epsilon-hat, fastadam ``eps_mode="hat"``, as scikit-learn).

    Attributes: ``coef_`` (1 or n_classes, n_features) and ``intercept_`` (1 or
    n_classes,) - views of one flat float buffer that ``optimizer_`` updates in place;
    ``classes_``, ``n_iter_`` (epochs), ``t_`` (samples seen), ``loss_``,
    ``loss_curve_``, ``best_loss_``, ``validation_scores_``, ``best_validation_score_``,
    ``optimizer_``, ``optimizer_time_``, ``n_features_in_``.
    """

    _linear = True

    def __init__(self, loss="log_loss", *, alpha=1e-4, fit_intercept=True,
                 learning_rate_init=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 batch_size="auto", max_iter=200, tol=1e-4, n_iter_no_change=10,
                 early_stopping=False, validation_fraction=0.1, shuffle=True,
                 random_state=None, warm_start=False, verbose=False):
        self.loss = loss
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.learning_rate_init = learning_rate_init
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.shuffle = shuffle
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose

    def _validate_hyperparams(self, incremental):
        if self.loss != "log_loss":
            raise ValueError(f"loss must be 'log_loss', got {self.loss!r}")
        super()._validate_hyperparams(incremental)

    def _publish(self):
        self.coef_ = self._weights[0]
        self.intercept_ = self._intercepts[0]

    def decision_function(self, X):
        """Logits: (n_samples,) for two classes (positive class ``classes_[1]``), else
        (n_samples, n_classes)."""
        Z = self._raw_output(self._check_X(X))
        return Z[:, 0].copy() if Z.shape[1] == 1 else Z


class AdamMLPClassifier(ClassifierMixin, _ClassifierMixinAdam, _BaseAdam):
    """Multi-layer perceptron classifier trained by fastadam's Adam: a drop-in for
    ``sklearn.neural_network.MLPClassifier(solver="adam")`` (the Adam-only parameters;
    ``solver``, ``learning_rate``, ``momentum``, ``power_t``, ``nesterovs_momentum`` and
    ``max_fun`` do not exist here).

    Same objective, initialisation, batching, shuffling and stopping rules as
    scikit-learn (see the module docstring); ``epsilon`` is epsilon-hat (fastadam
    ``eps_mode="hat"``). Binary, multiclass (softmax) and multilabel targets.

    Attributes: ``coefs_[i]`` (fan_in, fan_out) and ``intercepts_[i]`` - views of one
    flat buffer; ``classes_``, ``n_layers_``, ``n_outputs_``, ``out_activation_``,
    ``n_iter_``, ``t_``, ``loss_``, ``loss_curve_``, ``best_loss_``,
    ``validation_scores_``, ``best_validation_score_``, ``optimizer_``,
    ``optimizer_time_``, ``n_features_in_``.
    """

    _multilabel = True

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, alpha=1e-4,
                 batch_size="auto", learning_rate_init=1e-3, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change

    def _publish(self):
        self.coefs_ = list(self._weights)
        self.intercepts_ = list(self._intercepts)
        self.n_layers_ = len(self._units)
        self.n_outputs_ = self._units[-1]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


# ----------------------------------------------------------------------------- regressors
class _RegressorMixinAdam:

    def _validate_hyperparams(self, incremental):
        if self.loss not in ("squared_error", "huber"):
            raise ValueError(f"loss must be 'squared_error' or 'huber', got {self.loss!r}")
        _check_real("huber_delta", self.huber_delta, 0, np.inf, lo_closed=False)
        super()._validate_hyperparams(incremental)

    def _encode_targets(self, y, first, incremental, classes, dtype):
        if y.ndim == 2 and y.shape[1] == 1:
            warnings.warn("A column-vector y was passed when a 1d array was expected. "
                          "Please change the shape of y to (n_samples, ), for example "
                          "using ravel().", DataConversionWarning)
            y = y.ravel()
        if first:
            self._y_1d = y.ndim == 1
        else:
            n_out = self._units[-1]
            if (y.ndim == 1) != self._y_1d or (y.ndim == 2 and y.shape[1] != n_out):
                raise ValueError(f"y has shape {y.shape}, but the model was fitted on "
                                 f"{'1-D y' if self._y_1d else f'{n_out} targets'}")
        self._out_kind = "huber" if self.loss == "huber" else "identity"
        self.out_activation_ = "identity"
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        return np.ascontiguousarray(Y, dtype=dtype)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch of minibatch Adam over (X, y), continuing the optimizer state (moments
        and step count) of earlier fit/partial_fit calls. Returns self."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Predictions, (n_samples,) or (n_samples, n_outputs) like the y of fit."""
        Z = self._raw_output(self._check_X(X))
        return Z[:, 0].copy() if self._y_1d else Z

    def _score_raw(self, X, y, sample_weight):
        return r2_score(y, self.predict(X), sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class AdamRegressor(RegressorMixin, _RegressorMixinAdam, _BaseAdam):
    """Linear regression fitted by minibatch Adam with fastadam; ``loss="squared_error"``
    or ``"huber"`` (threshold ``huber_delta`` on the residual; scikit-learn's
    ``epsilon`` is taken by Adam's epsilon-hat, as in ``MLPRegressor``).

    See the module docstring for the objective (``alpha`` is L2 on ``coef_`` with
    scikit-learn's MLP scaling) and the Adam formula (fastadam ``eps_mode="hat"``).

    Attributes: ``coef_`` (n_features,) for 1-D y, else (n_outputs, n_features), and
    ``intercept_`` (1,) or (n_outputs,) - views of one flat buffer; ``n_iter_``, ``t_``,
    ``loss_``, ``loss_curve_``, ``best_loss_``, ``validation_scores_``,
    ``best_validation_score_``, ``optimizer_``, ``optimizer_time_``, ``n_features_in_``.
    """

    _linear = True

    def __init__(self, loss="squared_error", *, huber_delta=1.0, alpha=1e-4,
                 fit_intercept=True, learning_rate_init=1e-3, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, batch_size="auto", max_iter=200, tol=1e-4,
                 n_iter_no_change=10, early_stopping=False, validation_fraction=0.1,
                 shuffle=True, random_state=None, warm_start=False, verbose=False):
        self.loss = loss
        self.huber_delta = huber_delta
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.learning_rate_init = learning_rate_init
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.shuffle = shuffle
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose

    def _publish(self):
        W, b = self._weights[0], self._intercepts[0]
        self.coef_ = W.reshape(-1) if (W.shape[0] == 1 and getattr(self, "_y_1d", True)) else W
        self.intercept_ = b


class AdamMLPRegressor(RegressorMixin, _RegressorMixinAdam, _BaseAdam):
    """Multi-layer perceptron regressor trained by fastadam's Adam: a drop-in for
    ``sklearn.neural_network.MLPRegressor(solver="adam")`` with ``loss="squared_error"``
    (also ``"huber"``, threshold ``huber_delta``). Same objective, initialisation,
    batching and stopping rules as scikit-learn; ``epsilon`` is epsilon-hat (fastadam
    ``eps_mode="hat"``). Attributes as :class:`AdamMLPClassifier`, without ``classes_``.
    """

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu",
                 *, huber_delta=1.0, alpha=1e-4, batch_size="auto", learning_rate_init=1e-3,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.huber_delta = huber_delta
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change

    _publish = AdamMLPClassifier._publish
