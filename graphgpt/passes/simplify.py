"""Simplify: drop no-op nodes, merge identical computations (CSE), remove dead nodes (DCE).

Node ids are kept, so a node in the simplified graph dump is the same node as in the raw one.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph, Node
from ..ops import REGISTRY
from ..rewrite import Rewrite, frozen_attrs, remove_dead


def simplify(graph: Graph) -> Graph:
    rw = Rewrite(graph)
    seen: dict[tuple, int] = {}      # (op, inputs, attrs) -> id, for CSE
    users = graph.users()
    for n in graph.nodes.values():
        n = rw.read(n)
        same = _noop_input(rw.graph, n)
        if same is not None:
            rw.rename(n.id, same)
            continue
        n = _fold(rw.graph, n, users)
        key = (n.op, n.inputs, n.attrs)
        if key in seen:
            rw.rename(n.id, seen[key])
            continue
        seen[key] = n.id
        rw.put(n)
    return remove_dead(rw.finish())


def _noop_input(g: Graph, n: Node) -> int | None:
    """The input a node merely passes through, if it is a no-op (as its op declares)."""
    op = REGISTRY[n.op]
    if n.inputs and op.identity(n.attr, g.nodes[n.inputs[0]], n):
        return n.inputs[0]
    if op.multiplies:
        for keep, other in ((0, 1), (1, 0)):
            o = g.nodes[n.inputs[other]]
            if _constant(o) and o.attr["value"] == 1.0 and g.nodes[n.inputs[keep]].shape == n.shape:
                return n.inputs[keep]
    return None


def _constant(n: Node) -> bool:
    return REGISTRY[n.op].source == "consts"


def _fold(g: Graph, n: Node, users: dict[int, list[int]]) -> Node:
    """reshape(reshape(x)) -> reshape(x); a matmul operand that swaps its last two axes (x.T) ->
    the matmul's transpose flag, and the same swap of a matmul's result (read by nothing else) ->
    the product of the swapped operands, (a b)^T = b^T a^T: a tied lm_head (x @ wte.T) reads wte as
    it is, and its gradient comes out in wte's layout."""
    op = REGISTRY[n.op]
    if op.reinterprets and REGISTRY[g.nodes[n.inputs[0]].op].reinterprets:
        return replace(n, inputs=g.nodes[n.inputs[0]].inputs)
    if _swap_of_last_two(n):
        x = g.nodes[n.inputs[0]]
        if REGISTRY[x.op].plain_product and len(users.get(x.id, ())) == 1:
            a = x.attr
            attrs = dict(a, ta=not a["tb"], tb=not a["ta"])
            return replace(n, op=x.op, inputs=x.inputs[::-1], attrs=frozen_attrs(attrs))
    if op.plain_product:
        attrs, inputs = n.attr, list(n.inputs)
        for k, flag in enumerate(("ta", "tb")):
            x = g.nodes[inputs[k]]
            if _swap_of_last_two(x):
                inputs[k], attrs[flag] = x.inputs[0], not attrs[flag]
        return replace(n, inputs=tuple(inputs), attrs=frozen_attrs(attrs))
    return n


def _swap_of_last_two(n: Node) -> bool:
    return REGISTRY[n.op].permutes and _swaps_last_two(n.attr["perm"])


def _swaps_last_two(perm) -> bool:
    n = len(perm)
    return n >= 2 and list(perm) == [*range(n - 2), n - 1, n - 2]
