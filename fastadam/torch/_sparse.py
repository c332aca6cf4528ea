"""torch.optim.SparseAdam's twin: one inner fastadam.SparseAdam over every parameter."""
from __future__ import annotations

import torch

import fastadam as fa

from . import _threads
from ._blocks import _Layout, watch_groups
from ._common import (Spec, _fa_value, _share_threads, _threads_seen,
                      increment_version, numpy_view)
from ._frontend import FastadamTorchOptimizer
from ._hooks import hooked


if hasattr(fa, "SparseAdam"):
    class SparseAdam(FastadamTorchOptimizer, torch.optim.SparseAdam):
        __doc__ = ("torch.optim.SparseAdam with fastadam's fused CPU step over the touched "
                   "rows (same arguments, results, state_dict).\n\n"
                   + (torch.optim.SparseAdam.__doc__ or ""))
        _spec = Spec("SparseAdam", ("lr", "betas", "eps", "maximize"),
                     ("exp_avg", "exp_avg_sq"), sparse_grads=True)

        # One inner fastadam.SparseAdam over *every* parameter (it keeps a step count per
        # parameter and takes None for "no gradient"), built once: a changing set of
        # parameters with gradients costs nothing. torch keeps ``state["step"]`` as a
        # Python int here, so it is written after each step for the parameters stepped.

        def step(self, closure=None):
            """One step for every parameter that has a (sparse COO) gradient, as
            torch.optim.SparseAdam: duplicate indices are summed, only the touched rows
            of the parameter and its moments change, the step count advances."""
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if torch.get_num_threads() != _threads_seen[0]:
                _share_threads()
            L = self._layout
            groups = self.param_groups
            if L is None or len(groups) != len(L.group_params) or any(
                    g["params"] is not gp or len(gp) != n
                    for g, gp, n in zip(groups, L.group_params, L.group_lens)) \
                    or [p.data_ptr() for p in L.active] != L.ptrs:
                L = self._rebuild()
            for gi, g in enumerate(groups):
                vals = L.getter(g)
                if vals != L.seen[gi] or gi in L.tensor_groups:
                    if self._push(L, gi, g, vals):
                        L = self._rebuild()
            grads, stepped = [], []
            for j, p in enumerate(L.active):
                g = p.grad
                if g is None:
                    grads.append(None)
                    continue
                grads.append(self._sparse_pair(g, p, L.shapes2[j]))
                stepped.append(j)
            if not stepped:
                return loss
            inner = L.inners[0][0]
            # the dense classes' thread policy (_threads.py), sized by the values stepped
            _threads.run(sum(grads[j][1].size for j in stepped), inner.step, grads)
            if inner.skipped_steps != L.skipped:     # nonfinite policy: nothing changed
                L.skipped = inner.skipped_steps
                return loss
            increment_version([L.active[j] for j in stepped])
            state = self.state
            for j in stepped:
                p = L.active[j]
                st = dict.get(state, p)
                if not st or "exp_avg" not in st or st["exp_avg"] is not L.views[j][0]:
                    st = state[p] = {"step": 0, "exp_avg": L.views[j][0],
                                     "exp_avg_sq": L.views[j][1]}
                st["step"] = inner.param_state(j)[0]
            return loss

        step = hooked(step)

        @staticmethod
        def _sparse_pair(g, p, shape2):
            """(row indices, values) NumPy views of a sparse COO gradient, uncoalesced
            (the kernel sums duplicate rows)."""
            if g.layout != torch.sparse_coo:
                raise RuntimeError("SparseAdam does not support dense gradients, please "
                                   "consider Adam instead")
            if g.dtype != p.dtype or tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"a gradient of dtype {g.dtype} and shape "
                                 f"{tuple(g.shape)} for a parameter of dtype {p.dtype} and "
                                 f"shape {tuple(p.shape)}")
            g = g.detach()
            if g.sparse_dim() != 1:        # sparse along several dims: rows of dim 0
                g = g.coalesce().to_dense().to_sparse(1)
            idx, vals = g._indices()[0], g._values()
            if not vals.is_contiguous():
                vals = vals.contiguous()
            vals = vals.numpy()
            if shape2 is not None:
                vals = vals.reshape(vals.shape[0], shape2[1])
            return idx.numpy(), vals

        def _rebuild(self, have=None):
            spec = self._spec
            groups = self.param_groups
            params, names, gidx = [], [], []
            for gi, g in enumerate(groups):
                self._check_group(g, gi)
                for k, p in enumerate(g["params"]):
                    name = f"param_groups[{gi}]['params'][{k}]"
                    if p.dim() == 0:
                        raise ValueError(f"{name} is 0-d; fastadam.torch.SparseAdam steps "
                                         "parameters with rows (1-D or more)")
                    params.append(p)
                    names.append(name)
                    gidx.append(gi)
            saved = {}
            for i, p in enumerate(params):
                step, arrays = self._read_state(p, names[i], groups[gidx[i]])
                if step or arrays:
                    saved[i] = {"step": step, **{k: a if a.ndim <= 2 else a.reshape(a.shape[0], -1)
                                                for k, a in arrays.items()}}
            shapes2 = [None if p.dim() <= 2 else (p.shape[0], p[0].numel()) for p in params]
            views = [numpy_view(p, n) if s is None else numpy_view(p, n).reshape(s)
                     for p, n, s in zip(params, names, shapes2)]
            fa_groups, index = [], 0
            for g in groups:
                n = len(g["params"])
                fa_groups.append({"params": views[index:index + n],
                                  **{h: _fa_value(h, g[h]) for h in spec.hparams}})
                index += n
            inner = fa.SparseAdam(fa_groups)
            pgroups, index = [], 0
            for g in groups:
                pgroups.append({"params": list(range(index, index + len(g["params"])))})
                index += len(g["params"])
            inner.load_state_dict({"param_groups": pgroups, "state": saved})
            L = _Layout()
            watch_groups(L, groups, self._watched)
            L.cells = {gi: [ig] for gi, ig in enumerate(inner.param_groups)}
            L.inners = [(inner, 0, len(params))]
            L.active = params
            L.ptrs = [p.data_ptr() for p in params]
            L.shapes2 = shapes2
            L.skipped = inner.skipped_steps
            L.views = [tuple(torch.from_numpy(a).view(p.shape)
                             for a in inner.param_state(j)[1:])
                       for j, p in enumerate(params)]
            # publish: self.state[p] holds the inner buffers (parameters that have state)
            for i, p in enumerate(params):
                if i in saved:
                    old = dict.get(self.state, p) or {}
                    new = {"step": saved[i]["step"], "exp_avg": L.views[i][0],
                           "exp_avg_sq": L.views[i][1]}
                    new.update({k: v for k, v in old.items() if k not in new})
                    self.state[p] = new
            self._layout = L
            return L
