"""Rotary position embedding: the rotary kernel family."""
from __future__ import annotations

from ...ops.registry import Op, Spec, float_spec, register, require


# ---- rotary position embedding (Hugging Face LLaMA's rotate_half convention) ------------------
# x (B, T, H, D), D even, rotated pair by pair: columns i and i + D/2 (i < D/2) by the angle of the
# position and i, read from two float32 tables (rows: positions; columns: D/2), the compiler's
# constant tensors: out[i] = x[i] cos - x[i + D/2] sin, out[i + D/2] = x[i + D/2] cos + x[i] sin.
# The positions are 0..T-1, or position..position+T-1 with an int32 position input (decoding).
# A rotation's transpose is the rotation the other way, so the VJP is this op with the sine
# negated (attrs["inverse"]). Each element pairs with one D/2 columns away, so it is not an
# elementwise op; each thread reads its pair before writing it, so the output may overwrite x.
def _rotary_infer(attrs, x, cos, sin, *position):
    float_spec(x)
    require(len(x.shape) == 4 and x.shape[-1] % 2 == 0, f"needs (B, T, H, D) with D even, got {x.shape}")
    half = x.shape[-1] // 2
    require(cos == sin and cos.dtype == "f32" and len(cos.shape) == 2 and cos.shape[1] == half,
            f"the cos and sin tables {cos.shape}:{cos.dtype} and {sin.shape}:{sin.dtype} are not float32 "
            f"(rows, {half})")
    require(cos.shape[0] >= x.shape[1],
            f"a table of {cos.shape[0]} positions is shorter than the {x.shape[1]} positions of x")
    require(len(position) <= 1 and all(p == Spec((), "i32") for p in position), "the position is one int32 scalar")
    require(isinstance(attrs.get("inverse"), bool), "needs attribute inverse (true or false)")
    return x


def _rotary_vjp(attrs, g, out, x, cos, sin, *position):
    back = g.graph.add("rotary", (g, cos, sin, *position), inverse=not attrs["inverse"])
    return (back, None, None, *(None for _ in position))


register(Op("rotary", "nn", _rotary_infer, vjp=_rotary_vjp, template="rotary",
            overwrites=lambda attrs, n_inputs: ((0, 0),)))
