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
* **Sparse input** (``sparse_updates``). With CSR/CSC ``X`` and ``"lazy"`` (what the
  default ``"auto"`` picks for sparse ``X``; dense arrays get ``"dense"``), a minibatch
  steps only the first-layer weight rows (``coef_`` columns) of the features with a
  nonzero value in it; the other rows and their moments are not read or written, and
  the fit costs O(nnz) per minibatch instead of O(n_features). ``alpha`` then reaches a
  row only in the minibatches that touch it: a touched row's gradient gets ``alpha /
  sum_{i in B} s_i * w``, an untouched row gets no L2 term and no decay (no catch-up
  later). Bias correction uses the global step count. ``"dense"`` is the exact dense
  objective above. With ``comm`` (below) ``"auto"`` is ``"dense"`` and ``"lazy"`` raises
  ValueError: the lazy layer's moments are not in the sharded optimizer, so the ranks
  would not share its updates. See docs/sparse.md, "Estimators on sparse input".
* **Low-precision state** (``state_dtype``, default None). ``"bfloat16"`` or ``"int8"``
  keeps Adam's moments in 4 or 2.03 bytes per weight (:class:`fastadam.Adam`
  ``state_dtype``); any value but None trains float32 weights. ``set_params`` between
  ``partial_fit`` calls converts the moments; pickles keep the saved layout.
  ``"bfloat16"``/``"int8"`` with ``comm`` or ``sparse_updates="lazy"`` raise
  ValueError, and ``"auto"`` is dense with them. See docs/low_precision.md.
* **Randomness.** ``random_state`` seeds the initial weights (Glorot-uniform, as
  scikit-learn; linear models start at zero), the validation split and the per-epoch
  shuffles, drawing from the random stream in the same order as scikit-learn's MLP.
* **Data-parallel.** ``comm`` (default None): an mpi4py communicator; under ``mpiexec``
  each rank passes its own rows to ``fit``/``partial_fit`` (collective calls) and the
  ranks train one model, each step on the pooled minibatch of ``batch_size`` rows, with
  the Adam state sharded by :class:`fastadam.distributed.ShardedOptimizer` and identical
  coefficients on every rank (see ``_parallel`` and docs/distributed.md). ``clone``
  shares the communicator; pickles and deep copies drop it (``comm=None``; further
  training of the copy starts fresh Adam moments). Sparse ``X`` takes dense steps
  (``sparse_updates``).

Fitted attributes besides scikit-learn's: ``optimizer_`` (the :class:`fastadam.Adam`, or
the :class:`fastadam.distributed.ShardedOptimizer` with ``comm``),
``optimizer_time_`` (seconds spent in ``optimizer_.step()`` during the last ``fit`` or
``partial_fit`` call, with lazy updates including the lazy first-layer step; the rest of
the fit time is gradients, batching and bookkeeping; the lazy linear models run each
epoch as one compiled loop that fuses the gradient with the step, so for them it is the
whole epoch loop). With lazy updates ``optimizer_``
holds every parameter but the first weight layer, whose moments are ``_lazy_mv``.
"""
from __future__ import annotations

from .linear import AdamClassifier, AdamRegressor
from .mlp import AdamMLPClassifier, AdamMLPRegressor

__all__ = ["AdamClassifier", "AdamRegressor", "AdamMLPClassifier", "AdamMLPRegressor"]

# The public classes present themselves (repr, pickles, docs) as fastadam.sklearn.X, where
# they are imported from; the submodules are an implementation detail.
for _cls in (AdamClassifier, AdamRegressor, AdamMLPClassifier, AdamMLPRegressor):
    _cls.__module__ = __name__
del _cls
