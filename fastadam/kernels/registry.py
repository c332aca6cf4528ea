"""The registry of algorithms, and the compile-time dispatch to their numba functions.

``ALGORITHMS`` maps a name ("adam", "adamw", "adamax", "nadam", "radam",
"sparse_adam") to its
:class:`~fastadam.kernels.spec.Algorithm`; an algorithm's ``id`` is its position. The
launchers call ``alg_scalars`` / ``alg_advance`` / ``alg_consts`` / ``alg_element`` with
the id as a compile-time constant, and numba resolves each call to that algorithm's own
function at compile time (an ``@overload`` keyed on the literal id), so the compiled loop
is the algorithm's update with nothing in between.

Adding an algorithm: write ``kernels/<name>.py`` ending in ``ALGORITHMS = (...)`` and add
the module to ``_MODULES`` below.
"""
from __future__ import annotations

import dataclasses

from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload

from ..config import JIT_OPTIONS
from . import adam, adamax, nadam, radam, sparse

_MODULES = (adam, adamax, nadam, radam, sparse)

ALGORITHMS = {}
BY_ID = []
for _module in _MODULES:
    for _alg in _module.ALGORITHMS:
        _alg = dataclasses.replace(_alg, id=len(BY_ID))
        ALGORITHMS[_alg.name] = _alg
        BY_ID.append(_alg)


def get(name):
    """The registered algorithm called ``name``."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; registered: "
                         f"{sorted(ALGORITHMS)}") from None


#: Every option name some algorithm serves: a group key among these that the group's
#: algorithm does not serve is refused (other keys, like a scheduler's initial_lr, pass).
KNOWN_OPTIONS = frozenset(o.name for a in BY_ID for o in a.options)


@njit(inline="always", **JIT_OPTIONS)
def _no_advance(h, t, gs):
    pass


def _algorithm(alg):
    if not isinstance(alg, types.IntegerLiteral):
        raise TypingError(f"the algorithm id must be a compile-time constant, got {alg}")
    a = BY_ID[alg.literal_value]
    if a.layout != "dense":
        raise TypingError(f"{a.name} updates rows with kernels of its own, not the shared loop")
    return a


# Stubs: numba replaces each call in compiled code by the overload below.
def alg_scalars(alg, h, t, gs, out):
    raise NotImplementedError("compiled code only")


def alg_advance(alg, h, t, gs):
    raise NotImplementedError("compiled code only")


def alg_consts(alg, sc):
    raise NotImplementedError("compiled code only")


def alg_element(alg, variant, p, g, s0, s1, s2, k):
    raise NotImplementedError("compiled code only")


@overload(alg_scalars, inline="always", jit_options=JIT_OPTIONS)
def _ov_scalars(alg, h, t, gs, out):
    f = _algorithm(alg).scalars

    def impl(alg, h, t, gs, out):
        f(h, t, gs, out)
    return impl


@overload(alg_advance, inline="always", jit_options=JIT_OPTIONS)
def _ov_advance(alg, h, t, gs):
    f = _algorithm(alg).advance or _no_advance

    def impl(alg, h, t, gs):
        f(h, t, gs)
    return impl


@overload(alg_consts, inline="always", jit_options=JIT_OPTIONS)
def _ov_consts(alg, sc):
    f = _algorithm(alg).consts

    def impl(alg, sc):
        return f(sc)
    return impl


@overload(alg_element, inline="always", jit_options=JIT_OPTIONS)
def _ov_element(alg, variant, p, g, s0, s1, s2, k):
    f = _algorithm(alg).element

    def impl(alg, variant, p, g, s0, s1, s2, k):
        return f(variant, p, g, s0, s1, s2, k)
    return impl
