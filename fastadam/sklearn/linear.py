"""Linear models fitted by minibatch Adam: :class:`AdamClassifier` (logistic regression)
and :class:`AdamRegressor` (linear regression, squared error or Huber loss)."""
from __future__ import annotations

from sklearn.base import ClassifierMixin, RegressorMixin

from ._base import _BaseAdam
from ._tasks import _ClassifierMixinAdam, _RegressorMixinAdam

__all__ = ["AdamClassifier", "AdamRegressor"]


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
