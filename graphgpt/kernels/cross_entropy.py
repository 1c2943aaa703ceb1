"""cross_entropy and its gradient (templates/cross_entropy.cu.j2): a warp or a block per row.
"""
from __future__ import annotations

from ..ops.registry import prod
from .common import THREADS, Kernel, cdiv, index_type, row_vec, types


def lower(launch) -> Kernel:
    """A block per row for wide vocabularies, a warp per row for narrow ones."""
    logits = launch["in"][0]
    v = logits[2][-1]
    n = prod(logits[2][:-1])
    written = [launch["out"]] if launch["out"][2] else []  # the grad's rows, not the scalar loss
    vec = row_vec(v, logits, *written)
    per_row = 32 if v // vec <= 32 * 8 else THREADS
    blocks = cdiv(n, THREADS // per_row)
    return Kernel(launch["op"], {**types(launch), "op": launch["op"], "n": n, "v": v, "vec": vec, "per_row": per_row,
                                 "blocks": blocks, "itype": index_type(logits[2])},
                  (blocks, 1, 1), (THREADS, 1, 1))
