"""Vertical fusion of pointwise ops: each chain becomes one `fused` node, one kernel, one pass
over memory.

A pointwise node is folded into its users when all of them are pointwise ops of its own shape
and it is not needed in memory (a gradient, an update, an output). A node with several such
users is recomputed in each of them: a few flops per element are cheaper than writing and
re-reading a tensor. Everything else (GEMMs, reductions, row ops, broadcasts to larger shapes)
stays a boundary, where a value is materialised.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph, Node, _freeze
from ..ops import REGISTRY


def fuse(graph: Graph) -> Graph:
    users = graph.users()
    needed = set(graph.outputs.values()) | set(graph.updates) | set(graph.updates.values()) | set(graph.grads.values())

    def pointwise(n: Node) -> bool:
        return REGISTRY[n.op].kind == "elementwise"

    inlined = {n.id for n in graph.nodes.values()
               if pointwise(n) and n.id not in needed and users[n.id]
               and all(pointwise(graph.nodes[u]) and graph.nodes[u].shape == n.shape for u in users[n.id])}
    out = Graph(outputs=dict(graph.outputs), updates=dict(graph.updates), grads=dict(graph.grads))
    out._next_id = graph._next_id
    for n in graph.nodes.values():
        if n.id in inlined:
            continue
        if pointwise(n) and any(i in inlined for i in n.inputs):
            n = _fused_node(graph, n, inlined)
        out.nodes[n.id] = n
    return out


def _fused_node(graph: Graph, root: Node, inlined: set[int]) -> Node:
    program: list[tuple] = []
    externals: list[int] = []
    step_of: dict[int, int] = {}

    def arg(i: int) -> int:
        if i in inlined:
            return emit(graph.nodes[i])
        if i not in externals:
            externals.append(i)
        return -1 - externals.index(i)

    def emit(n: Node) -> int:
        if n.id not in step_of:  # a shared subexpression is computed once per element
            args = tuple(arg(i) for i in n.inputs)
            program.append((n.op, n.attrs, args))
            step_of[n.id] = len(program) - 1
        return step_of[n.id]

    emit(root)
    return replace(root, op="fused", inputs=tuple(externals), attrs=_freeze({"program": tuple(program)}))
