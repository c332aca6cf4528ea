"""The two tasks: classification (label encoding, probabilities, accuracy) and
regression (target shapes, R^2), as mixins over :class:`._base._BaseAdam`."""
from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit
from sklearn.exceptions import DataConversionWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.multiclass import check_classification_targets, type_of_target

from ._validation import check_real

class _ClassifierMixinAdam:
    """Target encoding, prediction and partial_fit for the classifiers."""

    _multilabel = False

    def _encode_targets(self, y, first, incremental, classes, dtype, labels=None):
        """``labels``: data-parallel fits, the union of every rank's labels (1-D y)."""
        if y.ndim == 2 and y.shape[1] == 1:
            warnings.warn("A column-vector y was passed when a 1d array was expected. "
                          "Please change the shape of y to (n_samples, ), for example "
                          "using ravel().", DataConversionWarning)
            y = y.ravel()
        if y.ndim == 2 and not self._multilabel:
            raise ValueError(f"{type(self).__name__} expects y of shape (n_samples,), got "
                             f"{y.shape}; for several binary targets use AdamMLPClassifier")
        if y.shape[0] or labels is None:
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
            lb.fit(y if labels is None or y.ndim == 2 else labels)
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
        if y.shape[0] == 0:            # a data-parallel rank without rows
            lb = self._label_binarizer
            width = y.shape[1] if y.ndim == 2 else lb.transform(lb.classes_[:1]).shape[1]
            return np.zeros((0, width), dtype=dtype)
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


class _RegressorMixinAdam:

    def _validate_hyperparams(self, incremental):
        if self.loss not in ("squared_error", "huber"):
            raise ValueError(f"loss must be 'squared_error' or 'huber', got {self.loss!r}")
        check_real("huber_delta", self.huber_delta, 0, np.inf, lo_closed=False)
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
        """Predictions, (n_samples,) or (n_samples, n_outputs) like the y of fit; float64
        for float64 X even when the weights are float32 (float32 X or ``state_dtype``)."""
        X, in_dtype = self._check_X(X, keep_dtype=True)
        Z = self._raw_output(X)
        Z = Z.astype(np.result_type(Z.dtype, in_dtype), copy=False)
        return Z[:, 0].copy() if self._y_1d else Z

    def _score_raw(self, X, y, sample_weight):
        return r2_score(y, self.predict(X), sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
