"""How the optimizer's step describes and checks the caller's gradients (a mixin of
:class:`~fastadam.optim.base.Optimizer`; its ``step`` calls these methods directly): the
list itself by object address (G_OBJECTS, the kernel checks the arrays) or their data
addresses after Python checks (G_INDEXED), and the overlap checks against the parameters
and the optimizer's state."""
from __future__ import annotations

import numpy as np

from .. import _checks as C
from ..kernels.memory import G_INDEXED, G_OBJECTS, first_alias
from ..kernels.unsafe import HAVE_OBJECT_GRADS, first_unlike


class GradChecksMixin:
    """The gradient references and checks of :class:`~fastadam.optim.base.Optimizer`
    (reads ``_params``, ``_seq``, ``_expect``, ``_expect_dims``, ``_launches``,
    ``_forbid``)."""

    def _grad_refs(self, grads):
        """(grads, grefs, g_mode, checked) for a list of gradients: the list or tuple
        itself, described to the kernel by its object address in ``_seq`` (G_OBJECTS, see
        unsafe.item_ref; ``checked`` False: the kernel checks the arrays, see
        unsafe.first_unlike; a subclass of list or tuple is copied into a tuple first),
        or, without that shortcut, their data addresses after checking them in Python.
        The caller keeps the returned ``grads`` alive while the kernel runs."""
        kind = type(grads)
        if kind is not list and kind is not tuple:
            if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
                raise TypeError("grads must be a list of arrays, one per parameter, got "
                                f"{type(grads).__name__}")
            grads, kind = tuple(grads), tuple
        n = len(self._params)
        if len(grads) != n:
            raise ValueError(f"grads has {len(grads)} arrays, expected {n} "
                             "(one per parameter, in param_groups order)")
        if HAVE_OBJECT_GRADS:
            seq = self._seq      # the step holds the lock: one per optimizer suffices
            seq[0] = id(grads)
            return grads, seq, G_OBJECTS, False
        return grads, self._data_refs(grads, 0), G_INDEXED, True

    def _checked_refs(self, grads, grefs, g_mode, checked):
        """(grefs, g_mode) of _grad_refs' gradients once their types, dtypes, shapes and
        layout are checked (compiled first_unlike, then Python from the first it did not
        accept) and none overlaps a parameter or the optimizer's state."""
        if not checked:
            first = first_unlike(grefs, self._expect, self._expect_dims)
            if first >= 0:
                grefs, g_mode = self._data_refs(grads, first), G_INDEXED
        self._check_aliasing(grefs, g_mode)
        return grefs, g_mode

    def _data_refs(self, grads, start):
        """Check grads[start:] in Python (grads[:start] passed already); their data
        addresses."""
        nd = np.ndarray
        params = self._params
        for i in range(start, len(params)):
            g, p = grads[i], params[i]
            if not (type(g) is nd and g.dtype is p.dtype and g.shape == p.shape
                    and g.flags.c_contiguous):
                C.check_array(f"grads[{i}]", g, writable=False, dtype=p.dtype, shape=p.shape)
        return np.array([g.ctypes.data for g in grads], dtype=np.int64)

    @staticmethod
    def _alias_error(L, bad):
        raise ValueError(f"grads[{L.param_index[bad]}] shares memory with a parameter or "
                         "the optimizer's state; pass a separate gradient array")

    def _check_aliasing(self, grefs, g_mode):
        for b, L in self._launches:
            plan, _ = L.tables(g_mode)
            bad = first_alias(plan, grefs, g_mode, self._forbid, b.dtype.itemsize)
            if bad >= 0:
                self._alias_error(L, bad)
