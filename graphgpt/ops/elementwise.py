"""Pointwise arithmetic with NumPy broadcasting."""
from __future__ import annotations

import numpy as np

from .registry import Op, Spec, float_spec, register, require
from .shape import unbroadcast


def _binary_infer(attrs, a, b):
    float_spec(a), float_spec(b)
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        shape = None
    require(shape is not None, f"shapes {a.shape} and {b.shape} do not broadcast")
    return Spec(tuple(shape), a.dtype)


def _unary_infer(attrs, x):
    return float_spec(x)


def binary(name, ref, expr, vjp=None, nondiff=None):
    register(Op(name, "elementwise", _binary_infer, ref=lambda a, x, y: ref(x, y), vjp=vjp, nondiff=nondiff,
                template="elementwise", expr=expr))


def unary(name, ref, expr, vjp=None, nondiff=None):
    register(Op(name, "elementwise", _unary_infer, ref=lambda a, x: ref(x), vjp=vjp, nondiff=nondiff,
                template="elementwise", expr=expr))


binary("add", np.add, "a + b", lambda a, g, out, x, y: (unbroadcast(g, x.shape), unbroadcast(g, y.shape)))
binary("sub", np.subtract, "a - b",
       lambda a, g, out, x, y: (unbroadcast(g, x.shape), unbroadcast(-g, y.shape)))
binary("mul", np.multiply, "a * b",
       lambda a, g, out, x, y: (unbroadcast(g * y, x.shape), unbroadcast(g * x, y.shape)))
binary("div", np.divide, "a / b", lambda a, g, out, x, y: (unbroadcast(g / y, x.shape),
                                                           unbroadcast(-(g * out) / y, y.shape)))
# np.maximum propagates a NaN from either side (fmaxf would drop it): a NaN gradient norm must show.
binary("maximum", np.maximum, "(a > b || a != a) ? a : b",
       nondiff="used by gradient clipping only, after the backward")

unary("neg", np.negative, "-a", lambda a, g, out, x: (-g,))
unary("exp", np.exp, "expf(a)", lambda a, g, out, x: (g * out,))
unary("log", np.log, "logf(a)", lambda a, g, out, x: (g / x,))
unary("sqrt", np.sqrt, "sqrtf(a)", lambda a, g, out, x: ((g * 0.5) / out,))
unary("tanh", np.tanh, "tanhf(a)", lambda a, g, out, x: (g * (1.0 - out * out),))
