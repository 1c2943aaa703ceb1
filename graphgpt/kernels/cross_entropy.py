"""cross_entropy, cross_entropy_grad and the two in one launch, cross_entropy_with_grad
(templates/cross_entropy.cu.j2): a warp or a block per row.
"""
from __future__ import annotations

from ..dtypes import DTYPES
from ..ops.registry import prod
from ..target import Target
from .common import THREADS, Kernel, cdiv, index_type, row_vec, types


def lower(launch, target: Target) -> Kernel:
    """A block per row for wide vocabularies, a warp per row for narrow ones."""
    op, logits = launch.op, launch.ins[0]
    v = logits.shape[-1]
    n = prod(logits.shape[:-1])
    grad = launch.outputs[-1] if op != "cross_entropy" else None  # the rows written
    vec = row_vec(v, logits, *([grad] if grad else []))
    per_row = 32 if v // vec <= 32 * 8 else THREADS
    blocks = cdiv(n, THREADS // per_row)
    return Kernel(op, {**types(launch), "threads": THREADS, "op": op, "loss": op != "cross_entropy_grad", "grad": grad is not None,
                       "grad_t": DTYPES[grad.dtype].ctype if grad else None, "n": n, "v": v, "vec": vec,
                       "per_row": per_row, "blocks": blocks, "itype": index_type(logits.shape)},
                  (blocks, 1, 1), (THREADS, 1, 1))
