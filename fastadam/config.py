"""Runtime configuration: threads, threading layer, parallel threshold, cache, numba flags.

One place for every knob that changes how kernels are compiled or launched.

``import fastadam`` does not touch numba's threading configuration. The first time
fastadam needs a parallel launch (a buffer of at least ``PARALLEL_THRESHOLD`` elements),
or is asked about threads, :func:`ensure_threading` settles numba's threading layer once:

* ``tbb`` when the TBB runtime can be loaded (a pip-installed libtbb is loaded by full
  path first, since the dynamic loader does not search ``<prefix>/lib``): thread-safe
  and fork-safe.
* otherwise ``workqueue``, with a process-wide lock around parallel launches, because
  that layer aborts the process when two Python threads launch kernels at once; a
  :class:`SlowThreadingLayerWarning` says so, once. (tbb is a core dependency wherever
  PyPI has wheels for it, so this is the case only on other platforms.)

``omp`` is never chosen by us (not fork-safe, and slow when the cores are busy). A layer
the user chose (``NUMBA_THREADING_LAYER``, ``numba.config.THREADING_LAYER``, or numba's
pool already started by other code) is honoured: launches are serialised unless it is
tbb, and with omp forked children run serially. See docs/threading.md.

Kernels are compiled with ``cache=True``. Numba caches them in the package's
``kernels/__pycache__``; when that is not writable (a read-only install) numba itself
falls back to the user-wide cache (``$XDG_CACHE_HOME/numba`` or ``~/.cache/numba``), and
when that is not writable either (numba would then fail to import our kernels) we point
``numba.config.CACHE_DIR`` at ``<tempdir>/fastadam-numba-cache-<uid>``. A user's
``NUMBA_CACHE_DIR`` always wins. :func:`cache_dir` says where the kernels are cached.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import sys
import tempfile
import threading

import numba
import numpy as np

def _env_int(name: str, default: int, minimum: int = 0) -> int:
    """Integer from environment variable ``name`` (accepts 1e5), else ``default``; a bad
    value warns and is ignored rather than making ``import fastadam`` fail."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text))
        if value < minimum:
            raise ValueError
        return value
    except (ValueError, OverflowError):
        import warnings
        warnings.warn(f"{name}={text!r} is not an integer >= {minimum}; using {default}",
                      RuntimeWarning, stacklevel=2)
        return default


#: Buffers with fewer elements than this run the serial kernel: a parallel launch costs
#: microseconds (tbb ~3 us here for one block, more for a real two-thread fork/join;
#: workqueue ~35 us), more than the work it would split. Measured with
#: ``scripts/tune_threshold.py`` on an idle 2-core Zen 4 (tbb): parallel wins from 49152
#: elements in float32 (flat and table kernels) and from 16384-24576 in float64, i.e.
#: from ~192 KiB of parameters in both. Elements, not bytes: one value, the float32
#: crossover (the common dtype; float64 between 24576 and 49152 runs serially, up to
#: 1.3x slower than it could). Re-measure on your machine with that script; override
#: with the environment variable FASTADAM_PARALLEL_THRESHOLD.
PARALLEL_THRESHOLD = _env_int("FASTADAM_PARALLEL_THRESHOLD", 49152)

#: Elements per parallel work item. 16384 float32 = 64 KiB per stream: large enough to
#: amortise scheduling, small enough to balance two threads on 1e5-element buffers.
BLOCK = 16384

#: Options shared by every kernel. error_model="numpy" lets LLVM vectorise division and
#: sqrt (no ZeroDivisionError branch); no fastmath, so NaN/inf behave as IEEE says.
JIT_OPTIONS = dict(nogil=True, cache=True, error_model="numpy",
                   boundscheck=False)


