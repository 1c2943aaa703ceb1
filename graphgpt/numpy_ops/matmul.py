"""Matrix products, with their epilogues."""
from __future__ import annotations

import numpy as np

from ..families.elementwise.reference import gelu, gelu_grad
from .base import reference

SCALES = 2  # an FP8 product's inputs after its operands: each operand's dequantisation factor


@reference("matmul")
def matmul(attrs, a, b, *scales):
    """An FP8 product's operands come as the values of their E4M3 elements: their product is
    exact in float32, the sum is float32's (the GPU's FP8 accumulator keeps fewer bits, which
    tests/test_gemm_gpu.py's bound allows for), and the two factors are powers of two."""
    if scales:
        return _product(attrs, a, b) * (scales[0] * scales[1])
    return _product(attrs, a, b)


def _product(attrs, a, b):
    if attrs["tb"]:
        b = np.swapaxes(b, -1, -2)
    if b.ndim == 2 and a.ndim > 2:  # one large GEMM instead of a loop over the batch
        return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))
    if attrs["ta"]:
        a = np.swapaxes(a, -1, -2)
    return np.matmul(a, b)


@reference("fused_matmul")
def fused_matmul(attrs, a, b, *rest):
    """The epilogue on the unrounded product, as cuBLASLt applies it to its accumulator."""
    scales = SCALES if attrs.get("fp8") else 0
    out, rest = matmul(attrs, a, b, *rest[:scales]), list(rest[scales:])
    if attrs["bias"]:
        out = out + rest.pop(0)
    if attrs.get("gelu"):
        return gelu({}, out), out
    if attrs.get("gelu_grad"):
        return gelu_grad({}, rest.pop(0), out)
    return out + rest.pop(0) if attrs["residual"] else out
