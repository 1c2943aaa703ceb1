"""Reverse-mode differentiation of a graph, driven by the registry's VJP rules.

Walk the nodes backwards from the loss; each node that lies on a path from a requested input to the
loss hands its accumulated cotangent to its op's VJP rule, which emits new graph nodes for the
cotangents of its inputs. An op with several outputs gets the cotangent of each of its `output`
nodes, in a list (None for an output the loss does not depend on). The result is more graph, not
numbers: later passes simplify, fuse and schedule the backward exactly like the forward.
"""
from __future__ import annotations

from .errors import UserError
from .ir import SOURCE_OPS, Graph, Value
from .ops import REGISTRY


def grad(graph: Graph, loss: Value, wrt: list[int]) -> dict[int, Value]:
    """Add the gradient of scalar `loss` with respect to each node in `wrt`; return them by id."""
    assert loss.shape == (), "the loss must be a scalar"
    on_path = graph.depends_on(set(wrt))  # the only nodes worth differentiating
    seed = graph.const(1.0)  # constants are float32: a loss of another type gets the seed in its own
    if loss.dtype != seed.dtype:
        seed = graph.add("cast", (seed,), dtype=loss.dtype)
    cotangent: dict[int, Value] = {loss.id: seed}
    order = [n for n in graph.nodes.values() if n.id <= loss.id]
    projections = graph.projections()
    parts: dict[int, dict[int, Value]] = {}  # tuple node -> output index -> that output's cotangent
    for node in reversed(order):
        g = cotangent.get(node.id)
        if node.op == "output":
            if g is not None:
                parts.setdefault(node.inputs[0], {})[node.attr["index"]] = g
            continue
        out = graph.value(node.id)
        if node.specs:
            if node.id not in parts:
                continue
            g = [parts[node.id].get(k) for k in range(len(node.specs))]
            out = [graph.value(o) for o in projections[node.id]]
        if g is None or node.op in SOURCE_OPS:
            continue
        op = REGISTRY[node.op]
        if op.vjp is None:
            raise UserError(f"{node.where}: cannot differentiate '{node.op}': {op.nondiff}")
        graph.locate = lambda where=node.where: where  # backward nodes point at their forward line
        inputs = [graph.value(i) for i in node.inputs]
        for i, gi in zip(node.inputs, op.vjp(node.attr, g, out, *inputs)):
            if gi is not None and i in on_path:
                cotangent[i] = cotangent[i] + gi if i in cotangent else gi
    graph.locate = None
    missing = [graph.nodes[i].name or str(i) for i in wrt if i not in cotangent]
    if missing:
        raise UserError(f"the loss does not depend on: {', '.join(missing)}")
    return {i: cotangent[i] for i in wrt}

