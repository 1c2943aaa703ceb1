"""Sums: plain, with a pointwise prologue (several results at once), in groups, of squares."""
from __future__ import annotations

import numpy as np

from ...numpy_ops.base import BY_OP, reference, run_program
from ..elementwise.reference import fused


@reference("sum")
def sum_(attrs, x):
    return np.asarray(np.sum(x, axis=tuple(attrs["axes"]), keepdims=attrs["keepdims"]), x.dtype)


@reference("fused_sum")
def fused_sum(attrs, *arrays):
    if "results" not in attrs:
        return sum_(attrs, fused(attrs, *arrays))
    values = run_program(attrs["program"], arrays, keep=[r for r in attrs["results"] if r >= 0])
    return tuple(sum_(attrs, values[r] if r >= 0 else arrays[-1 - r]) for r in attrs["results"])


@reference("sum_group")
def sum_group(attrs, *arrays):
    """Each member's results, in order: the members read their own inputs, one after another."""
    out, at = [], 0
    for op, member_attrs, n in attrs["members"]:
        result = BY_OP[op](dict(member_attrs), *arrays[at:at + n])
        out += list(result) if isinstance(result, tuple) else [result]
        at += n
    return tuple(out)


@reference("sum_squares")
def sum_squares(attrs, *xs):
    return np.asarray(sum(np.sum(x * x) for x in xs), xs[0].dtype)
