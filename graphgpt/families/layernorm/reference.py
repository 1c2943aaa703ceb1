"""The row normalisers (LayerNorm's normalize, RMSNorm's rms_normalize), their fused forms and
backward ops."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ...numpy_ops.base import reference, run_program


@reference("normalize")
def normalize(attrs, x):
    """The normalised rows, and each row's mean and rstd."""
    mean = x.mean(-1)
    xc = x - mean[..., None]
    rstd = 1.0 / np.sqrt((xc * xc).mean(-1) + attrs["eps"])
    return xc * rstd[..., None], mean, rstd


@reference("rms_normalize")
def rms_normalize(attrs, x):
    """The rows divided by their root mean square (not centred), and each row's rstd."""
    rstd = 1.0 / np.sqrt((x * x).mean(-1) + attrs["eps"])
    return x * rstd[..., None], rstd


@reference("normalize_grad")
def normalize_grad(attrs, x, g, mean, rstd):
    xhat = (x - mean[..., None]) * rstd[..., None]
    return rstd[..., None] * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))


@reference("rms_normalize_grad")
def rms_normalize_grad(attrs, x, g, rstd):
    xhat = x * rstd[..., None]
    return rstd[..., None] * (g - xhat * (g * xhat).mean(-1, keepdims=True))


def _with_epilogue(plain: Callable) -> Callable:
    """A normaliser's outputs, and its chain of the normalised rows as they are before rounding."""
    def fused(attrs, x, *operands):
        outs = plain(attrs, x)
        return (*outs, run_program(attrs["program"], (outs[0], *operands), keep=[-1])[-1])
    return fused


def _scaled_and_accumulated(grad: Callable, n_statistics: int) -> Callable:
    """A normaliser's backward with g scaled by gamma (attrs "scaled") and the residual's gradient
    added (attrs "accumulate"). Inputs: x, g, the statistics, [gamma], [residual]."""
    def fused(attrs, x, g, *rest):
        statistics, rest = rest[:n_statistics], list(rest[n_statistics:])
        if attrs["scaled"]:
            g = g * rest.pop(0)
        dx = grad(attrs, x, g, *statistics)
        return dx + rest.pop(0) if attrs["accumulate"] else dx
    return fused


reference("fused_normalize")(_with_epilogue(normalize))
reference("fused_rms_normalize")(_with_epilogue(rms_normalize))
reference("fused_normalize_grad")(_scaled_and_accumulated(normalize_grad, 2))
reference("fused_rms_normalize_grad")(_scaled_and_accumulated(rms_normalize_grad, 1))
