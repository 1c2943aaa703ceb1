"""Matrix products, with their epilogues."""
from __future__ import annotations

import numpy as np

from ..families.elementwise.reference import gelu, gelu_grad
from .base import reference


@reference("matmul")
def matmul(attrs, a, b):
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
    out, rest = matmul(attrs, a, b), list(rest)
    if attrs["bias"]:
        out = out + rest.pop(0)
    if attrs.get("gelu"):
        return gelu({}, out), out
    if attrs.get("gelu_grad"):
        return gelu_grad({}, rest.pop(0), out)
    return out + rest.pop(0) if attrs["residual"] else out
