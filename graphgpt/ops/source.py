"""Graph sources: trainable parameters, optimizer state, key/value caches, per-step inputs,
scalar constants and constant tensors (tables the compiler computes).

Their values come from outside the op (the backend's arenas), so they have no reference and no VJP
of their own; autodiff stops at them.
"""
from __future__ import annotations

import numpy as np

from ..dtypes import DTYPES
from ..rope_scaling import SCALINGS, inverse_frequencies
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


# ---- constant tensors: tables the compiler computes ---------------------------------------------
# A const_tensor names its table and that table's parameters in its attributes; its values are the
# table's function of them, computed in float64 when the plan is written and stored as float32 in
# the plan directory, which the backends load into the arena's constants region before any program
# runs. Equal attributes, equal values: programs share one slot per table. Never trained, never
# checkpointed.
def _rotary_angles(attrs) -> np.ndarray:
    """angle[p, i] = p * inv_freq[i] for the positions p < rows and the pairs i < D / 2: Hugging
    Face LLaMA's base^(-2i / D), scaled where the attributes name a scaling (rope_scaling.py)."""
    rows, half = attrs["shape"]
    scaling = {k: attrs[k] for k in ("rope_type", *SCALINGS.get(attrs.get("rope_type"), ())) if k in attrs}
    inv_freq = inverse_frequencies(half, attrs["base"], **scaling)
    return np.arange(rows, dtype=np.float64)[:, None] * inv_freq[None, :]


TABLES = {"rotary_cos": lambda attrs: np.cos(_rotary_angles(attrs)),
          "rotary_sin": lambda attrs: np.sin(_rotary_angles(attrs))}


def _const_tensor_infer(attrs, *inputs) -> Spec:
    require(attrs.get("table") in TABLES, f"unknown table {attrs.get('table')!r}")
    require(attrs.get("dtype") == "f32", "a constant tensor is stored as float32")
    return _declared(attrs, *inputs)


def const_tensor_values(attrs) -> np.ndarray:
    """A const_tensor's values in float64, of its shape."""
    values = TABLES[attrs["table"]](attrs)
    assert values.shape == tuple(attrs["shape"]), (attrs, values.shape)
    return values


register(Op("const_tensor", "source", _const_tensor_infer, nondiff="a constant: nothing to differentiate",
            source="consts"))
