"""Weight copies: a plan that computes in a narrower type than float32 keeps each weight's copy in
that type in the arena, instead of casting every weight at the start of every step.

The traced programs cast each float32 parameter where the model reads it, and autodiff
differentiates through those casts. After autodiff, this pass makes every such cast a read of the
weight's copy (a cache node with attribute copy_of), and
gives every program that updates a parameter the update of its copy: the cast of the new value.
So the optimizer writes the copies as it writes the weights, the next step reads exactly the bits
its casts would have made, and no step casts a weight: each cast joins its weight's update in one
kernel (fuse.py step 6), and those of all weights, which lie in parameter order as the weights
do, in one launch (passes/multi_tensor.py).
Whatever writes weights outside a step (initialisation, a checkpoint, a broadcast) leaves the
copies stale; the runtime then runs the cast_weights program, made here too, once before the next
program.
"""
from __future__ import annotations

from dataclasses import replace

from ..dsl import FLOAT, weight_copy
from ..ir import Graph, Node
from ..ops import REGISTRY
from ..plan import CAST_WEIGHTS
from ..rewrite import frozen_attrs


def with_weight_copies(graphs: dict[str, Graph], dtype: str) -> dict[str, Graph]:
    """Every program reading and updating the copies, and the cast_weights program that makes
    them; a float32 plan's programs as they are."""
    if dtype == FLOAT:
        return graphs
    graphs = {name: read_weight_copies(g, dtype) for name, g in graphs.items()}
    return {**graphs, CAST_WEIGHTS: cast_weights(graphs.values())}


def cast_weights(programs) -> Graph:
    """The program that writes the copy of every weight the programs read (their cache nodes
    with attribute copy_of), each cast straight into the copy's slot."""
    graph = Graph()
    copies = {n.name: n for g in programs for n in g.nodes.values() if _region(n) == "caches" and "copy_of" in n.attr}
    for copy in copies.values():
        weight = graph.add("param", name=copy.attr["copy_of"], shape=copy.shape, dtype=FLOAT)
        slot = graph.add("cache", **copy.attr)
        graph.updates[slot.id] = graph.add("cast", (weight,), dtype=copy.dtype).id
    return graph


def read_weight_copies(graph: Graph, dtype: str) -> Graph:
    """Rewrite `graph` in place: casts of parameters to `dtype` become reads of their copies, and
    each updated parameter's copy is updated with it."""
    copies = {}  # parameter name -> its copy's node id
    for n in list(graph.nodes.values()):
        x = graph.nodes[n.inputs[0]] if REGISTRY[n.op].casts else None
        if x is not None and _region(x) == "params" and n.dtype == dtype:
            # the same id, so every reader of the cast now reads the copy
            graph.nodes[n.id] = replace(n, op="cache", inputs=(), attrs=frozen_attrs(_copy(x, dtype)))
            copies[x.name] = n.id
    for p, new in list(graph.updates.items()):
        param = graph.nodes[p]
        if _region(param) != "params":
            continue
        if param.name not in copies:  # a program without the forward: the update program
            copies[param.name] = graph.add("cache", **_copy(param, dtype)).id
        graph.updates[copies[param.name]] = graph.add("cast", (new,), dtype=dtype).id
    return graph


def _region(n: Node) -> str | None:
    """The arena region of a source's value (a parameter's: params), None for a computed node."""
    return REGISTRY[n.op].source


def _copy(param: Node, dtype: str) -> dict:
    """The attributes of a parameter's copy (named by dsl.weight_copy)."""
    return {"name": weight_copy(param.name, dtype), "shape": param.shape, "dtype": dtype, "copy_of": param.name}
