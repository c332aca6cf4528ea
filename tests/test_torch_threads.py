"""fastadam.torch's thread policy (fastadam/torch/_threads.py): which thread count a step
gets under given conditions, the override, that numba's count is restored, that torch's
pool is released only when the policy says so, and that results are bit-identical
whatever the count. Nothing here is timed."""
import pytest

torch = pytest.importorskip("torch")

import fastadam as fa  # noqa: E402
import fastadam.torch as ft  # noqa: E402
from fastadam import config  # noqa: E402
from fastadam.torch import _threads  # noqa: E402

choose = _threads.choose


@pytest.fixture(autouse=True)
def _restore_policy():
    saved = ft.get_step_threads()
    n = fa.get_num_threads()
    _threads._cache.clear()           # decisions cached under other (patched) facts
    yield
    _threads._cache.clear()
    ft.set_step_threads(saved["threads"], release_torch_pool=saved["release_torch_pool"])
    fa.set_num_threads(n)


# ----------------------------------------------------------------------------- choose
def test_two_cores_short_step_runs_serially():
    # torch 2 threads on 2 cores: its one worker spins on the other core
    assert choose(10**5, 2, 2, 2, True) == (1, False)
    assert choose(10**6 - 1, 2, 2, 2, True, can_release=True) == (1, False)


def test_longer_steps_use_all_threads_and_release_from_release_step():
    # the defaults: every step of SHORT_STEP elements or more releases (RELEASE_STEP)
    assert choose(10**6 - 1, 2, 2, 2, True, can_release=True) == (1, False)
    assert choose(10**6, 2, 2, 2, True, can_release=True) == (2, True)
    assert choose(3 * 10**6, 2, 2, 2, True, can_release=True) == (2, True)
    assert choose(10**7, 2, 2, 2, True, can_release=True) == (2, True)
    assert choose(10**7, 2, 2, 2, True, can_release=False) == (2, False)
    kw = dict(short_step=1000, release_step=5000, can_release=True)
    assert choose(999, 2, 2, 2, True, **kw) == (1, False)
    assert choose(1000, 2, 2, 2, True, **kw) == (2, False)
    assert choose(4999, 2, 2, 2, True, **kw) == (2, False)
    assert choose(5000, 2, 2, 2, True, **kw) == (2, True)


def test_no_spinning_workers_keeps_numba_count():
    for numel in (10**3, 10**5, 10**7):
        assert choose(numel, 2, 2, 2, False, can_release=True) == (2, False)  # passive
        assert choose(numel, 4, 1, 4, True, can_release=True) == (4, False)   # torch 1 thread
        assert choose(numel, 1, 2, 2, True, can_release=True) == (1, False)   # numba 1 thread


def test_many_cores_half_speed_threads_still_win():
    # 8 cores, torch 8 threads: 7 spinners, one free core; 8 threads at half speed on
    # 7 of them beat one thread
    assert choose(10**5, 8, 8, 8, True) == (8, False)
    # 4 cores, torch 2 threads, numba 4: one spinner, three free cores
    assert choose(10**5, 4, 2, 4, True) == (3, False)
    # 8 cores, torch 2, numba capped at 2: the spinner leaves 7 cores
    assert choose(10**5, 2, 2, 8, True) == (2, False)
    # 3 cores, torch 3: one free core against 3 threads at half speed on 2 of them
    assert choose(10**5, 3, 3, 3, True) == (3, False)
    # never fewer than one thread, whatever the counts
    assert choose(10**5, 2, 16, 2, True) == (1, False)


