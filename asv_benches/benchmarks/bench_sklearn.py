"""fastadam.sklearn estimators against scikit-learn's MLPClassifier(solver="adam").

Fit time of a fixed number of epochs (tol disabled) with identical settings; the
optimizer's share of fit time is tracked as a ratio. Skipped when scikit-learn is absent.
"""
import warnings

import numpy as np

try:
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from fastadam.sklearn import AdamClassifier, AdamMLPClassifier
except ImportError:          # asv skips a benchmark whose setup raises NotImplementedError
    MLPClassifier = None

EPOCHS = 10


def _digits():
    X, y = load_digits(return_X_y=True)
    return np.ascontiguousarray(X / 16.0), y


def _mlp_kwargs(hidden, batch):
    return dict(hidden_layer_sizes=hidden, batch_size=batch, max_iter=EPOCHS,
                random_state=0, tol=0.0, n_iter_no_change=10**9)


class MLPDigitsFit:
    """Fit 10 epochs of a one-hidden-layer MLP on digits (1797 x 64)."""

    params = (["fastadam", "sklearn"], [32, 100], [32, 200])
    param_names = ["implementation", "hidden", "batch_size"]
    timeout = 120

    def setup(self, implementation, hidden, batch):
        if MLPClassifier is None:
            raise NotImplementedError("scikit-learn is not installed")
        warnings.simplefilter("ignore", ConvergenceWarning)
        self.X, self.y = _digits()
        kw = _mlp_kwargs((hidden,), batch)
        if implementation == "fastadam":
            self.make = lambda: AdamMLPClassifier(**kw)
            AdamMLPClassifier(**dict(kw, max_iter=1)).fit(self.X, self.y)   # JIT warm-up
        else:
            self.make = lambda: MLPClassifier(solver="adam", **kw)

    def time_fit(self, implementation, hidden, batch):
        self.make().fit(self.X, self.y)


class LinearDigitsFit:
    """AdamClassifier (multinomial logistic regression): 10 epochs on digits."""

    params = ([32, 200],)
    param_names = ["batch_size"]

    def setup(self, batch):
        if MLPClassifier is None:
            raise NotImplementedError("scikit-learn is not installed")
        warnings.simplefilter("ignore", ConvergenceWarning)
        self.X, self.y = _digits()
        self.kw = dict(batch_size=batch, max_iter=EPOCHS, random_state=0, tol=0.0,
                       n_iter_no_change=10**9)
        self.est = AdamClassifier(**dict(self.kw, max_iter=1)).fit(self.X, self.y)

    def time_fit(self, batch):
        AdamClassifier(**self.kw).fit(self.X, self.y)

    def time_partial_fit_epoch(self, batch):
        self.est.partial_fit(self.X, self.y)


class OptimizerShare:
    """Fraction of AdamMLPClassifier fit time spent in optimizer_.step() (digits)."""

    params = ([32, 200],)
    param_names = ["batch_size"]
    unit = "fraction of fit time"

    def setup(self, batch):
        if MLPClassifier is None:
            raise NotImplementedError("scikit-learn is not installed")
        warnings.simplefilter("ignore", ConvergenceWarning)
        self.X, self.y = _digits()
        self.kw = _mlp_kwargs((100,), batch)
        AdamMLPClassifier(**dict(self.kw, max_iter=1)).fit(self.X, self.y)

    def track_optimizer_share(self, batch):
        import time
        est = AdamMLPClassifier(**self.kw)
        t0 = time.perf_counter()
        est.fit(self.X, self.y)
        return est.optimizer_time_ / (time.perf_counter() - t0)
