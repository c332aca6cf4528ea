"""scikit-learn's own conformance checks for every fastadam estimator."""
import pytest

pytest.importorskip("sklearn")

from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastadam.sklearn import (AdamClassifier, AdamMLPClassifier,  # noqa: E402
                              AdamMLPRegressor, AdamRegressor)

# Fits in the checks stop at max_iter on purpose; the warning saying so is expected.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Every estimator with its DEFAULT constructor: the defaults are what users get, so they
# are what must pass (check_regressors_train, for one, asks for R^2 > 0.5 after a fit on
# 200 samples). Extra configurations after them: the Huber loss and a deeper tanh network.
DEFAULTS = [AdamClassifier(), AdamRegressor(), AdamMLPClassifier(), AdamMLPRegressor()]
ESTIMATORS = DEFAULTS + [
    AdamRegressor(loss="huber"),
    AdamMLPClassifier(hidden_layer_sizes=(6, 5), activation="tanh"),
]


def test_the_defaults_are_checked():
    # The conformance checks below must run on untouched default constructors.
    for est in DEFAULTS:
        assert est.get_params() == type(est)().get_params()


def expected_failed_checks(estimator):
    return {}   # none: every check passes



@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks)
def test_sklearn_conformance(estimator, check):
    check(estimator)