# ----------------------------------------------------------------------------- facts
def test_omp_spins_reads_the_wait_policy():
    assert _threads.omp_spins({}, "OpenMP")
    assert _threads.omp_spins({"OMP_WAIT_POLICY": "active"}, "OpenMP")
    assert not _threads.omp_spins({"OMP_WAIT_POLICY": "PASSIVE"}, "OpenMP")
    assert not _threads.omp_spins({"OMP_WAIT_POLICY": " passive "}, "OpenMP")
    assert not _threads.omp_spins({"GOMP_SPINCOUNT": "0"}, "OpenMP")
    assert not _threads.omp_spins({"KMP_BLOCKTIME": "0"}, "OpenMP")
    assert _threads.omp_spins({"GOMP_SPINCOUNT": "10000"}, "OpenMP")
    assert not _threads.omp_spins({}, "native thread pool")


def test_backend_is_read_from_torch():
    assert _threads._backend() in torch.__config__.parallel_info()


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("bad,exc", [("all", TypeError), (True, TypeError), (1.0, TypeError),
                                     (None, TypeError), (0, ValueError), (-1, ValueError)])
def test_set_step_threads_rejects(bad, exc):
    before = ft.get_step_threads()
    with pytest.raises(exc, match="threads"):
        ft.set_step_threads(bad)
    assert ft.get_step_threads() == before


def test_set_step_threads_rejects_too_many_and_bad_release():
    import numba
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        ft.set_step_threads(numba.config.NUMBA_NUM_THREADS + 1)
    with pytest.raises(TypeError, match="release_torch_pool"):
        ft.set_step_threads("auto", release_torch_pool=1)
    assert ft.get_step_threads() == {"threads": "auto", "release_torch_pool": True}


def test_plan_follows_the_setting(monkeypatch):
    monkeypatch.setitem(_threads._facts, "spins", True)
    monkeypatch.setitem(_threads._facts, "cpus", 2)
    monkeypatch.setitem(_threads._facts, "pause", lambda kind: 0)
    from fastadam.torch._common import _share_threads
    torch.set_num_threads(2)
    _share_threads()                 # what a step does when torch's count changed
    fa.set_num_threads(2)
    assert _threads.plan(10**5) == (2, 1, False)
    assert _threads.plan(2 * 10**6) == (2, 2, True)
    assert _threads.plan(10**7) == (2, 2, True)
    ft.set_step_threads(2)                     # explicit: as given, pool left alone
    assert _threads.plan(10**5) == (2, 2, False)
    assert _threads.plan(10**7) == (2, 2, False)
    ft.set_step_threads(1)
    assert _threads.plan(10**7) == (2, 1, False)
    ft.set_step_threads("auto", release_torch_pool=False)
    assert _threads.plan(10**7) == (2, 2, False)
    monkeypatch.setitem(_threads._facts, "spins", False)    # e.g. OMP_WAIT_POLICY=passive
    ft.set_step_threads("auto")
    _threads._cache.clear()
    assert _threads.plan(10**5) == (2, 2, False)


# ----------------------------------------------------------------------------- steps
def _model(sizes=(70000, 50000, 30000), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g).requires_grad_() for n in sizes]


def _train(setting, steps=5, amsgrad=False):
    ft.set_step_threads(setting)
    ps = _model()
    opt = ft.Adam(ps, lr=1e-2, weight_decay=1e-3, amsgrad=amsgrad)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return ps, opt


def _threads_during_step(monkeypatch):
    """Record numba's thread count while the inner kernels run."""
    seen = []
    orig = ft.Adam._run_inners

    def spy(L, gl):
        seen.append(config._thread_count())
        return orig(L, gl)
    monkeypatch.setattr(ft.Adam, "_run_inners", staticmethod(spy))
    # float32/float64 tensors under one inner optimizer: gradients by data address
    orig_refs = fa.optim.base.Optimizer._step_refs

    def spy_refs(self, grefs):
        seen.append(config._thread_count())
        return orig_refs(self, grefs)
    monkeypatch.setattr(fa.optim.base.Optimizer, "_step_refs", spy_refs)
    return seen


