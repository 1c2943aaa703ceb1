"""Evaluate a graph directly with the ops' NumPy references: the meaning of a graph.

The backends execute plans; this executes graphs, before any pass has touched them, so tests can
check that autodiff, simplification and the memory plan preserve what a graph computes.
"""
from __future__ import annotations

import numpy as np

from .ir import Graph
from .ops import REGISTRY
from .ops.source import const_tensor_values


def evaluate(graph: Graph, feeds: dict[str, np.ndarray], dtype=np.float64) -> dict[int, np.ndarray]:
    """Values of every node; `feeds` maps param, state and input names to arrays."""
    values: dict[int, np.ndarray] = {}
    for n in graph.nodes.values():
        if n.op == "const":
            values[n.id] = np.asarray(n.attr["value"], dtype)
        elif n.op == "const_tensor":
            values[n.id] = const_tensor_values(n.attr).astype(dtype)
        elif n.op in ("param", "state", "cache", "input"):
            v = np.asarray(feeds[n.name])
            values[n.id] = v.astype(np.int32 if n.dtype == "i32" else dtype).reshape(n.shape)
        elif n.specs:  # several outputs, each read by its output node
            values[n.id] = tuple(np.asarray(v) for v in REGISTRY[n.op].ref(n.attr, *(values[i] for i in n.inputs)))
        else:
            values[n.id] = np.asarray(REGISTRY[n.op].ref(n.attr, *(values[i] for i in n.inputs)))
    return values
