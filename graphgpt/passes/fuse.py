"""Vertical fusion of pointwise ops: each chain becomes one `fused` node, one kernel, one pass
over memory.

A pointwise node is folded into its users when all of them are pointwise ops of its own shape
and it is not needed in memory (a gradient, an update, an output). A node with several such
users is recomputed in each of them: a few flops per element are cheaper than writing and
re-reading a tensor. Everything else (GEMMs, reductions, row ops, broadcasts to larger shapes)
stays a boundary, where a value is materialised.

One exception at that boundary: a pointwise node whose only user is a `sum` (the gradient norm's
g * g, LayerNorm's sum(g * xhat)) is folded into it as a `fused_sum`, whose kernel evaluates the
chain where it would load its input. Its operands must be of the chain's size or scalars: the
reduction kernels walk all of them with the input's indexing.

Before all that, a sum of pads that tile one axis becomes a concat, which the memory plan builds in
place: each piece is computed straight into its slice, so neither the pads nor the adds run.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph, Node, _freeze
from ..ops import REGISTRY
from .simplify import dead_code_elimination


def fuse(graph: Graph) -> Graph:
    graph = _concats(graph)
    users = graph.users()
    needed = set(graph.outputs.values()) | set(graph.updates) | set(graph.updates.values()) | set(graph.grads.values())

    def pointwise(n: Node) -> bool:
        return REGISTRY[n.op].kind == "elementwise"

    inlined = {n.id for n in graph.nodes.values()
               if pointwise(n) and n.id not in needed and users[n.id]
               and all(pointwise(graph.nodes[u]) and graph.nodes[u].shape == n.shape for u in users[n.id])}
    prologues = {}  # sum id -> its input as a fused node
    for n in graph.of_op("sum"):
        src = graph.nodes[n.inputs[0]]
        if pointwise(src) and src.id not in needed and users[src.id] == [n.id]:
            chain = _fused_node(graph, src, inlined)
            if all(graph.nodes[i].size in (1, src.size) for i in chain.inputs):
                prologues[n.id] = chain
    folded = {graph.nodes[s].inputs[0] for s in prologues}
    out = Graph(outputs=dict(graph.outputs), updates=dict(graph.updates), grads=dict(graph.grads))
    out._next_id = graph._next_id
    for n in graph.nodes.values():
        if n.id in inlined or n.id in folded:
            continue
        if n.id in prologues:
            chain = prologues[n.id]
            n = replace(n, op="fused_sum", inputs=chain.inputs,
                        attrs=_freeze({**dict(n.attrs), **dict(chain.attrs)}))
        elif pointwise(n) and any(i in inlined for i in n.inputs):
            n = _fused_node(graph, n, inlined)
        out.nodes[n.id] = n
    return out


def _concats(graph: Graph) -> Graph:
    out = Graph(outputs=dict(graph.outputs), updates=dict(graph.updates), grads=dict(graph.grads))
    out._next_id = graph._next_id
    for n in graph.nodes.values():
        out.nodes[n.id] = (_concat_of_pads(graph, n) if n.op == "add" else None) or n
    return dead_code_elimination(out)


def _concat_of_pads(g: Graph, n: Node) -> Node | None:
    """pad(a, [0:1]) + pad(b, [1:2]) + pad(c, [2:3]) -> concat(a, b, c), when the pads' ranges along one
    axis are disjoint and cover it exactly, so every output element is exactly one input element.
    This is how autodiff sums the gradients of slices (q, k, v of one qkv tensor); the concat writes
    the result once instead of zero-filling it three times and adding."""
    leaves, stack, seen = [], [n], set()
    while stack:  # the leaves of the tree of same-shape adds rooted at n (no broadcasting inside)
        m = stack.pop()
        if m.id in seen:  # a value summed twice cannot be one element of a tiling
            return None
        seen.add(m.id)
        if m.op == "add" and all(g.nodes[i].shape == n.shape for i in m.inputs):
            stack.extend(g.nodes[i] for i in m.inputs)
        elif m.op == "pad" and m.shape == n.shape:
            leaves.append(m)
        else:
            return None
    axis = leaves[0].attr["axis"]
    if any(p.attr["axis"] != axis for p in leaves):
        return None
    leaves.sort(key=lambda p: p.attr["before"])
    end = 0
    for p in leaves:  # sorted by start: disjoint and gap-free exactly when each starts where the last ended
        if p.attr["before"] != end:
            return None
        end += g.nodes[p.inputs[0]].shape[axis]
    if end != n.shape[axis]:
        return None
    return replace(n, op="concat", inputs=tuple(p.inputs[0] for p in leaves), attrs=_freeze({"axis": axis}))



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
