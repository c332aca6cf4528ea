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

* **State precision.** ``state_dtype`` (default None) is passed to the
  :class:`fastadam.Adam`: ``"bfloat16"`` or ``"int8"`` keep Adam's moments in 4 or about 2
  bytes per weight and train the network in float32 (docs/low_precision.md).

Fitted attributes besides scikit-learn's: ``optimizer_`` (the :class:`fastadam.Adam`),
``optimizer_time_`` (seconds spent in ``optimizer_.step()`` during the last ``fit`` or
``partial_fit`` call; the rest of the fit time is gradients, batching and bookkeeping).
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
