"""How many threads a fastadam.torch step uses next to torch's OpenMP pool.

torch's CPU wheels run their intra-op work on GNU OpenMP (``torch/lib/libgomp.so.1``).
After every parallel region libgomp's worker threads spin before they sleep: with the
default wait policy 300,000 PAUSE iterations, 4-6 ms of CPU per worker measured on this
project's 2-core Xeon. An optimizer step comes right after ``backward()``, so a step
shorter than that window runs while ``torch.get_num_threads() - 1`` cores are taken by
spinning threads, and numba's worker threads land on them (a thread sharing a core with
a spinner runs at roughly half speed, and the step waits for its slowest thread).

The ``"auto"`` policy (the default; :func:`set_step_threads` overrides it):

* torch's workers do not spin (one torch thread, torch's native thread pool, or
  ``OMP_WAIT_POLICY=passive`` / ``GOMP_SPINCOUNT=0`` / ``KMP_BLOCKTIME=0`` in the
  environment): the step uses numba's thread count, as set (capped at torch's count,
  see ``_common._share_threads``).
* steps of fewer than :data:`SHORT_STEP` elements: the threads that have a core without
  a spinning worker, ``min(T, cpus - (torch_threads - 1))`` for numba's count ``T``,
  unless that is less than half of ``T`` (on many cores ``T`` threads at half speed
  still beat fewer at full speed). On 2 cores with 2 torch threads: one thread, the
  serial kernel.
* longer steps: all of numba's threads; from :data:`RELEASE_STEP` elements (= SHORT_STEP:
  every such step) after releasing torch's OpenMP pool with the
  OpenMP 5.0 call ``omp_pause_resource_all(omp_pause_soft)`` when torch's runtime has it
  (its workers exit at once instead of spinning through the step; torch's next parallel
  region starts new ones, tens of microseconds). Nothing else changes: torch's thread
  count, wait policy and results are as before.

Results do not depend on the thread count (each element is updated by one thread with
the same arithmetic), so the policy changes only the time a step takes.
"""
from __future__ import annotations

import ctypes
import glob
import os

import numba
import torch

from fastadam import config

from ._common import _threads_seen

#: Steps over fewer elements run on the cores without a spinning torch worker (on 2
#: cores: serially). Below ~1e6 float32 elements a step takes under ~1 ms, well inside
#: the spin window, and waking numba's sleeping workers onto cores shared with spinners
#: costs more than it saves (measured 1e5: one thread 1.2-1.6x faster; 1e6: a tie; 3e6:
#: two threads faster; docs/torch.md).
SHORT_STEP = 1_000_000

#: Steps over at least this many elements release torch's pool first, when its runtime
#: allows: the spinning workers would otherwise hold their cores through a good part of
#: the step, and the release plus the new workers at torch's next parallel region cost
#: tens of microseconds. Equal to SHORT_STEP: every step that uses all threads releases
#: (measured on the quiet 2-core Xeon, three interleaved runs each, speed-up over torch
#: fused with a release from 1e6 / from 4e6: 1e6 in 10 tensors 1.16-1.19x / 0.77-0.83x,
#: in 100 tensors 1.67-1.69x / 1.32-1.44x, 2e6 in 10 tensors 1.14-1.15x / 0.75-0.81x;
#: docs/torch.md).
RELEASE_STEP = 1_000_000

_policy = {"threads": "auto", "release": True}
_policy_key = [("auto", True)]
_cache: dict = {}   # (numel, numba threads, torch threads, policy) -> (threads, release)


def set_step_threads(threads="auto", *, release_torch_pool=True):
    """Choose how many numba threads ``fastadam.torch`` steps use (for every optimizer of
    the process, until changed).

    ``threads="auto"`` (default): decided per step from the step's size, torch's thread
    count and OpenMP wait policy (module docstring, docs/torch.md). ``threads=n`` (an int
    >= 1): always ``n`` threads, nothing adapted and torch's pool left alone.
    ``release_torch_pool``: whether "auto" may release torch's OpenMP pool before a long
    step. The thread count is set for the step only: ``fastadam.get_num_threads()`` is
    unchanged afterwards."""
    if threads != "auto":
        if isinstance(threads, bool) or not isinstance(threads, int):
            raise TypeError(f"threads must be 'auto' or an int, got {threads!r}")
        hi = numba.config.NUMBA_NUM_THREADS
        if not 1 <= threads <= hi:
            raise ValueError(f"threads must be between 1 and {hi} (NUMBA_NUM_THREADS), "
                             f"got {threads}")
    if not isinstance(release_torch_pool, bool):
        raise TypeError(f"release_torch_pool must be a bool, got {release_torch_pool!r}")
    _policy.update(threads=threads, release=release_torch_pool)
    _policy_key[0] = (threads, release_torch_pool)


