"""The greedy next token: the argmax kernel family."""
from __future__ import annotations

from ...ops.registry import Op, Spec, float_spec, register, require


# ---- argmax: the greedy next token ----------------------------------------------------------
# Each row's index of its largest value among its first `limit` columns (the tokenizer's
# vocabulary: a padded one's extra columns are never chosen), the first of equal ones and a NaN
# before any number, as NumPy's argmax: int32. The generation programs give it beside their logits,
# so that a greedy step reads back one id per sequence instead of a row of logits.
def _argmax_infer(attrs, x):
    float_spec(x)
    require(len(x.shape) >= 1 and 1 <= attrs["limit"] <= x.shape[-1],
            f"needs 1 <= limit <= {x.shape[-1] if x.shape else 0} columns, got {attrs['limit']}")
    return Spec(x.shape[:-1], "i32")


register(Op("argmax", "nn", _argmax_infer, nondiff="an index: nothing to differentiate", template="argmax"))
