"""Pointwise references: arithmetic, casts, the activations and their derivatives, and fused chains."""
from __future__ import annotations

import math

import numpy as np

from ...dtypes import DTYPES
from ...numpy_ops.base import reference, run_program

GELU_C = math.sqrt(2.0 / math.pi)


UFUNCS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
          "maximum": np.maximum,  # propagates a NaN from either side, as its CUDA expression does
          "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh}
for _name, _ufunc in UFUNCS.items():
    reference(_name)(lambda attrs, *xs, _ufunc=_ufunc: _ufunc(*xs))


@reference("cast")
def cast(attrs, x):
    """Rounding happens where a value is stored: a cast to the compute type (f32) is the identity,
    one to a narrower type rounds to nearest even and stays in the compute type."""
    if attrs["dtype"] == "f32":
        return x
    return x.astype(DTYPES[attrs["dtype"]].numpy).astype(x.dtype)


def _tanh_arg(x):
    return GELU_C * (x + 0.044715 * x * x * x)


@reference("gelu")
def gelu(attrs, x):
    return 0.5 * x * (1.0 + np.tanh(_tanh_arg(x)))


@reference("gelu_grad")
def gelu_grad(attrs, x, g):
    t = np.tanh(_tanh_arg(x))
    return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3 * 0.044715 * x * x))


@reference("sigmoid")
def sigmoid(attrs, x):
    return np.exp(-np.logaddexp(0.0, -x))  # 1 / (1 + exp(-x)), without exp's overflow


@reference("square")
def square(attrs, x):
    return x * x


@reference("silu")
def silu(attrs, x):
    return x * sigmoid(attrs, x)


@reference("silu_grad")
def silu_grad(attrs, x, g):
    s = sigmoid(attrs, x)
    return g * s * (1.0 + x * (1.0 - s))


@reference("relu")
def relu(attrs, x):
    return np.maximum(x, x.dtype.type(0))


@reference("relu_grad")
def relu_grad(attrs, x, g):
    return np.where(x > 0, g, g.dtype.type(0))


@reference("fused")
def fused(attrs, *arrays):
    out = run_program(attrs["program"], arrays, keep=[-1])[-1]
    if "shape" in attrs:
        out = out.reshape(attrs["shape"])
    return out.transpose(attrs["perm"]) if "perm" in attrs else out


@reference("fused_multi")
def fused_multi(attrs, *arrays):
    values = run_program(attrs["program"], arrays, keep=attrs["results"])
    return tuple(values[r] for r in attrs["results"])