def test_results_bit_identical_whatever_the_thread_count(monkeypatch):
    """150k float32 elements: above PARALLEL_THRESHOLD, so two threads run the parallel
    kernel and one the serial one; parameters and every state buffer agree bit for bit."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2 or config.PARALLEL_THRESHOLD > 150000:
        pytest.skip("needs two numba threads and the parallel kernel at 150k elements")
    fa.set_num_threads(2)
    seen = _threads_during_step(monkeypatch)
    runs = {}
    for setting in (1, 2, "auto"):
        for amsgrad in (False, True):
            seen.clear()
            ps, opt = _train(setting, amsgrad=amsgrad)
            if setting != "auto":
                assert seen == [setting] * 5        # the kernels ran with that count
            runs[setting, amsgrad] = ([p.detach().clone() for p in ps],
                                      [{k: v.clone() for k, v in opt.state[p].items()}
                                       for p in ps])
            assert fa.get_num_threads() == 2        # restored after every step
    for amsgrad in (False, True):
        ref_p, ref_s = runs[1, amsgrad]
        for setting in (2, "auto"):
            got_p, got_s = runs[setting, amsgrad]
            for a, b in zip(ref_p, got_p):
                assert torch.equal(a, b)
            for sa, sb in zip(ref_s, got_s):
                assert sa.keys() == sb.keys()
                for k in sa:
                    assert torch.equal(sa[k], sb[k]), k


def test_auto_step_threads_and_release(monkeypatch):
    """Under "auto" with spinning workers on 2 cores: a short step runs with one thread
    and leaves torch's pool alone; a long one runs
    with two after one release (the thresholds lowered to fit a test); with
    release_torch_pool=False it is not released."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread")
    calls = []
    monkeypatch.setitem(_threads._facts, "spins", True)
    monkeypatch.setitem(_threads._facts, "cpus", 2)
    monkeypatch.setitem(_threads._facts, "pause", lambda kind: calls.append(kind) or 0)
    torch.set_num_threads(2)
    fa.set_num_threads(2)
    seen = _threads_during_step(monkeypatch)
    _train("auto", steps=2)
    assert seen == [1, 1] and calls == []
    monkeypatch.setattr(_threads, "SHORT_STEP", 100000)
    monkeypatch.setattr(_threads, "RELEASE_STEP", 100000)
    _threads._cache.clear()
    seen.clear()
    _train("auto", steps=2)
    assert seen == [2, 2] and calls == [1, 1]        # omp_pause_soft
    ft.set_step_threads("auto", release_torch_pool=False)
    seen.clear()
    calls.clear()
    ps = _model()
    opt = ft.Adam(ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    assert seen == [2] and calls == []
    assert fa.get_num_threads() == 2


def test_thread_count_restored_when_the_step_raises(monkeypatch):
    ft.set_step_threads(1)
    fa.set_num_threads(config.get_num_threads())
    before = fa.get_num_threads()
    ps = _model()
    opt = ft.Adam(ps)

    def boom(L, gl):
        raise RuntimeError("kernel failed")
    monkeypatch.setattr(ft.Adam, "_run_inners", staticmethod(boom))
    monkeypatch.setattr(fa.optim.base.Optimizer, "_step_refs", lambda self, grefs: boom(0, 0))
    for p in ps:
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="kernel failed"):
        opt.step()
    assert fa.get_num_threads() == before


def test_release_torch_pool_keeps_torch_working():
    """The real call, where torch's runtime has it: torch's ops still run on the same
    thread count with the same results, before and after a release."""
    if _threads._find_pause() is None:
        pytest.skip("torch's OpenMP runtime has no omp_pause_resource_all here")
    torch.set_num_threads(2)
    x = torch.randn(300000, generator=torch.Generator().manual_seed(0))
    before = torch.sigmoid(x) * 3 + x.sum()
    for _ in range(3):
        assert _threads.release_torch_pool()
        assert torch.get_num_threads() == 2
        assert torch.equal(torch.sigmoid(x) * 3 + x.sum(), before)


