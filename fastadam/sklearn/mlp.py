"""Multi-layer perceptrons trained by minibatch Adam, drop-ins for scikit-learn's
``MLPClassifier`` / ``MLPRegressor(solver="adam")``."""
from __future__ import annotations

from sklearn.base import ClassifierMixin, RegressorMixin

from ._base import _BaseAdam
from ._tasks import _ClassifierMixinAdam, _RegressorMixinAdam

__all__ = ["AdamMLPClassifier", "AdamMLPRegressor"]


class AdamMLPClassifier(ClassifierMixin, _ClassifierMixinAdam, _BaseAdam):
    """Multi-layer perceptron classifier trained by fastadam's Adam: a drop-in for
    ``sklearn.neural_network.MLPClassifier(solver="adam")`` (the Adam-only parameters;
    ``solver``, ``learning_rate``, ``momentum``, ``power_t``, ``nesterovs_momentum`` and
    ``max_fun`` do not exist here).

    Same objective, initialisation, batching, shuffling and stopping rules as
    scikit-learn (see the module docstring); ``epsilon`` is epsilon-hat (fastadam
    ``eps_mode="hat"``). Binary, multiclass (softmax) and multilabel targets.

    ``comm``: an mpi4py communicator for a data-parallel fit under ``mpiexec`` (each
    rank passes its own rows), or None (default); see the package docstring. Data-parallel
    fits take dense steps (``sparse_updates`` below).

    Attributes: ``coefs_[i]`` (fan_in, fan_out) and ``intercepts_[i]`` - views of one
    flat buffer; ``classes_``, ``n_layers_``, ``n_outputs_``, ``out_activation_``,
    ``n_iter_``, ``t_``, ``loss_``, ``loss_curve_``, ``best_loss_``,
    ``validation_scores_``, ``best_validation_score_``, ``optimizer_``,
    ``optimizer_time_``, ``n_features_in_``.

    ``sparse_updates``: ``"auto"`` (default), ``"lazy"`` or ``"dense"``. For sparse
    (CSR/CSC) ``X``, ``"lazy"`` steps only the first-layer rows (``coefs_[0][j]``) of
    the features present (nonzero) in each minibatch, at O(nnz * hidden) cost per
    minibatch; ``alpha``'s L2 gradient is applied to those rows only, and rows a
    minibatch does not touch get no L2 term and no decay (not even later as catch-up).
    The other layers and all intercepts always take dense steps. ``"dense"`` steps
    every weight every minibatch (the exact objective; O(n_features) per minibatch).
    ``"auto"`` is ``"lazy"`` for sparse ``X`` and ``"dense"`` for arrays (on dense rows
    every feature is present, so there is nothing to skip). It is read at ``fit`` (and
    the first ``partial_fit``); see docs/sparse.md. With ``comm`` (a data-parallel fit)
    ``"auto"`` is ``"dense"``, and ``"lazy"`` raises ValueError: the lazily stepped
    layer's moments live on each rank outside the sharded optimizer, so the ranks would
    not share its updates.

    ``state_dtype``: low-precision Adam state, as in :class:`AdamClassifier`.
    """

    _multilabel = True

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, alpha=1e-4,
                 batch_size="auto", learning_rate_init=1e-3, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, comm=None, sparse_updates="auto",
                 state_dtype=None):
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
        self.comm = comm
        self.sparse_updates = sparse_updates
        self.state_dtype = state_dtype

    def _publish(self):
        self.coefs_ = list(self._weights)
        self.intercepts_ = list(self._intercepts)
        self.n_layers_ = len(self._units)
        self.n_outputs_ = self._units[-1]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class AdamMLPRegressor(RegressorMixin, _RegressorMixinAdam, _BaseAdam):
    """Multi-layer perceptron regressor trained by fastadam's Adam: a drop-in for
    ``sklearn.neural_network.MLPRegressor(solver="adam")`` with ``loss="squared_error"``
    (also ``"huber"``, threshold ``huber_delta``). Same objective, initialisation,
    batching and stopping rules as scikit-learn; ``epsilon`` is epsilon-hat (fastadam
    ``eps_mode="hat"``). ``comm``, ``sparse_updates``, ``state_dtype`` and the
    attributes as :class:`AdamMLPClassifier`, without ``classes_``.
    """

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu",
                 *, huber_delta=1.0, alpha=1e-4, batch_size="auto", learning_rate_init=1e-3,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, comm=None,
                 sparse_updates="auto", state_dtype=None):
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
        self.comm = comm
        self.sparse_updates = sparse_updates
        self.state_dtype = state_dtype

    _publish = AdamMLPClassifier._publish
