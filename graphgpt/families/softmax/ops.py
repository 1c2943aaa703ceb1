"""The causal softmax of explicit attention scores and its backward: the softmax kernel family."""
from __future__ import annotations

from ...ops.registry import BACKWARD_ONLY, Op, register, require, same


# ---- causal softmax: softmax(scale * x) over the last axis, key j > query i masked out --------
def _square(attrs, x, *rest):
    same(attrs, x, *rest)
    require(len(x.shape) >= 2 and x.shape[-1] == x.shape[-2], f"needs (..., T, T) scores, got {x.shape}")
    return x


register(Op("causal_softmax", "nn", _square,
            vjp=lambda a, g, out, x: (g.graph.add("causal_softmax_grad", (out, g), scale=a["scale"]),),
            template="softmax", remat_root="attention"))
register(Op("causal_softmax_grad", "nn", _square,
            nondiff=BACKWARD_ONLY, template="softmax"))
