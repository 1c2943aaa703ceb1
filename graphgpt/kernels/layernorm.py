"""normalize, normalize_grad and fused_normalize_grad (templates/layernorm.cu.j2): a warp per row.
"""
from __future__ import annotations

from ..ops.registry import prod
from .common import THREADS, WARPS, Kernel, c_float, cdiv, index_type, row_vec, types

CACHED_ROW = 64  # floats per lane a warp keeps in registers (2048 per row)


STATS = (2, 3)  # the backward's inputs mean and rstd: one float32 per row, read one at a time


def lower(launch) -> Kernel:
    """A warp per row; rows up to 2048 floats stay in registers between the passes. The vector
    width is that of the rows (the statistics are read and written one per row)."""
    *lead, c = launch["out"][2]
    rows_in = launch["in"] if launch["op"] == "normalize" else \
        [b for i, b in enumerate(launch["in"]) if i not in STATS]
    rows, vec = prod(lead), row_vec(c, launch["out"], *rows_in)
    per_lane = cdiv(c // vec, 32)
    attrs = launch["attrs"]
    return Kernel(launch["op"], {**types(launch), "op": launch["op"], "rows": rows, "c": c, "vec": vec,
                                 "per_lane": per_lane, "scaled": attrs.get("scaled", False),
                                 "accumulate": attrs.get("accumulate", False),
                                 "cached": per_lane * vec <= CACHED_ROW, "eps": c_float(attrs["eps"]),
                                 "itype": index_type(launch["out"][2])},
                  (cdiv(rows, WARPS), 1, 1), (THREADS, 1, 1))
