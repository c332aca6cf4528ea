"""The optimizer's memory and launches: one state block per parameter dtype (a bucket),
and the kernel launches that step it (one per kernel key among the bucket's groups)."""
from __future__ import annotations

import numpy as np

from ..flat import aligned_zeros, make_plan, merge_contiguous
from ..kernels.launch import (FR_DIMS, FR_DIMS_LEN, FR_EXPECT, FR_EXPECT_ROWS, FR_FORBID,
                              FR_FORBID_ROWS, FR_GREFS, FR_GREFS_LEN, FR_GROUPS, FR_GSCAL,
                              FR_HYPER, FR_PLAN, FR_PLAN_ROWS, FR_STEPS, FRAME_LEN,
                              build_launchers)
from ..kernels.memory import G_DATA, G_REF, LENGTH, PLAN_COLUMNS
from ..kernels.norms import split_blocks
from ..kernels.spec import N_GROUP_SCALARS, N_HYPER, N_SCALARS
from ..kernels.unsafe import Entry


class Bucket:
    """All parameters of one dtype: their state block (rows: the algorithm's state rows,
    then the parameter average when averaging), gradient buffer and scalars scratch."""

    def __init__(self, dtype, members, n_groups, n_rows, average):
        self.dtype = dtype
        self.members = members              # [(flat index, group index, param array)]
        sizes = [p.size for _, _, p in members]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.size = int(self.offsets[-1])
        self.n_rows, self.has_avg = int(n_rows), bool(average)
        self.state = aligned_zeros(self.size, dtype, rows=self.n_rows + self.has_avg)
        self.grad_flat = aligned_zeros(self.size, dtype)
        self.grad_views = [self.grad_flat[o:o + p.size].reshape(p.shape)
                           for o, (_, _, p) in zip(self.offsets, members)]
        self.sc = np.zeros((n_groups, N_SCALARS), dtype=dtype)
        self.groups = sorted({g for _, g, _ in members})
        self.launches = []

    def ensure_rows(self, n_rows):
        """Grow to ``n_rows`` algorithm rows (a group turned amsgrad on): new rows start at
        zero; the average, if any, stays last. Returns whether the block was replaced."""
        if n_rows <= self.n_rows:
            return False
        new = aligned_zeros(self.size, self.dtype, rows=n_rows + self.has_avg)
        new[:self.n_rows] = self.state[:self.n_rows]
        if self.has_avg:
            new[-1] = self.state[-1]
        self.state, self.n_rows = new, n_rows
        return True


class Launch:
    """One kernel launch: the chunks of a bucket's groups that share a kernel key."""

    def __init__(self, bucket, key, group_ids, n_params):
        rows = [i for i, (_, g, _) in enumerate(bucket.members) if g in group_ids]
        self.param_index = [bucket.members[i][0] for i in rows]
        params = [bucket.members[i][2] for i in rows]
        self.size = sum(p.size for p in params)
        self.plan = make_plan(params, bucket.offsets[rows], [bucket.members[i][1] for i in rows])
        self.plan[:, G_REF] = self.param_index     # gradients given as a list: grads[i]
        self.blocks = split_blocks(self.plan[:, LENGTH])
        g_addr = [bucket.grad_views[i].ctypes.data for i in rows]
        self.flat_plan = merge_contiguous(self.plan, g_addr, bucket.dtype.itemsize)
        self.flat_blocks = split_blocks(self.flat_plan[:, LENGTH])
        self.key = key
        kernels = build_launchers(*key)
        self.serial, self.parallel = Entry(kernels[2]), Entry(kernels[3])
        self.framed = Entry(kernels[5])
        #: g_mode -> (frame address, frame, the arrays it addresses): see set_frame
        self.frames = {}

    def set_frame(self, g_mode, plan, grefs, forbid, expect, dims, hyper, steps, gscal):
        """Address these tables through one frame for the serial launch in ``g_mode``
        (launch.table_frame: two arrays for numba to unbox instead of eleven). The frame
        keeps the arrays alive; the optimizer clears its frames whenever it replaces one
        of them. Arrays of unexpected type or layout get no frame (the array path)."""
        arrays = (plan, grefs, forbid, expect, dims, hyper, steps, gscal)
        ng = steps.shape[0] if steps.ndim == 1 else -1
        if not (all(type(a) is np.ndarray and a.flags.c_contiguous for a in arrays)
                and all(a.dtype == np.int64 for a in arrays[:5] + (steps,))
                and hyper.dtype == np.float64 and gscal.dtype == np.float64
                and plan.shape[1:] == (PLAN_COLUMNS,) and grefs.ndim == 1
                and forbid.shape[1:] == (2,) and expect.shape[1:] == (4,) and dims.ndim == 1
                and hyper.shape == (ng, N_HYPER) and gscal.shape == (ng, N_GROUP_SCALARS)):
            self.frames.pop(g_mode, None)
            return
        f = np.zeros(FRAME_LEN, np.int64)
        for (addr, rows), a in zip(((FR_PLAN, FR_PLAN_ROWS), (FR_GREFS, FR_GREFS_LEN),
                                    (FR_FORBID, FR_FORBID_ROWS), (FR_EXPECT, FR_EXPECT_ROWS),
                                    (FR_DIMS, FR_DIMS_LEN)), arrays):
            f[addr], f[rows] = a.ctypes.data, a.shape[0]
        f[FR_HYPER], f[FR_GROUPS] = hyper.ctypes.data, ng
        f[FR_STEPS], f[FR_GSCAL] = steps.ctypes.data, gscal.ctypes.data
        self.frames[g_mode] = (f.ctypes.data, f, arrays)

    def tables(self, g_mode):
        """(plan, blocks): the merged plan over the preallocated opt.grads (G_DATA), or
        the per-array plan whose G_REF indexes the step's list of gradients."""
        if g_mode == G_DATA:
            return self.flat_plan, self.flat_blocks
        return self.plan, self.blocks
