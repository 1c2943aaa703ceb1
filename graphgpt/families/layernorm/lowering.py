"""The row normalisers (layernorm.cu.j2), a warp per row: LayerNorm's normalize,
fused_normalize, normalize_grad and fused_normalize_grad, and RMSNorm's uncentred forms of the
same four (rms_normalize, ...), whose one statistic is rstd.
"""
from __future__ import annotations

from ...dtypes import DTYPES
from ...kernels.common import THREADS, WARPS, Kernel, c_float, cdiv, index_type, row_vec, types
from ...ops.registry import prod
from ...target import Target
from ..elementwise.lowering import steps

CACHED_ROW = 64  # floats per lane a warp keeps in registers (2048 per row)

FORWARD = ("normalize", "fused_normalize", "rms_normalize", "fused_rms_normalize")
CHAINED = ("fused_normalize", "fused_rms_normalize")  # the forward with its chain: its last output
UNCENTRED = ("rms_normalize", "fused_rms_normalize", "rms_normalize_grad", "fused_rms_normalize_grad")


def lower(launch, target: Target) -> Kernel:
    """A warp per row; rows up to 2048 floats stay in registers between the passes. The vector
    width is that of the rows (the statistics are read and written one per row)."""
    *lead, c = launch.out.shape
    op = launch.op
    forward, centred = op in FORWARD, op not in UNCENTRED
    n_stats = 2 if centred else 1  # mean and rstd, or rstd: the backward's inputs 2.., one float32 per row
    stats = range(2, 2 + n_stats)
    rows_in = [b for i, b in enumerate(launch.ins) if (prod(b.shape) > 1 if forward else i not in stats)]
    chained = launch.outputs[1 + n_stats:]  # fused_(rms_)normalize: the chain's result
    rows, vec = prod(lead), row_vec(c, launch.out, *chained, *rows_in)
    per_lane = cdiv(c // vec, 32)
    attrs = launch.attrs
    chain = {}
    if op in CHAINED:  # operand j + 1 of the chain is input j + 1: a column vector or a scalar
        chain = {"steps": steps(launch), "y_t": DTYPES[chained[0].dtype].ctype,
                 "operands": ["scalar" if prod(b.shape) == 1 else "column" for b in launch.ins[1:]]}
    return Kernel(op, {**types(launch), **chain, "threads": THREADS, "warps": WARPS, "op": op, "forward": forward, "chained": op in CHAINED,
                       "centred": centred, "gamma_at": 2 + n_stats, "rows": rows, "c": c, "vec": vec,
                       "per_lane": per_lane, "scaled": attrs.get("scaled", False),
                       "accumulate": attrs.get("accumulate", False),
                       "cached": per_lane * vec <= CACHED_ROW, "eps": c_float(attrs["eps"]),
                       "itype": index_type(launch.out.shape)},
                  (cdiv(rows, WARPS), 1, 1), (THREADS, 1, 1))
