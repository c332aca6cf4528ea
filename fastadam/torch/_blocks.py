"""The inner fastadam optimizers of a torch front-end optimizer, and how they follow a
changing set of parameters with gradients.

Parameters live in *blocks*: each block holds the inner optimizers over a set of
parameters that (so far) always had gradients together, and a step runs the blocks of
the current set. A set seen before costs a dict lookup (``_use_pattern``); a new one
splits the blocks it cuts (``switch``). ``rebuild`` starts over from ``opt.state``."""
from __future__ import annotations

import operator

import numpy as np
import torch

import fastadam as fa

from ._common import LOW_PRECISION, _fa_value, _flatten, _scalar_dtype, numpy_view

PRECISION_KEYS = ("master", "compensation")


# ----------------------------------------------------------------------------- layout
class _Layout:
    """The inner optimizers for one active set, and what the fast path needs."""

    __slots__ = ("group_params", "group_lens", "active", "active_ids", "inactive", "ptrs",
                 "inners", "single", "cells", "seen", "getter", "tensor_groups", "step_nps",
                 "gs_rows", "shapes2", "skipped", "views", "params", "gidx", "names",
                 "all_ptrs", "blocks", "block_of", "patterns", "numel", "by_addr", "gdtypes",
                 "gnumels")


class _Block:
    """Inner optimizers over a set of parameters that (so far) always had gradients
    together."""

    __slots__ = ("cells", "inners", "order", "active", "gs_buf", "gs_rows", "step_buf",
                 "step_np")


_MAX_BLOCKS = 16


def _tensor(a):
    """A torch tensor sharing the memory of NumPy array ``a`` (ml_dtypes.bfloat16 as
    torch.bfloat16: a bfloat16 compensation buffer)."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _copy_group_scalars(gs_rows):
    """Publish the inner optimizers' group scalars (NAdam's mu_product, advanced by the
    kernel) into the per-parameter 0-d tensors of ``self.state``."""
    for inner, dst, rows, keys in gs_rows:
        live = inner.group_scalars
        for c, k in enumerate(keys):
            dst[:, c] = live[k][rows]


def _collect_cells(S):
    S.cells = {gi: [ig for b in S.blocks for ig in b.cells[gi]]
               for gi in range(len(S.group_params))}


def _use_pattern(S, key):
    """Point the layout's step fields at the blocks of pattern ``key`` (grad presence
    per parameter), computing them on first use."""
    P = S.patterns.get(key)
    if P is None:
        blocks = [b for b in S.blocks if b.order and key[b.order[0]]]
        active, inners, step_nps, gs_rows = [], [], [], []
        for b in blocks:
            off = len(active)
            inners.extend((inner, lo + off, hi + off) for inner, lo, hi in b.inners)
            active.extend(b.active)
            step_nps.append(b.step_np)
            gs_rows.extend(b.gs_rows)
        ids = {id(p) for p in active}
        P = (active, ids, [p for p in S.params if id(p) not in ids], inners, step_nps, gs_rows)
        S.patterns[key] = P
    S.active, S.active_ids, S.inactive, S.inners, S.step_nps, S.gs_rows = P
    S.single = len(S.inners) == 1
    S.ptrs = [p.data_ptr() for p in S.active]
    # one fastadam optimizer over float32/float64 tensors: gradients by data address
    S.by_addr = S.single and isinstance(S.inners[0][0], fa.optim.base.Optimizer) \
        and all(p.dtype not in LOW_PRECISION for p in S.active)
    S.gdtypes = [p.dtype for p in S.active]
    S.gnumels = [p.numel() for p in S.active]
    S.numel = sum(p.numel() for p in S.active)      # decides the step's threads


def watch_groups(L, groups, watched):
    """Set layout ``L``'s view of ``groups``: their params lists and lengths, the getter
    of the ``watched`` keys, the values seen and the groups holding a tensor value
    (pushed at every step)."""
    L.group_params = [g["params"] for g in groups]
    L.group_lens = [len(g["params"]) for g in groups]
    L.getter = operator.itemgetter(*watched)
    L.seen = [L.getter(g) for g in groups]
    L.tensor_groups = {gi for gi, v in enumerate(L.seen)
                       if any(isinstance(x, torch.Tensor) for x in _flatten(v))}


def rebuild(opt, have=None):
    """A fresh layout: one block (inner optimizers) over the parameters with gradients
    (or ``have``), every parameter's state read from ``opt.state``."""
    params, gidx, names = opt._all_params()
    groups = opt.param_groups
    if have is None:
        have = [p.grad is not None for p in params]
    S = _Layout()
    S.params, S.gidx, S.names = params, gidx, names
    S.all_ptrs = [p.data_ptr() for p in params]
    watch_groups(S, groups, opt._watched)
    S.blocks, S.block_of, S.patterns = [], [None] * len(params), {}
    block = build_block(opt, S, [i for i in range(len(params)) if have[i]])
    S.blocks.append(block)
    for i in block.order:
        S.block_of[i] = block
    _collect_cells(S)
    # parameters outside every block keep a copy of their state (not views that would
    # keep a previous layout's buffers alive)
    old = opt._layout
    if old is not None and getattr(old, "blocks", None):
        old_ids = {id(p) for b in old.blocks for p in b.active}
        for i, p in enumerate(params):
            st = dict.get(opt.state, p)
            if S.block_of[i] is None and st and id(p) in old_ids:
                opt.state[p] = {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                 for k, v in st.items()}
    opt._layout = S
    _use_pattern(S, tuple(have))
    return S

