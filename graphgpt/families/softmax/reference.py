"""The causal softmax of explicit scores and its backward."""
from __future__ import annotations

import numpy as np

from ...numpy_ops.base import reference


@reference("causal_softmax")
def causal_softmax(attrs, x):
    t = x.shape[-1]
    s = np.where(np.tri(t, dtype=bool), x * attrs["scale"], -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@reference("causal_softmax_grad")
def causal_softmax_grad(attrs, y, g):
    return attrs["scale"] * y * (g - (g * y).sum(-1, keepdims=True))
