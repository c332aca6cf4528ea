"""The lazy first layer of ``AdamMLPClassifier`` on hashed sparse data: the two-call
minibatch path (``fastadam/sklearn/_lazy_mlp.py``) against the previous path
(``take_rows`` + ``csr_forward`` + ``lazy_adam_step``, still in the code and selected by
``_batched_lazy`` returning False), in one process, interleaved round by round.

Data: ``make_data`` of scripts/bench_sparse_estimators.py (~30 nonzeros per row,
hashed into n_features columns). Both paths give the same model bit for bit (tested in
tests/test_sklearn_sparse_mlp.py; checked again here). Fit time per epoch is the
median over the rounds; the machine may be shared, so compare the ratio.

    python scripts/bench_sparse_mlp.py                    # 20,000 x 2^18, hidden 64
    python scripts/bench_sparse_mlp.py --quick            # small, seconds
"""
import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_sparse_estimators import make_data  # noqa: E402

from fastadam.sklearn import AdamMLPClassifier  # noqa: E402


def fit(X, y, batched, a):
    est = AdamMLPClassifier(hidden_layer_sizes=(a.hidden,), max_iter=a.epochs, tol=0,
                            n_iter_no_change=10 ** 6, batch_size=a.batch_size,
                            random_state=0, sparse_updates="lazy")
    if not batched:
        est._batched_lazy = lambda: False      # the previous path, this instance only
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return (time.perf_counter() - t0) / est.n_iter_, est


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-rows", type=int, default=20_000)
    ap.add_argument("--log2-features", type=int, default=18)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.n_rows, a.log2_features, a.hidden, a.rounds = 2000, 14, 16, 2
    X, y = make_data(a.n_rows, 1 << a.log2_features)
    for batched in (True, False):          # compile the kernels outside the timings
        fit(X[:300], y[:300], batched, a)
    print(f"{a.n_rows} x 2^{a.log2_features} ({X.nnz / X.shape[0]:.1f} nonzeros per row), "
          f"hidden {a.hidden}, batch {a.batch_size}, {a.epochs} epochs per fit, "
          f"{a.rounds} rounds; {os.cpu_count()} cpus, load average "
          f"{os.getloadavg()[0]:.1f}")
    times = {True: [], False: []}
    models = {}
    for r in range(a.rounds):
        for batched in ((True, False) if r % 2 == 0 else (False, True)):
            t, models[batched] = fit(X, y, batched, a)
            times[batched].append(t)
    same = all(np.array_equal(p, q) for p, q in
               zip(models[True].coefs_ + [models[True]._lazy_mv],
                   models[False].coefs_ + [models[False]._lazy_mv]))
    new, old = (float(np.median(times[b])) for b in (True, False))
    print(f"previous path  {1e3 * old:8.1f} ms/epoch  (rounds: "
          + ", ".join(f"{1e3 * t:.0f}" for t in times[False]) + ")")
    print(f"batched path   {1e3 * new:8.1f} ms/epoch  (rounds: "
          + ", ".join(f"{1e3 * t:.0f}" for t in times[True]) + ")")
    print(f"previous / batched: {old / new:.2f}x; same model bit for bit: {same}; "
          f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
