"""The classifier's loss and its gradient."""
from __future__ import annotations

import numpy as np

from ...dtypes import DTYPES
from ...numpy_ops.base import reference
from ..quantize.reference import quantize


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@reference("cross_entropy")
def cross_entropy(attrs, logits, targets):
    lp = np.take_along_axis(_log_softmax(logits), targets[..., None].astype(np.int64), -1)
    return np.asarray(-lp.mean(), logits.dtype)


@reference("cross_entropy_grad")
def cross_entropy_grad(attrs, logits, targets, g):
    p = np.exp(_log_softmax(logits))
    at = targets[..., None].astype(np.int64)
    np.put_along_axis(p, at, np.take_along_axis(p, at, -1) - 1.0, -1)
    return p * (g / targets.size)


@reference("cross_entropy_with_grad")
def cross_entropy_with_grad(attrs, logits, targets, g):
    """The loss and its gradient of one pass over the logits: what the two ops compute apart. With
    attrs "fp8_grad", also the stored gradient's FP8 copy and its factor, quantized at the bound
    |g| / rows on its magnitude (RowLoss), which the kernel computes in float32."""
    loss, grad = cross_entropy(attrs, logits, targets), cross_entropy_grad(attrs, logits, targets, g)
    if not attrs.get("fp8_grad"):
        return loss, grad
    stored = grad.astype(DTYPES[attrs["grad_dtype"]].numpy).astype(grad.dtype)
    bound = np.float32(abs(np.float32(g))) / np.float32(targets.size)
    return (loss, grad, *quantize({"dtype": attrs["fp8_grad"], "transpose": False}, stored, bound))
