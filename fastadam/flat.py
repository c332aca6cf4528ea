"""Flat buffers: one aligned allocation holding many arrays, and chunk plans over
separate arrays so that a whole model is stepped in one kernel launch."""
from __future__ import annotations

import numpy as np

from ._checks import data_range
from .kernels.memory import G_REF, GROUP, LENGTH, OFFSET, P_ADDR, PLAN_COLUMNS

#: Alignment in bytes of every buffer fastadam allocates (a cache line, one AVX-512 vector).
ALIGNMENT = 64


def aligned_empty(n, dtype, rows=None):
    """Uninitialised C-contiguous array of ``n`` elements (or ``rows`` x ``n``) whose data
    starts on an ALIGNMENT-byte boundary."""
    dtype = np.dtype(dtype)
    shape = (n,) if rows is None else (rows, n)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned_zeros(n, dtype, rows=None):
    out = aligned_empty(n, dtype, rows)
    out.fill(0)
    return out


def flatten(arrays, dtype=None):
    """Copy ``arrays`` into one aligned, contiguous buffer.

    Returns ``(flat, views)``: ``flat`` is 1-D of the arrays' common dtype (or ``dtype``),
    ``views[i]`` has the shape of ``arrays[i]``, holds its values and lives inside
    ``flat``. Use the views in place of the arrays; an optimizer over them steps the whole
    buffer in one kernel launch.
    """
    arrays = list(arrays)
    if not arrays:
        raise ValueError("arrays must contain at least one array")
    arrs = [np.asarray(a) for a in arrays]
    if dtype is None:
        dtype = np.result_type(*arrs)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"flatten() supports float32 and float64, got dtype {dtype}; "
                        "pass dtype=np.float32 or np.float64 to convert")
    sizes = [a.size for a in arrs]
    flat = aligned_empty(sum(sizes), dtype)
    views, pos = [], 0
    for a, n in zip(arrs, sizes):
        v = flat[pos:pos + n].reshape(a.shape)
        v[...] = a
        views.append(v)
        pos += n
    return flat, views


def forbidden_ranges(arrays):
    """Sorted, merged [start, stop) byte ranges covered by ``arrays`` (int64, k x 2)."""
    spans = sorted(r for r in (data_range(a) for a in arrays) if r[1] > r[0])
    merged = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return np.array(merged, dtype=np.int64).reshape(-1, 2)


def make_plan(params, offsets, groups):
    """Chunk plan (int64, n x 5) for the table kernels: one row per parameter, G_REF
    left for the caller to fill each step."""
    plan = np.zeros((len(params), PLAN_COLUMNS), dtype=np.int64)
    for k, (p, off, grp) in enumerate(zip(params, offsets, groups)):
        plan[k, P_ADDR] = p.ctypes.data
        plan[k, LENGTH] = p.size
        plan[k, OFFSET] = off
        plan[k, GROUP] = grp
    return plan


def merge_contiguous(plan, g_addr, itemsize):
    """Plan with consecutive chunks fused where parameters, gradients and state all
    continue each other in memory and share a group (views of one flat buffer become one
    chunk). ``g_addr``: the gradients' data addresses, stored into G_REF."""
    rows = []
    for k in range(plan.shape[0]):
        row = plan[k].copy()
        row[G_REF] = g_addr[k]
        if rows:
            last = rows[-1]
            nb = last[LENGTH] * itemsize
            if (last[GROUP] == row[GROUP]
                    and last[P_ADDR] + nb == row[P_ADDR]
                    and last[G_REF] + nb == row[G_REF]
                    and last[OFFSET] + last[LENGTH] == row[OFFSET]):
                last[LENGTH] += row[LENGTH]
                continue
        rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(-1, PLAN_COLUMNS)


__all__ = ["flatten", "aligned_empty", "aligned_zeros"]
