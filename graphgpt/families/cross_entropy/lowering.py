"""cross_entropy, cross_entropy_grad and the two in one launch, cross_entropy_with_grad
(cross_entropy.cu.j2): a warp or a block per row. The last also writes the gradient's FP8 copy
where its attrs ask (passes/fp8.py).
"""
from __future__ import annotations

from ...dtypes import DTYPES
from ...kernels.common import THREADS, Kernel, cdiv, index_type, row_vec, types
from ...ops.registry import prod
from ...target import Target
from ..quantize.reference import exponents

# A block that copies its row to shared memory first: two of them an SM, so that one reads while
# the other computes; twice THREADS, since its passes are expf-bound once the row is read once.
STAGED_THREADS = 2 * THREADS
STAGED_BLOCKS = 2
STATIC_SMEM = 1 << 10  # what a block's reductions and the loss's ticket take beside the row (at most)
STAGED_PIECES = 4  # groups a staged row is copied in: a thread sums each as it lands, while the rest are on their way


def staged(v: int, vec: int, dtype: str, target: Target) -> bool:
    """Whether a block's row of v logits goes through shared memory: 16-byte vectors, and room
    for STAGED_BLOCKS rows on an SM."""
    row = v * DTYPES[dtype].bytes
    return vec * DTYPES[dtype].bytes == 16 and STAGED_BLOCKS * (row + STATIC_SMEM) <= target.smem_per_sm


def lower(launch, target: Target) -> Kernel:
    """A block per row for wide vocabularies, its row staged in shared memory where it fits; a
    warp per row for narrow ones."""
    op, logits = launch.op, launch.ins[0]
    v = logits.shape[-1]
    n = prod(logits.shape[:-1])
    # the rows written: the gradient op's one output, or the one-pass op's second (after the loss),
    # followed there by the gradient's FP8 copy and its factor where its attrs ask for them
    outs, fp8 = launch.outputs, launch.attrs.get("fp8_grad")
    grad = None if op == "cross_entropy" else outs[0] if op == "cross_entropy_grad" else outs[1]
    copy = outs[2] if fp8 else None
    vec = row_vec(v, logits, *(b for b in (grad, copy) if b))
    wide = v // vec > 32 * 8
    stage = wide and staged(v, vec, logits.dtype, target)
    threads = STAGED_THREADS if stage else THREADS
    per_row = threads if wide else 32
    blocks = cdiv(n, threads // per_row)
    return Kernel(op, {**types(launch), "threads": threads, "op": op, "loss": op != "cross_entropy_grad", "grad": grad is not None,
                       "grad_t": DTYPES[grad.dtype].ctype if grad else None,
                       "fp8_t": fp8 and DTYPES[fp8].ctype, "exponents": fp8 and exponents(fp8), "n": n, "v": v, "vec": vec,
                       "per_row": per_row, "blocks": blocks, "itype": index_type(logits.shape), "staged": stage, "pieces": STAGED_PIECES,
                       "min_blocks": STAGED_BLOCKS},
                  (blocks, 1, 1), (threads, 1, 1), smem=v * DTYPES[logits.dtype].bytes if stage else 0,
                  helpers=("fp8",) if fp8 else ())