def get_step_threads():
    """The current setting: ``{"threads": "auto" or n, "release_torch_pool": bool}``."""
    return {"threads": _policy["threads"], "release_torch_pool": _policy["release"]}


# ----------------------------------------------------------------------------- facts
def omp_spins(environ=None, backend=None):
    """Whether torch's intra-op workers spin-wait after a parallel region: torch runs
    them on OpenMP and the environment did not ask OpenMP for a passive wait."""
    env = os.environ if environ is None else environ
    if backend is None:
        backend = _backend()
    if backend != "OpenMP":
        return False           # torch's native pool waits on a condition variable
    if env.get("OMP_WAIT_POLICY", "").strip().lower() == "passive":
        return False
    for name in ("GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        if env.get(name, "").strip() == "0":
            return False
    return True


def _backend():
    info = torch.__config__.parallel_info()
    for line in info.splitlines():
        if line.startswith("ATen parallel backend:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose(numel, numba_threads, torch_threads, cpus, spins, short_step=SHORT_STEP,
           release_step=RELEASE_STEP, can_release=False):
    """(threads, release) for a step over ``numel`` elements under the "auto" policy:
    how many numba threads, and whether to release torch's OpenMP pool first."""
    if numba_threads <= 1 or torch_threads <= 1 or not spins:
        return numba_threads, False
    if numel >= short_step:
        return numba_threads, can_release and numel >= release_step
    spinners = min(torch_threads - 1, cpus - 1)
    t = min(numba_threads, max(1, cpus - spinners))
    return (t if 2 * t >= numba_threads else numba_threads), False


# ----------------------------------------------------------------------------- pool
_OMP_NAMES = ("libgomp*.so*", "libiomp5*.so*", "libomp*.so*", "libomp*.dylib",
              "libiomp5*.dylib")


def _find_pause():
    """``omp_pause_resource_all`` of the OpenMP runtime in torch's own lib directory,
    when it is already loaded (never loads a second runtime); None otherwise."""
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    noload = getattr(os, "RTLD_NOLOAD", None)
    if noload is None:
        return None
    for pattern in _OMP_NAMES:
        for path in sorted(glob.glob(os.path.join(libdir, pattern))):
            try:
                lib = ctypes.CDLL(path, mode=noload | getattr(os, "RTLD_LOCAL", 0))
                fn = lib.omp_pause_resource_all
            except (OSError, AttributeError):
                continue
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            return fn
    return None


_facts: dict = {}


def _fact(key):
    if key not in _facts:
        _facts["spins"] = omp_spins()
        _facts["cpus"] = _cpus()
        _facts["pause"] = _find_pause() if _facts["spins"] else None
    return _facts[key]


def release_torch_pool():
    """Let torch's OpenMP workers exit now rather than spin (``omp_pause_resource_all``
    with ``omp_pause_soft``; torch's next parallel region starts new ones). True when
    done. Acts on the pool of the calling thread, the one that runs torch's ops."""
    fn = _fact("pause")
    return fn is not None and fn(1) == 0


# ----------------------------------------------------------------------------- per step
def plan(numel):
    """(numba's current thread count, threads for this step, release torch's pool)."""
    cur = config._thread_count()
    key = (numel, cur, _threads_seen[0], _policy_key[0])
    got = _cache.get(key)
    if got is None:
        want = _policy["threads"]
        if want != "auto":
            got = (want, False)
        else:
            got = choose(numel, cur, _threads_seen[0] or torch.get_num_threads(),
                         _fact("cpus"), _fact("spins"), short_step=SHORT_STEP,
                         release_step=RELEASE_STEP,
                         can_release=_policy["release"] and _fact("pause") is not None)
        if len(_cache) > 64:
            _cache.clear()
        _cache[key] = got
    return cur, got[0], got[1]


def run(numel, fn, *args):
    """``fn(*args)`` with the thread count :func:`plan` chooses for a step of ``numel``
    elements; numba's count is restored afterwards."""
    cur, threads, release = plan(numel)
    if release:
        release_torch_pool()
    if threads == cur:
        return fn(*args)
    setter = config._set_thread_count      # numba's, settled: plan() read the count
    setter(threads)
    try:
        return fn(*args)
    finally:
        setter(cur)
