"""Graph sources: trainable parameters, optimizer state, key/value caches, per-step inputs and
constants.

Their values come from outside the op (the backend's arenas), so they have no reference and no VJP
of their own; autodiff stops at them.
"""
from __future__ import annotations

from ..dtypes import DTYPES
from .registry import Op, Spec, register, require


def _declared(attrs, *inputs) -> Spec:
    require(not inputs, "a source takes no inputs")
    require(attrs.get("dtype", "f32") in DTYPES, f"unknown dtype {attrs.get('dtype')}")
    return Spec(tuple(attrs["shape"]), attrs.get("dtype", "f32"))


for _name, _region in (("param", "params"), ("state", "state"), ("input", "inputs")):
    register(Op(_name, "source", _declared, nondiff="a source: its value is fed, not computed", source=_region))
# The keys and values the generation programs keep per layer: persistent like the optimizer state,
# but in the compute type, never checkpointed, and written by the programs alone.
register(Op("cache", "source", _declared, nondiff="a key/value cache: written by decoding, not differentiated",
            source="caches"))

register(Op("const", "source", lambda attrs: Spec((), "f32"),
            nondiff="a constant: nothing to differentiate", source="consts"))