# ----------------------------------------------------------------------------- SparseAdam
def _sparse_train(setting, monkeypatch, seen, steps=4):
    """An embedding table (4000, 48) and a 1-D parameter stepped by fastadam.torch.SparseAdam
    with uncoalesced gradients (duplicate rows): ~125k values a step, above
    PARALLEL_THRESHOLD. ``seen`` gets numba's thread count at every kernel launch."""
    import fastadam.sparse_optim as fsp      # where SparseAdam looks up the launch
    orig = fsp.launch

    def spy(*args):
        seen.append(config._thread_count())
        return orig(*args)
    monkeypatch.setattr(fsp, "launch", spy)
    ft.set_step_threads(setting)
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(4000, 48, generator=g).requires_grad_(),
          torch.randn(30000, generator=g).requires_grad_()]
    opt = ft.SparseAdam(ps, lr=1e-2)
    for _ in range(steps):
        for p, k in zip(ps, (2500, 5000)):
            rows = torch.randint(0, p.shape[0], (k,), generator=g)
            vals = torch.randn((k, *p.shape[1:]), generator=g)
            p.grad = torch.sparse_coo_tensor(rows[None], vals, tuple(p.shape),
                                             check_invariants=True)
        opt.step()
    monkeypatch.setattr(fsp, "launch", orig)
    return [p.detach().clone() for p in ps], [
        {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
        for p in ps]


def test_sparse_adam_follows_the_step_thread_policy(monkeypatch):
    """SparseAdam steps under the dense classes' policy, sized by the gradient values:
    a fixed count as set; under "auto" beside a spinning worker on 2 cores one thread
    below SHORT_STEP, two (after a release) from RELEASE_STEP; numba's count restored."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread")
    calls = []
    monkeypatch.setitem(_threads._facts, "spins", True)
    monkeypatch.setitem(_threads._facts, "cpus", 2)
    monkeypatch.setitem(_threads._facts, "pause", lambda kind: calls.append(kind) or 0)
    torch.set_num_threads(2)
    fa.set_num_threads(2)
    seen = []
    for setting in (1, 2):
        seen.clear()
        _sparse_train(setting, monkeypatch, seen, steps=2)
        assert seen == [setting] * 4 and calls == []    # two launches a step
        assert fa.get_num_threads() == 2
    seen.clear()
    _sparse_train("auto", monkeypatch, seen, steps=2)
    assert seen == [1] * 4 and calls == []              # 2500*48 + 5000 < SHORT_STEP
    monkeypatch.setattr(_threads, "SHORT_STEP", 100000)
    monkeypatch.setattr(_threads, "RELEASE_STEP", 125000)
    _threads._cache.clear()
    seen.clear()
    _sparse_train("auto", monkeypatch, seen, steps=2)
    assert seen == [2] * 4 and calls == [1, 1]          # one release per step
    assert fa.get_num_threads() == 2


def test_sparse_adam_bit_identical_whatever_the_thread_count(monkeypatch):
    """Parameters and state agree bit for bit under 1, 2 threads, "auto", and the serial
    kernel (parallel threshold raised), duplicate rows included."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2 or config.PARALLEL_THRESHOLD > 100000:
        pytest.skip("needs two numba threads and the parallel kernel at 120k values")
    fa.set_num_threads(2)
    runs = {}
    for setting in (1, 2, "auto"):
        runs[setting] = _sparse_train(setting, monkeypatch, [])
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 10**9)
    runs["serial"] = _sparse_train(2, monkeypatch, [])
    ref_p, ref_s = runs[1]
    for setting in (2, "auto", "serial"):
        got_p, got_s = runs[setting]
        for a, b in zip(ref_p, got_p):
            assert torch.equal(a, b), setting
        for sa, sb in zip(ref_s, got_s):
            assert sa.keys() == sb.keys() == {"step", "exp_avg", "exp_avg_sq"}
            assert sa["step"] == sb["step"] == 4
            assert torch.equal(sa["exp_avg"], sb["exp_avg"]), setting
            assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"]), setting
