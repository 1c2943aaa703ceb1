"""output: one output of an op with several, a value of its own (see ir.py).

It computes nothing: the op it belongs to writes it, straight into its buffer.
"""
from __future__ import annotations

from .registry import Op, Spec, register, require


def _infer(attrs, t: Spec) -> Spec:
    require(t.dtype == "tuple", "reads an op with several outputs")
    require(0 <= attrs["index"] < len(t.shape), f"output {attrs['index']} of {len(t.shape)}")
    shape, dtype = t.shape[attrs["index"]]
    return Spec(tuple(shape), dtype)


register(Op("output", "projection", _infer,
            nondiff="its gradient goes to the output's slot of its op's VJP (autodiff.py)"))
