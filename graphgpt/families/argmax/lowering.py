"""argmax (argmax.cu.j2): a block per row, each thread scanning a strided share of it in
order, then a tree of comparisons that keeps NumPy's choice (the first of equal values).
"""
from __future__ import annotations

from ...kernels.common import THREADS, Kernel, cdiv, index_type, row_vec, types
from ...ops.registry import prod
from ...target import Target


def lower(launch, target: Target) -> Kernel:
    x = launch.ins[0]
    v, limit = x.shape[-1], launch.attrs["limit"]
    vec = row_vec(v, x)
    threads = min(THREADS, cdiv(cdiv(limit, vec), 32) * 32)
    return Kernel("argmax", {**types(launch), "v": v, "limit": limit, "vec": vec, "threads": threads,
                             "itype": index_type(x.shape)},
                  (prod(x.shape[:-1]), 1, 1), (threads, 1, 1))