def _writable_dir(path: str) -> bool:
    """Whether numba could cache into ``path`` (the same test numba's locators make)."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _choose_cache_dir() -> str:
    """Where numba will cache fastadam's kernels; sets numba.config.CACHE_DIR only when
    neither the package's __pycache__ nor numba's user-wide cache is writable."""
    if numba.config.CACHE_DIR:                 # NUMBA_CACHE_DIR: the user's choice
        return numba.config.CACHE_DIR
    in_tree = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "__pycache__")
    if _writable_dir(in_tree):
        return in_tree
    from numba.misc.appdirs import AppDirs
    user_wide = AppDirs(appname="numba", appauthor=False).user_cache_dir
    if _writable_dir(user_wide):
        return user_wide                       # numba's own fallback (UserWideCacheLocator)
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    fallback = os.path.join(tempfile.gettempdir(), f"fastadam-numba-cache-{uid}")
    if _writable_dir(fallback):
        numba.config.CACHE_DIR = fallback
        return fallback
    return ""                                  # nowhere to cache: numba raises on import


_CACHE_DIR: str = _choose_cache_dir()


def cache_dir() -> str:
    """The directory numba caches fastadam's compiled kernels in ("" when none)."""
    return _CACHE_DIR


def _tbb_library_dirs():
    """Where a pip-installed TBB puts its shared library: ``<prefix>/lib`` (Linux, macOS)
    or ``<prefix>/Library/bin`` (Windows), for the interpreter's prefixes, a conda
    environment and the user scheme (``pip install --user``)."""
    import site
    prefixes = [sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX", "")]
    try:
        prefixes.append(site.getuserbase())
    except Exception:  # noqa: BLE001 - site may be stubbed out in embedded interpreters
        pass
    seen = []
    for prefix in prefixes:
        for sub in (("lib",), ("Library", "bin")):
            d = os.path.join(prefix, *sub) if prefix else ""
            if d and d not in seen and os.path.isdir(d):
                seen.append(d)
    return seen


#: File names of the TBB runtime numba's tbb layer links against (ABI 12: oneTBB 2021+).
_TBB_PATTERNS = ("libtbb.so.12*", "libtbb.12*.dylib", "tbb12.dll")


def _load_tbb() -> bool:
    """Make numba's tbb layer loadable. pip puts libtbb in <prefix>/lib, which the dynamic
    loader does not search, so load it globally (by full path) before numba's first
    launch. Returns whether numba's tbb layer can now be imported."""
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401  (succeeds when libtbb resolves)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not loadable this way"
        pass
    for d in _tbb_library_dirs():
        for pattern in _TBB_PATTERNS:
            for lib in sorted(glob.glob(os.path.join(d, pattern))):
                try:
                    if os.name == "nt" and hasattr(os, "add_dll_directory"):
                        os.add_dll_directory(d)
                    ctypes.CDLL(lib, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
                    from numba.np.ufunc import tbbpool  # noqa: F401,F811
                    return True
                except Exception:  # noqa: BLE001
                    continue
    return False


# ---------------------------------------------------------------- threading layer, lazily
# Nothing below runs at import: ``import fastadam`` leaves numba's configuration alone.
# The first time fastadam needs a parallel launch (or is asked about threads),
# ensure_threading() settles the layer once:
#
# * numba's pool already running (the user's own parallel code ran first): use its layer.
# * NUMBA_THREADING_LAYER / numba.config.THREADING_LAYER set to anything but "default":
#   the user's choice, honoured (libtbb is made loadable if the choice may pick tbb).
# * otherwise tbb when its runtime can be loaded, else workqueue (never omp: it is not
#   fork-safe and its spinning threads slow down by 10x and more on busy cores), and
#   numba.config.THREADING_LAYER is set to that name.
#
# Layers that are not thread-safe get a process-wide lock around parallel launches.

class SlowThreadingLayerWarning(RuntimeWarning):
    """Issued once, at the first parallel launch, when TBB could not be loaded and
    fastadam fell back to a slower threading layer the user did not choose."""


_layer = None          # the layer in use, once ensure_threading() has run
_user_chose = False    # whether the user chose the layer (no warning then)
_state_lock = threading.Lock()
# Serialise parallel launches for layers that are not thread-safe (None: no lock needed).
_launch_lock = None
# GNU OpenMP deadlocks in forked children; after a fork run everything serially.
_forked_child = False
# The calling thread's numba thread count, read once the pool runs (see _settle_threading),
# and its setter for a valid count (numba's own checks skipped once the pool runs; used
# by fastadam.torch around a step it runs with another count: ~1 us against ~2.4 us for
# numba.set_num_threads).
_thread_count = numba.get_num_threads
_set_thread_count = numba.set_num_threads


def _requested_layer() -> str:
    """The layer the user asked numba for ("default" when none)."""
    env = os.environ.get("NUMBA_THREADING_LAYER", "").strip().lower()
    cfg = str(getattr(numba.config, "THREADING_LAYER", "default") or "default").lower()
    return cfg if cfg != "default" else (env or "default")


def _settle_threading() -> str:
    global _layer, _user_chose, _launch_lock, _thread_count, _set_thread_count
    from numba.np.ufunc import parallel as numba_parallel
    if numba_parallel._is_initialized:                  # someone launched before us
        _user_chose = True
    else:
        requested = _requested_layer()
        _user_chose = requested != "default"
        if requested in ("default", "tbb", "safe", "threadsafe", "forksafe"):
            have_tbb = _load_tbb()
        else:
            have_tbb = False
        if not _user_chose:
            numba.config.THREADING_LAYER = "tbb" if have_tbb else "workqueue"
        numba_parallel._launch_threads()                # raises if the choice cannot load
    layer = numba.threading_layer()
    _launch_lock = threading.Lock() if layer != "tbb" else None
    # numba.get_num_threads() re-enters numba's pool start-up (a process-wide lock) on
    # every call: 4.7-5.5 us measured here (2 busy cores), paid by every parallel launch.
    # Once the pool runs, it ends in numba's own getter of the calling thread's count,
    # which we call directly: use_parallel(1e6) 6.3 -> 1.2 us in the same run. A private
    # numba name, so only when present, and not with FASTADAM_PORTABLE=1.
    from .kernels.unsafe import PORTABLE          # shortcut 4 of kernels/unsafe.py
    direct = getattr(numba_parallel, "_get_num_threads", None)
    direct_set = getattr(numba_parallel, "_set_num_threads", None)
    if callable(direct) and callable(direct_set) and not PORTABLE:
        _thread_count, _set_thread_count = direct, direct_set
    _layer = layer
    if layer != "tbb" and not _user_chose:
        import warnings
        warnings.warn(
            f"fastadam: numba's tbb threading layer is not available (no TBB runtime "
            f"found; `pip install tbb` where wheels exist), so parallel steps run on "
            f"{layer!r}: each parallel launch costs ~30 us more (steps of 1e5 float32 "
            f"parameters 2-4x slower) and concurrent steps from several Python threads "
            f"take turns. Set NUMBA_THREADING_LAYER to choose a layer and silence this "
            f"warning; see docs/threading.md.", SlowThreadingLayerWarning, stacklevel=4)
    return layer


def ensure_threading() -> str:
    """Settle numba's threading layer for fastadam (once; later calls return at once) and
    return its name. Called by every parallel launch and thread control."""
    if _layer is not None:
        return _layer
    with _state_lock:
        if _layer is not None:
            return _layer
        return _settle_threading()


def _after_fork_in_child() -> None:
    global _forked_child, _launch_lock
    _forked_child = _layer is not None and _layer not in ("tbb", "workqueue")
    if _launch_lock is not None:
        _launch_lock = threading.Lock()  # a lock held by a parent thread is gone


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def launch_lock():
    """Context manager guarding a parallel launch (a no-op under tbb). Valid after
    :func:`use_parallel` returned True."""
    return _launch_lock if _launch_lock is not None else contextlib.nullcontext()


def use_parallel(n: int) -> bool:
    """Whether a buffer of ``n`` elements should run the parallel kernel. Settles the
    threading layer on the first call that says yes (see :func:`ensure_threading`)."""
    if n < PARALLEL_THRESHOLD or _forked_child:
        return False
    if _layer is None:
        ensure_threading()
        if _forked_child:
            return False
    return _thread_count() > 1


def threading_layer() -> str:
    """The threading layer fastadam's parallel kernels run on (settles it, see
    :func:`ensure_threading`)."""
    return ensure_threading()


def get_num_threads() -> int:
    """Threads a parallel kernel uses."""
    ensure_threading()
    return numba.get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the number of threads parallel kernels use (1 <= n <= numba.config.NUMBA_NUM_THREADS).

    Results are bit-identical for any thread count: each element is updated by one
    thread with the same arithmetic."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    ensure_threading()
    n = int(n)
    hi = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= hi:
        raise ValueError(f"n must be between 1 and {hi} (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(n)


@contextlib.contextmanager
def threads(n: int):
    """``with fastadam.threads(1): ...`` runs the block with ``n`` threads, then restores
    the previous count, even when the block raises."""
    ensure_threading()
    old = numba.get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)
