"""torch.optim's step wrapper for the front end's ``step``: step pre/post hooks (per
optimizer, then global) and the profiler's ``record_function``, as torch's own
optimizers run them, without their cost when nothing is registered."""
from __future__ import annotations

import contextlib
import functools
from itertools import chain

import torch
from torch.optim import optimizer as _opt_mod

#: torch's global step hooks (registered with torch.optim.optimizer.register_optimizer_step_
#: pre/post_hook; torch fills these dicts in place)
_GLOBAL_HOOKS = (_opt_mod.__dict__.get("_global_optimizer_pre_hooks", {}),
                 _opt_mod.__dict__.get("_global_optimizer_post_hooks", {}))


def hooked(step):
    """torch.optim's step wrapper (step pre/post hooks, per optimizer then global, and
    the profiler's record_function) with the record_function entered only while a
    profiler runs: it costs ~10 us per step otherwise, on a step that may take 30.
    With no hook registered and no profiler running, the step is called directly."""
    pre, post = _GLOBAL_HOOKS
    enabled = torch.autograd._profiler_enabled

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        if not (pre or post or self._optimizer_step_pre_hooks
                or self._optimizer_step_post_hooks or enabled()):
            out = step(self, *args, **kwargs)
            self._optimizer_step_code()
            return out
        ctx = (torch.autograd.profiler.record_function(
            f"Optimizer.step#{type(self).__name__}.step")
            if enabled() else contextlib.nullcontext())
        with ctx:
            for hook in chain(pre.values(), self._optimizer_step_pre_hooks.values()):
                result = hook(self, args, kwargs)
                if result is not None:
                    if isinstance(result, tuple) and len(result) == 2:
                        args, kwargs = result
                    else:
                        raise RuntimeError(f"{step} must return None or a tuple of "
                                           f"(new_args, new_kwargs), but got {result}.")
            out = step(self, *args, **kwargs)
            self._optimizer_step_code()
            for hook in chain(self._optimizer_step_post_hooks.values(), post.values()):
                hook(self, args, kwargs)
            return out
    wrapper.hooked = True            # torch's _patch_step_function leaves it alone
    return wrapper
