"""Sum groups: column sums that can run together become one launch (a `sum_group`).

A layer's backward ends with up to six small column reductions over the rows of its gradients:
the four biases' gradients and LayerNorm's two (paired) parameter gradients. Each reads a few MB
and takes a few microseconds mostly spent filling and draining the GPU, one after another. Once
the layer's gradients exist, all of them can run: so the first of them in the schedule takes in
every later one whose inputs are already computed where it runs, and the blocks of all of them
share one grid.

Only small sums group (MAX_ELEMENTS): larger ones are bandwidth-bound alone.
A member moves earlier, never later: its inputs' lifetimes do not grow, and every reader of its
results still comes after it. Members are the reductions that run in the reduction kernels' cols
mode (a sum, or a fused_sum with its prologue and results, over leading axes), which share one
block shape. The schedule is computed once to find the groups; the group takes the first
member's id, so the schedule puts it where the first member ran.
"""
from __future__ import annotations

import networkx as nx

from ..ir import TUPLE, Graph, Node
from ..ops import REGISTRY
from ..rewrite import Rewrite, frozen_attrs, projection
from .schedule import schedule

# Column sums up to this size are latency-bound on an H200 and gain from sharing a launch: the
# seed's (4096 rows of 384 to 1536 columns) took 273 us a step alone, 152 us in groups. GPT-2
# 124M's (16384 rows of 768 to 3072) stream at 2.5 TB/s alone and were slower in groups (1.89 ms
# a step against 1.56), so they stay launches of their own.
MAX_ELEMENTS = 1 << 23


def group_sums(graph: Graph) -> Graph:
    order = schedule(graph)
    place = {i: k for k, i in enumerate(order)}  # sources are not scheduled: they exist from the start
    candidates = [graph.nodes[i] for i in order if _column_sum(graph, graph.nodes[i])]
    groups, grouped = [], set()
    for k, first in enumerate(candidates):
        if first.id in grouped:
            continue
        start = place[first.id]
        group = [first] + [m for m in candidates[k + 1:] if m.id not in grouped
                           and all(place.get(i, -1) < start for i in m.inputs)]
        if len(group) > 1:
            groups.append(group)
            grouped |= {m.id for m in group}
    return _rewritten(graph, groups) if groups else graph


def _column_sum(graph: Graph, n: Node) -> bool:
    """A sum (or fused_sum) over leading axes that keeps at least one (the reductions' cols mode),
    of at most MAX_ELEMENTS."""
    if REGISTRY[n.op].reduction is None or n.attr["keepdims"]:
        return False
    if max(graph.nodes[i].size for i in n.inputs) > MAX_ELEMENTS:
        return False
    rank = max(len(graph.nodes[i].shape) for i in n.inputs)
    axes = sorted(n.attr["axes"])
    return axes == list(range(len(axes))) and len(axes) < rank


def _rewritten(graph: Graph, groups: list[list[Node]]) -> Graph:
    """Each group as one tuple node at its first member's id. A member's results become the
    group's outputs, in order: a tuple member's output nodes point at the group instead, a plain
    member's value keeps its id (the first member's, which the group takes, moves to a new one)."""
    projections, rw = graph.projections(), Rewrite(graph)
    taken: dict[int, Node | None] = {}  # id -> the node now at it (None: gone, computed by its group)
    for group in groups:
        first, inputs, members, specs = group[0], [], [], []
        for m in group:
            taken.setdefault(m.id, None)
            for r in projections[m.id] if m.specs else [m.id]:
                at = r
                if r == first.id:
                    at = rw.fresh_id()
                    rw.rename(r, at)
                value = graph.nodes[r]
                taken[at] = projection(at, first.id, len(specs), value)
                specs.append((value.shape, value.dtype))
            inputs += m.inputs
            members.append((m.op, m.attrs, len(m.inputs)))
        taken[first.id] = Node(first.id, "sum_group", tuple(inputs), frozen_attrs({"members": tuple(members)}), (),
                               TUPLE, first.where, specs=tuple(specs))
    nodes = {i: rw.read(n) for i, n in graph.nodes.items() if i not in taken}
    nodes |= {i: n for i, n in taken.items() if n is not None}
    # inputs before users, in the old order where it allows: a group's inputs may come after its
    # first member there
    dag = nx.DiGraph([(i, u) for u, n in nodes.items() for i in n.inputs])
    dag.add_nodes_from(nodes)
    position = {i: k for k, i in enumerate(graph.nodes)}
    for i in nx.lexicographical_topological_sort(dag, key=lambda i: position.get(i, len(position) + i)):
        rw.put(nodes[i])
    return rw.finish()
