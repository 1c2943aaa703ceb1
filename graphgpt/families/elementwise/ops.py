"""Pointwise arithmetic with NumPy broadcasting, casts between float types, and the activations
(GELU, SiLU, ReLU) with their backward-only derivatives: the elementwise kernel family.

Both operands of a binary op have one dtype, except that a scalar (a constant, a learning rate)
takes the dtype of the tensor it meets: it is read into a float register like any operand."""
from __future__ import annotations

import numpy as np

from ...dtypes import DTYPES
from ...ops.registry import (BACKWARD_ONLY, FLOATS, GemmEpilogue, Op, Spec, any_input, float_spec, register, require,
                             same)
from ..shape.ops import unbroadcast
from .reference import GELU_C


def _binary_infer(attrs, a, b):
    float_spec(a), float_spec(b)
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        shape = None
    require(shape is not None, f"shapes {a.shape} and {b.shape} do not broadcast")
    if a.dtype != b.dtype:
        require(a.shape == () or b.shape == (), f"dtypes differ: {a.dtype} and {b.dtype} (cast one)")
        return Spec(tuple(shape), b.dtype if a.shape == () else a.dtype)
    return Spec(tuple(shape), a.dtype)


def _unary_infer(attrs, x):
    return float_spec(x)


def binary(name, expr, vjp=None, nondiff=None, **traits):
    register(Op(name, "elementwise", _binary_infer, vjp=vjp, nondiff=nondiff,
                template="elementwise", expr=expr, overwrites=any_input, **traits))


def unary(name, expr, vjp=None, nondiff=None):
    register(Op(name, "elementwise", _unary_infer, vjp=vjp, nondiff=nondiff,
                template="elementwise", expr=expr, overwrites=any_input))


binary("add", "a + b", lambda a, g, out, x, y: (unbroadcast(g, x.shape), unbroadcast(g, y.shape)), adds=True)
binary("sub", "a - b",
       lambda a, g, out, x, y: (unbroadcast(g, x.shape), unbroadcast(-g, y.shape)))
binary("mul", "a * b",
       lambda a, g, out, x, y: (unbroadcast(g * y, x.shape), unbroadcast(g * x, y.shape)), multiplies=True)
binary("div", "a / b", lambda a, g, out, x, y: (unbroadcast(g / y, x.shape),
                                              unbroadcast(-(g * out) / y, y.shape)))
# np.maximum propagates a NaN from either side (fmaxf would drop it): a NaN gradient norm must show.
binary("maximum", "(a > b || a != a) ? a : b",
       nondiff="used by gradient clipping only, after the backward")

unary("neg", "-a", lambda a, g, out, x: (-g,))
unary("exp", "expf(a)", lambda a, g, out, x: (g * out,))
unary("log", "logf(a)", lambda a, g, out, x: (g / x,))
unary("sqrt", "sqrtf(a)", lambda a, g, out, x: ((g * 0.5) / out,))
unary("tanh", "tanhf(a)", lambda a, g, out, x: (g * (1.0 - out * out),))
unary("sigmoid", "1.0f / (1.0f + expf(-a))", lambda a, g, out, x: (g * (out * (1.0 - out)),))
unary("square", "a * a", lambda a, g, out, x: (g * (x * 2.0),))


# ---- cast: a float tensor in another float type. Rounding happens where a value is stored, so a
# cast to the compute type (f32) is the identity; a cast to a narrower type inside a fused chain
# rounds there, in registers, as it would through memory.
def _cast_infer(attrs, x):
    float_spec(x)
    require(attrs["dtype"] in FLOATS, f"cannot cast to {attrs['dtype']}")
    return Spec(x.shape, attrs["dtype"])


def _cast_expr(attrs) -> str:
    return "a" if attrs["dtype"] == "f32" else f"to_float(from_float<{DTYPES[attrs['dtype']].ctype}>(a))"


register(Op("cast", "elementwise", _cast_infer,
            vjp=lambda a, g, out, x: (g.graph.add("cast", (g,), dtype=x.dtype),),
            template="elementwise", expr=_cast_expr, overwrites=any_input, casts=True))


# ---- GELU, tanh approximation ------------------------------------------------------------------
# The same formulas in CUDA C; the repeated tanh is one call after the compiler's CSE.
_TANH = f"tanhf({GELU_C!r}f * (a + 0.044715f * a * a * a))"
register(Op("gelu", "elementwise", same,
            vjp=lambda a, g, out, x: (g.graph.add("gelu_grad", (x, g)),),
            template="elementwise", expr=f"0.5f * a * (1.0f + {_TANH})", gemm_epilogue=GemmEpilogue("gelu"),
            remat_root="gelu"))
register(Op("gelu_grad", "elementwise", same, nondiff=BACKWARD_ONLY,
            template="elementwise", gemm_epilogue=GemmEpilogue("gelu_grad", grad=True),
            expr=f"b * (0.5f * (1.0f + {_TANH}) + 0.5f * a * (1.0f - {_TANH} * {_TANH}) * {GELU_C!r}f"
                 f" * (1.0f + 3.0f * 0.044715f * a * a))"))


# ---- SiLU (x * sigmoid(x), LLaMA's gate) and ReLU: their derivatives read the input -----------
_SIGMOID = "(1.0f / (1.0f + expf(-a)))"
register(Op("silu", "elementwise", same,
            vjp=lambda a, g, out, x: (g.graph.add("silu_grad", (x, g)),),
            template="elementwise", expr=f"a * {_SIGMOID}"))
register(Op("silu_grad", "elementwise", same, nondiff=BACKWARD_ONLY, template="elementwise",
            expr=f"b * {_SIGMOID} * (1.0f + a * (1.0f - {_SIGMOID}))"))
# a NaN passes through ReLU, as through np.maximum(x, 0): a NaN loss must show
register(Op("relu", "elementwise", same,
            vjp=lambda a, g, out, x: (g.graph.add("relu_grad", (x, g)),),
            template="elementwise", expr="(a > 0.0f || a != a) ? a : 0.0f"))
register(Op("relu_grad", "elementwise", same, nondiff=BACKWARD_ONLY, template="elementwise",
            expr="a > 0.0f ? b : 0.0f"))
