"""dropout (dropout.cu.j2): a thread per four elements, one Philox4x32-10 call each.
"""
from __future__ import annotations

from ...kernels.common import THREADS, Kernel, c_float, cdiv, index_type, streaming, types
from ...ops.registry import prod
from ...target import Target
from .reference import drop_threshold, keep_scale


def lower(launch, target: Target) -> Kernel:
    n, attrs = prod(launch.out.shape), launch.attrs
    grid, block = streaming(cdiv(n, 4))
    return Kernel("dropout", {**types(launch), "threads": THREADS, "n": n, "site": attrs["site"], "threshold": drop_threshold(attrs["p"]),
                              "scale": c_float(keep_scale(attrs["p"])), "itype": index_type(launch.out.shape)},
                  grid, block)
