"""Gradient norms before the update: per-group clipping (as torch.nn.utils.clip_grad_norm_)
and the non-finite policy ("skip" / "raise"), with one read of the gradients."""
from __future__ import annotations

import math

import numpy as np

from .. import config
from ..kernels.norms import grad_sumsq_parallel, grad_sumsq_serial
from ..kernels.spec import H_CLIP


def _like(b):
    # a 1-D array of the bucket's dtype (low-precision state has no float32 state rows)
    return b.state[0] if b.state.shape[0] else b.grad_flat


def grad_norms(opt, grads, grefs, g_mode, sums=None):
    """Per-group gradient norms (float64 sums in a fixed order), the non-finite policy, and
    this step's clipping factors (hyper[:, H_CLIP]). Returns False when the step is to be
    skipped; raises ValueError (nothing changed) under nonfinite="raise"."""
    sq = opt._norm_sq
    sq[:] = 0.0
    if sums is not None:          # computed by the caller (bfloat16 gradients)
        sq[:] = sums
    for b, L in ([] if sums is not None else opt._launches):
        plan, blocks = L.tables(g_mode)
        if config.use_parallel(L.size):
            with config.launch_lock():
                grad_sumsq_parallel(plan, grefs, g_mode, blocks, _like(b), sq)
        else:
            grad_sumsq_serial(plan, grefs, g_mode, blocks, _like(b), sq)
    norms = [math.sqrt(x) for x in sq.tolist()]      # NaN and inf stay as they are
    bad_groups = [gi for gi, n in enumerate(norms) if not math.isfinite(n)]
    if bad_groups:
        # inf can also be float64 overflow of finite gradients: look at the values.
        arrays = grads if grads is not None else opt.grads
        members = {gi: [i for i in range(len(arrays)) if opt._group_of[i] == gi]
                   for gi in bad_groups}
        bad = [i for gi in bad_groups for i in members[gi]
               if not np.isfinite(arrays[i]).all()]
        opt.last_grad_norms = norms
        if bad and opt.nonfinite == "skip":
            opt.skipped_steps += 1
            return False
        if bad and opt.nonfinite == "raise":
            raise ValueError(f"grads[{min(bad)}] contains NaN or inf; nothing was "
                             "updated (nonfinite='raise')")
        for gi in bad_groups:        # finite but overflowing: rescale by the max
            if not any(i in bad for i in members[gi]):
                amax = max(float(np.abs(arrays[i]).max(initial=0.0)) for i in members[gi])
                s = sum(float(np.sum(np.square(arrays[i] / amax))) for i in members[gi])
                norms[gi] = amax * math.sqrt(s)
    opt.last_grad_norms = norms
    for gi, g in enumerate(opt.param_groups):
        if opt._clipping[gi]:
            n = norms[gi]
            coef = g["max_grad_norm"] / (n + 1e-6) if n == n else 1.0
            opt._hyper[gi, H_CLIP] = min(1.0, coef)
    return True
