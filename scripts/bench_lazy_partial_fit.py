"""The minibatch path of the lazy linear models (``AdamClassifier`` with
``sparse_updates="lazy"`` in ``partial_fit`` calls too small for the compiled epoch's
fit-time table): the two-call path of ``fastadam/sklearn/_lazy_mlp.py`` (rows read in
place, the weights of the next row's features and the rows updated a few ahead
prefetched) against the previous path (``take_rows`` + ``csr_forward`` +
``lazy_adam_step``, still in the code and selected by ``_batched_lazy`` returning
False), in one process, call by call interleaved.

Data: ``make_data`` of scripts/bench_sparse_estimators.py (~30 nonzeros per row, hashed
into n_features columns), fed in chunks of ``--chunk`` rows to ``partial_fit`` (a chunk's
nonzeros are below n_features / 4, so every call takes the minibatch loop). Both paths
must give the same model bit for bit (checked). The machine may be shared: compare the
ratio (the median over rounds of the ratio of the two paths' times in that round).

With ``--kernels`` it replays the first layer's compiled kernels alone on the same
minibatches (a tanh of the forward product standing in for the output delta), previous
against batched, round by round interleaved: what the change does to the part it
touches, without the per-call work of ``partial_fit`` (validation, the O(n_features)
sum of squares and finiteness check) that dilutes it in the estimator's time.

    python scripts/bench_lazy_partial_fit.py                  # 2^22 features, binary + 5 classes
    python scripts/bench_lazy_partial_fit.py --kernels
    python scripts/bench_lazy_partial_fit.py --quick
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

from fastadam.sklearn import AdamClassifier, _lazy, _lazy_mlp  # noqa: E402


def make(batched, batch_size):
    est = AdamClassifier(batch_size=batch_size, random_state=0, sparse_updates="lazy")
    if not batched:
        est._batched_lazy = lambda: False      # the previous path, this instance only
    return est


def one_pass(est, X, y, classes, chunk):
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(0, X.shape[0], chunk):
            est.partial_fit(X[s:s + chunk], y[s:s + chunk], classes=classes)
    return time.perf_counter() - t0


def run(X, y, a):
    classes = np.unique(y)
    ests = {b: make(b, a.batch_size) for b in (True, False)}
    warm = {b: make(b, a.batch_size) for b in (True, False)}
    for b in (True, False):                 # compile the kernels outside the timings
        one_pass(warm[b], X[:2 * a.chunk], y[:2 * a.chunk], classes, a.chunk)
    times = {True: [], False: []}
    for r in range(a.rounds):
        for b in ((True, False) if r % 2 == 0 else (False, True)):
            times[b].append(one_pass(ests[b], X, y, classes, a.chunk))
    new, old = (np.array(times[b]) for b in (True, False))
    m_new, m_old = ests[True], ests[False]
    same = (np.array_equal(m_new.coef_, m_old.coef_)
            and np.array_equal(m_new.intercept_, m_old.intercept_)
            and np.array_equal(m_new._lazy_mv, m_old._lazy_mv))
    return new, old, same


def replay(X, k, a):
    """Per-epoch times of the previous kernels (take_rows + csr_forward +
    lazy_adam_step) and the batched ones (batch_forward + batch_step) on the shuffled
    minibatches of X, k outputs, float64, each path on its own copy of the layer."""
    rng = np.random.default_rng(0)
    order = rng.permutation(X.shape[0])
    batches = [order[s:s + a.batch_size] for s in range(0, X.shape[0], a.batch_size)]
    nf = X.shape[1]
    state = {b: (np.full((k, nf), 0.01), np.zeros((nf, k, 2)), _lazy.Scratch(k))
             for b in (True, False)}
    Z = np.empty((a.batch_size, k))

    def step(batched, rows, t):
        coef, MV, sc = state[batched]
        Wf, z = coef.T, Z[:rows.shape[0]]
        lr_t = _lazy.step_lr(1e-3, 0.9, 0.999, t)
        if not batched:
            A = _lazy.take_rows(X, rows)
            _lazy.csr_forward(A.indptr, A.indices, A.data, Wf, z)
            return _lazy.lazy_adam_step(A.indptr, A.indices, A.data, np.tanh(z), Wf, MV,
                                        1e-4, lr_t, 0.9, 0.999, 1e-8,
                                        *sc.get(int(A.indptr[-1])))
        s = sc.get_batch(int((X.indptr[rows + 1] - X.indptr[rows]).sum()))
        nt, nq = _lazy_mlp.batch_forward(X.indptr, X.indices, X.data, rows, Wf, z, *s)
        keys, _, touched, hpos, G, qs, qx, qr = s
        return _lazy_mlp.batch_step(np.tanh(z), Wf, MV, MV.reshape(nf, -1), 1e-4, lr_t,
                                    0.9, 0.999, 1e-8, keys, touched, hpos, G, nt, qs, qx,
                                    qr, nq)

    for b in (True, False):
        step(b, batches[0], 1)
    times = {True: [], False: []}
    t = 1
    for r in range(a.rounds):
        for b in ((True, False) if r % 2 == 0 else (False, True)):
            t0 = time.perf_counter()
            for i, rows in enumerate(batches):
                step(b, rows, t + 1 + i)
            times[b].append(time.perf_counter() - t0)
        t += len(batches)
    same = all(np.array_equal(x, y) for x, y in zip(state[True][:2], state[False][:2]))
    return np.array(times[True]), np.array(times[False]), same


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-rows", type=int, default=20_000)
    ap.add_argument("--log2-features", type=int, default=22)
    ap.add_argument("--chunk", type=int, default=2000, help="rows per partial_fit call")
    ap.add_argument("--rounds", type=int, default=6, help="passes over the data per path")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--classes", type=int, nargs="+", default=[2, 5])
    ap.add_argument("--kernels", action="store_true",
                    help="replay the first layer's kernels alone (see the docstring)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.n_rows, a.log2_features, a.chunk, a.rounds = 2000, 16, 500, 2
    X, y2 = make_data(a.n_rows, 1 << a.log2_features)
    assert 4 * a.chunk * X.nnz / X.shape[0] < X.shape[1], "chunks too large: table path"
    print(f"{a.n_rows} x 2^{a.log2_features} ({X.nnz / X.shape[0]:.1f} nonzeros per row), "
          f"partial_fit on {a.chunk} rows per call, batch {a.batch_size}, {a.rounds} "
          f"passes per path; {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    if a.kernels:
        for k in (1, 5):
            new, old, same = replay(X, k, a)
            print(f"  kernels, {k} output(s): previous {1e3 * np.median(old):7.1f} ms/epoch, "
                  f"batched {1e3 * np.median(new):7.1f}; previous / batched: median of rounds "
                  f"{np.median(old / new):.2f}x, of mins {old.min() / new.min():.2f}x; same "
                  f"layer bit for bit: {same}")
        print(f"load average now {os.getloadavg()[0]:.1f}")
        return
    rng = np.random.default_rng(1)
    for n_classes in a.classes:
        # more classes: the planted binary label plus random labels on top of it
        y = y2 if n_classes == 2 else y2 * (n_classes // 2) + rng.integers(
            0, n_classes // 2, y2.size)
        new, old, same = run(X, y, a)
        n_pass = a.n_rows / 1e3
        print(f"  {n_classes} classes: previous path {1e3 * np.median(old) / n_pass:7.2f} "
              f"ms per 1000 rows (min {1e3 * old.min() / n_pass:.2f}), batched "
              f"{1e3 * np.median(new) / n_pass:7.2f} (min {1e3 * new.min() / n_pass:.2f}); "
              f"previous / batched: median of rounds {np.median(old / new):.2f}x, of mins "
              f"{old.min() / new.min():.2f}x; same model bit for bit: {same}")
    print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
