"""The greedy next token."""
from __future__ import annotations

import numpy as np

from ...numpy_ops.base import reference


@reference("argmax")
def argmax(attrs, x):
    return np.argmax(x[..., :attrs["limit"]], axis=-1).astype(np.int32)
