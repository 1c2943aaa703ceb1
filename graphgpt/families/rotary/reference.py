"""Rotary position embedding."""
from __future__ import annotations

import numpy as np

from ...numpy_ops.base import reference


@reference("rotary")
def rotary(attrs, x, cos, sin, *position):
    """Pairs (i, i + D/2) of x (B, T, H, D) rotated by the tables' rows p..p+T-1 (p: the position
    input, else 0); with attrs["inverse"] the other way."""
    t, half, p = x.shape[1], x.shape[-1] // 2, int(position[0]) if position else 0
    c, s = cos[None, p:p + t, None, :], sin[None, p:p + t, None, :]
    if attrs["inverse"]:
        s = -s
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
