"""Param groups: the dict type that notes its own edits, and their validation (one place,
cached per group signature so that re-validating an unchanged group costs a lookup)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import _checks as C
from ..kernels.registry import KNOWN_OPTIONS
from ..kernels.spec import Option

#: Options every algorithm serves (the algorithm module declares the rest).
SHARED_OPTIONS = (
    Option("lr", 1e-3, C.check_lr),
    Option("weight_decay", 0.0, C.check_weight_decay),
    Option("maximize", False, lambda v, name: C.check_bool(name, v)),
    Option("max_grad_norm", None, C.check_max_grad_norm),
)
_SHARED_NAMES = frozenset(o.name for o in SHARED_OPTIONS)
#: torch's backend switches: meaningless here, dropped from groups for drop-in use.
TORCH_SWITCHES = frozenset({"foreach", "fused", "capturable", "differentiable"})


def normalize_params(params, check_param, existing=()):
    """torch's ``params`` argument -> a list of group dicts (copies) whose "params" are
    lists of checked arrays, torch's backend switches dropped. ``params``: a list of
    arrays or a list of param-group dicts. ``check_param(name, array)`` raises for an
    array the optimizer cannot hold; no array may share memory with another or with
    ``existing`` (arrays already held). Raises TypeError/ValueError naming the culprit."""
    if isinstance(params, np.ndarray):
        raise TypeError("params must be a list of arrays or of param-group dicts, "
                        "not a single array; wrap it: [param]")
    try:
        params = list(params)
    except TypeError:
        raise TypeError("params must be a list of arrays or of param-group dicts, got "
                        f"{type(params).__name__}") from None
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if all(isinstance(p, dict) for p in params):
        groups = [dict(g) for g in params]
    elif any(isinstance(p, dict) for p in params):
        raise TypeError("params must be all arrays or all param-group dicts, not a mix")
    else:
        groups = [{"params": params}]
    named = [(f"params[{i}]", p) for i, p in enumerate(existing)]
    for gi, g in enumerate(groups):
        if "params" not in g:
            raise ValueError(f"param_groups[{gi}] has no 'params' entry")
        ps = g["params"]
        ps = [ps] if isinstance(ps, np.ndarray) else list(ps)
        if not ps:
            raise ValueError(f"param_groups[{gi}]['params'] is empty")
        for pi, p in enumerate(ps):
            named.append((f"param_groups[{gi}]['params'][{pi}]", p))
            check_param(named[-1][0], p)
        for k in TORCH_SWITCHES & set(g):
            del g[k]
        g["params"] = ps
    C.check_no_overlap(named)
    return groups


def validate_groups(groups, group_params, validate):
    """Check ``param_groups`` as edited between steps: still a list of the optimizer's
    groups, each a dict whose "params" list is the one it was built with. Returns
    ``[validate(group, where) for each group]`` (``where``: "param_groups[i]"); raises
    TypeError/ValueError naming the group before anything is modified, so an invalid
    edit makes every step raise the same error until it is undone."""
    if not isinstance(groups, list) or len(groups) != len(group_params):
        raise ValueError("param_groups must stay a list of the optimizer's "
                         f"{len(group_params)} groups (use add_param_group)")
    out = []
    for gi, g in enumerate(groups):
        if not isinstance(g, dict):
            raise TypeError(f"param_groups[{gi}] must be a dict, got {type(g).__name__}")
        if g.get("params") is not group_params[gi]:
            raise ValueError(f"param_groups[{gi}]['params'] was replaced; parameters "
                             "are fixed at construction (use add_param_group)")
        out.append(validate(g, f"param_groups[{gi}]"))
    return out


class ParamGroup(dict):
    """A param group: a plain dict (torch convention) that notes its own edits, so that
    ``step`` re-validates only after a write instead of re-reading every key each step."""

    __slots__ = ("dirty",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dirty = True

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.dirty = True

    def __delitem__(self, key):
        super().__delitem__(key)
        self.dirty = True

    def __ior__(self, other):
        self.update(other)
        return self

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self.dirty = True

    def setdefault(self, key, default=None):
        self.dirty = True
        return super().setdefault(key, default)

    def pop(self, *args):
        self.dirty = True
        return super().pop(*args)

    def popitem(self):
        self.dirty = True
        return super().popitem()

    def clear(self):
        super().clear()
        self.dirty = True

    def __reduce_ex__(self, protocol):
        return (ParamGroup, (dict(self),))


def groups_repr(opt):
    """torch.optim's ``repr`` of an optimizer: its class name, then each param group's
    options (sorted, ``params`` left out)."""
    lines = [f"{type(opt).__name__} ("]
    for i, g in enumerate(opt.param_groups):
        lines.append(f"Parameter Group {i}")
        for k in sorted(g):
            if k != "params":
                lines.append(f"    {k}: {g[k]}")
    return "\n".join(lines) + "\n)"


def _signature(k, v):
    # Types are part of the key: True == 1 must not let maximize=1 pass as a cached bool.
    if type(v) is tuple:
        return (k, tuple, tuple(map(type, v)), v)
    return (k, type(v), v)


class Validator:
    """Checks param groups for one algorithm: every option it serves is present and valid,
    and no option of another algorithm that it cannot serve is set (``amsgrad`` on
    AdaMax). Other keys (a scheduler's ``initial_lr``, a ``name``) are the user's and
    pass. Results are cached per group signature (the last 256)."""

    def __init__(self, algorithm):
        self.algorithm = algorithm
        self.options = tuple(o for o in SHARED_OPTIONS if o.name in algorithm.shared) \
            + tuple(algorithm.options)
        names = {o.name for o in self.options}
        self.foreign = (KNOWN_OPTIONS | _SHARED_NAMES) - names
        self._cache = OrderedDict()

    def defaults(self, given):
        """The defaults dict: every option, from ``given`` or the option's default."""
        return {o.name: given.get(o.name, o.default) for o in self.options}

    def __call__(self, group, where):
        """The normalised option values of ``group`` (a dict); raises TypeError/ValueError
        naming ``where[key]``, writing nothing."""
        try:
            key = tuple(_signature(k, group[k]) for k in sorted(group) if k != "params")
            hit = self._cache.get(key)
        except TypeError:          # an unhashable value (a list of betas): no caching
            key = hit = None
        if hit is not None:
            return hit
        out = {}
        for o in self.options:
            name = f"{where}[{o.name!r}]" if where else o.name
            if o.name not in group:
                raise ValueError(f"{where or 'defaults'} is missing {o.name!r}")
            out[o.name] = o.check(group[o.name], name)
        for k in group:
            if k in self.foreign:
                raise ValueError(f"{where}[{k!r}]: {self.algorithm.name} has no {k!r} option "
                                 f"(it serves {', '.join(o.name for o in self.options)})")
        if key is not None:
            self._cache[key] = out
            if len(self._cache) > 256:
                self._cache.popitem(last=False)
        return out
