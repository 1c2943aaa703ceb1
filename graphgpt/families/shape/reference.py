"""Data movement."""
from __future__ import annotations

import numpy as np

from ...numpy_ops.base import reference


reference("reshape")(lambda attrs, x: x.reshape(attrs["shape"]))
reference("transpose")(lambda attrs, x: np.transpose(x, attrs["perm"]))
reference("broadcast_to")(lambda attrs, x: np.broadcast_to(x, attrs["shape"]))
reference("concat")(lambda attrs, *xs: np.concatenate(xs, axis=attrs["axis"]))
reference("copy")(lambda attrs, x: x.copy())


@reference("slice")
def slice_(attrs, x):
    index = [slice(None)] * x.ndim
    index[attrs["axis"]] = slice(attrs["start"], attrs["stop"])
    return x[tuple(index)]


@reference("pad")
def pad(attrs, x):
    widths = [(0, 0)] * x.ndim
    widths[attrs["axis"]] = (attrs["before"], attrs["after"])
    return np.pad(x, widths)
