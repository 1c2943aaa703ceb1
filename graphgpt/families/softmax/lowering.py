"""causal_softmax and its gradient over (..., T, T) scores (softmax.cu.j2): a warp per row.
"""
from __future__ import annotations

from ...kernels.common import THREADS, WARPS, Kernel, c_float, cdiv, index_type, row_vec, types
from ...ops.registry import prod
from ...target import Target
from ..layernorm.lowering import CACHED_ROW


def lower(launch, target: Target) -> Kernel:
    """A warp per row of the (T, T) score matrices; row i reads only keys j <= i. Rows of up to
    2048 floats stay in registers between the forward's passes."""
    *lead, t = launch.out.shape
    rows, vec = prod(lead), row_vec(t, launch.out, *launch.ins)
    per_lane = cdiv(t // vec, 32)
    return Kernel(launch.op, {**types(launch), "threads": THREADS, "warps": WARPS, "op": launch.op, "rows": rows, "t": t, "vec": vec,
                                 "per_lane": per_lane, "cached": per_lane * vec <= CACHED_ROW,
                                 "scale": c_float(launch.attrs["scale"]),
                                 "itype": index_type(launch.out.shape)},
                  (cdiv(rows, WARPS), 1, 1), (THREADS, 1, 1))