def switch(opt, have):
    """The set of parameters with gradients changed (memory and groups did not).
    Parameters live in *blocks*, each with its own inner optimizers and state, and a
    step runs the blocks whose parameters have gradients. A pattern seen before costs
    a dict lookup; a new one splits the blocks it cuts through (their state is copied
    once into the two halves) and builds a block for parameters never stepped."""
    S = opt._layout
    key = tuple(have)
    if key in S.patterns:
        _use_pattern(S, key)
        return S
    blocks, changed = [], False
    for b in S.blocks:
        on = [i for i in b.order if have[i]]
        if on and len(on) < len(b.order):
            changed = True
            off = [i for i in b.order if not have[i]]
            blocks.append(build_block(opt, S, on))
            blocks.append(build_block(opt, S, off))
        else:
            blocks.append(b)
    new = [i for i, h in enumerate(have) if h and S.block_of[i] is None]
    if new:
        blocks.append(build_block(opt, S, new))
    if len(blocks) > _MAX_BLOCKS:          # patterns too varied: one launch per block
        return opt._rebuild(have)         # would cost more than an occasional rebuild
    S.blocks = blocks
    for b in blocks:
        for i in b.order:
            S.block_of[i] = b
    if changed:
        S.patterns.clear()
    _collect_cells(S)
    # the hyperparameters pushed so far apply to the new blocks too (they were read
    # from opt.param_groups by _build_block)
    _use_pattern(S, key)
    return S

