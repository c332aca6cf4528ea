"""One optimizer, several Python threads: step() serialises them, so the result equals
the same steps taken one after another."""
import threading

import numpy as np
import pytest

import fastadam as fa


@pytest.mark.parametrize("use_opt_grads", [False, True])
@pytest.mark.parametrize("n", [1000, 200_000])     # serial and parallel kernels
def test_two_threads_stepping_one_optimizer_equal_sequential_steps(n, use_opt_grads):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(n).astype(np.float32), rng.standard_normal(7).astype(np.float32)]
    grads = [rng.standard_normal(x.shape).astype(np.float32) for x in init]
    steps = 200

    def run(threads):
        params = [x.copy() for x in init]
        opt = fa.AdamW(params, lr=1e-3, amsgrad=True)
        if use_opt_grads:
            for dst, src in zip(opt.grads, grads):
                dst[...] = src
        barrier = threading.Barrier(threads)

        def work(count):
            barrier.wait()
            for _ in range(count):
                opt.step(None if use_opt_grads else [g.copy() for g in grads])

        ts = [threading.Thread(target=work, args=(steps // threads,)) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return params, opt

    seq_params, seq_opt = run(1)
    par_params, par_opt = run(2)
    assert par_opt.state[0]["step"] == steps
    for a, b in zip(par_params, seq_params):
        np.testing.assert_array_equal(a, b)
    for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        np.testing.assert_array_equal(par_opt.state[0][name], seq_opt.state[0][name])
