"""rotary (rotary.cu.j2): a thread per `vec` consecutive pairs (i, i + D/2) of one row."""
from __future__ import annotations

from ...kernels.common import Kernel, index_type, row_vec, streaming, types
from ...ops.registry import prod
from ...target import Target


def lower(launch, target: Target) -> Kernel:
    out, (x, cos, sin, *position) = launch.out, launch.ins
    _, t, heads, d = x.shape
    half, pairs = d // 2, prod(x.shape) // 2
    vec = row_vec(half, out, x, cos, sin)  # a vector stays in its half-row, aligned in all four
    grid, block = streaming(pairs // vec)
    return Kernel("rotary", {**types(launch), "pairs": pairs, "half": half, "heads": heads, "t": t, "vec": vec,
                             "threads": block[0], "inverse": launch.attrs["inverse"], "positioned": bool(position),
                             "itype": index_type(out.shape)}, grid, block)