def build_block(opt, S, idx):
    """Inner optimizer(s) over parameters ``idx`` (indices into ``S.params``), their
    state read from ``opt.state`` and then published there as views of the inner
    buffers."""
    spec = opt._spec
    groups = opt.param_groups
    params, gidx, names = S.params, S.gidx, S.names
    # ---- read all state first: nothing changes if anything is invalid
    cells, steps, saved = {}, {}, {}
    for i in idx:
        p = params[i]
        step, arrays = opt._read_state(p, names[i], groups[gidx[i]])
        steps[i], saved[i] = step, arrays
        # parameters share an inner group when they share step count and group
        # scalars (NAdam's mu_product depends on the betas of the steps they took)
        scal = tuple(arrays.get(k) for k in spec.scalar_keys) if step else ()
        cls_name = spec.fa_class_name(groups[gidx[i]])
        if p.dtype in LOW_PRECISION:
            cls_name = "lowp:" + cls_name
        key = (cls_name, gidx[i], step, scal)
        cells.setdefault(key, []).append(i)
    B = _Block()
    B.cells = {gi: [] for gi in range(len(groups))}
    B.inners, order = [], []
    sdt = _scalar_dtype()
    for cls_name in dict.fromkeys(k[0] for k in sorted(cells, key=lambda k: (k[1], k[2]))):
        keys = sorted((k for k in cells if k[0] == cls_name), key=lambda k: (k[1], k[2]))
        fa_groups, members = [], []
        for k in keys:
            g = groups[k[1]]
            hp = {h: _fa_value(h, g[h])
                  for h in spec.hparams + tuple(spec.optional_state.values())}
            if cls_name.startswith("lowp:"):
                hp.update(opt._lowp_resolved())
            fa_groups.append({"params": [numpy_view(params[i], names[i]) for i in cells[k]],
                              **hp})
            members.extend(cells[k])
        if cls_name.startswith("lowp:"):
            from ._lowp import LowpInner, LowpInnerNR
            if cls_name in ("lowp:NAdam", "lowp:RAdam"):
                inner = LowpInnerNR(fa_groups, cls_name[5:].lower())
            else:
                inner = LowpInner(fa_groups, decoupled=cls_name == "lowp:AdamW")
        else:
            inner = getattr(fa, cls_name)(fa_groups)
        index, pgroups = 0, []
        for g in fa_groups:                  # hyperparameters: the groups' own
            pgroups.append({"params": list(range(index, index + len(g["params"])))})
            index += len(g["params"])
        inner.load_state_dict({"param_groups": pgroups, "state": {
            j: {"step": steps[i], **saved[i]} for j, i in enumerate(members)}})
        for k, ig in zip(keys, inner.param_groups):
            B.cells[k[1]].append(ig)
        B.inners.append((inner, len(order), len(order) + len(members)))
        order.extend(members)
    B.order = order
    B.active = [params[i] for i in order]
    nsc = len(spec.scalar_keys)
    B.gs_buf = torch.zeros((len(order), nsc), dtype=sdt)
    gs_np = B.gs_buf.numpy()
    B.gs_rows = []
    if nsc:
        for inner, lo, hi in B.inners:
            rows = [gi for gi, g in enumerate(inner.param_groups) for _ in g["params"]]
            B.gs_rows.append((inner, gs_np[lo:hi], np.array(rows, dtype=np.intp),
                              spec.scalar_keys))
        _copy_group_scalars(B.gs_rows)
    B.step_buf = torch.tensor([float(steps[i]) for i in order], dtype=sdt)
    B.step_np = B.step_buf.numpy()       # bumped in place after each step
    # ---- publish: opt.state[p] now holds the inner buffers
    for inner, lo, hi in B.inners:
        ist = opt._inner_states(inner)
        for j in range(hi - lo):
            i = order[lo + j]
            p = params[i]
            g = groups[gidx[i]]
            new = {"step": B.step_buf[lo + j]}
            arrays = opt._inner_state(inner, ist, j)
            extra = tuple(k for k in PRECISION_KEYS if k in arrays) \
                if p.dtype in LOW_PRECISION else ()
            for key in spec.state_keys + tuple(k for k, flag in spec.optional_state.items()
                                               if g.get(flag)) + extra:
                if key in spec.scalar_keys:
                    new[key] = B.gs_buf[lo + j, spec.scalar_keys.index(key)]
                else:
                    new[key] = _tensor(arrays[key]).view(p.shape)
            old = dict.get(opt.state, p) or {}
            drop = PRECISION_KEYS if p.dtype in LOW_PRECISION else ()   # a mode left
            new.update({k: v for k, v in old.items() if k not in new and k not in drop})
            opt.state[p] = new
    return B
