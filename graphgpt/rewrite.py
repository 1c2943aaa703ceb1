"""The rewrite engine: how a pass changes a graph without handling its bookkeeping by hand.

A pass decides what to compute; this module keeps the graph's invariants while it does:
- node ids: a new node takes an id no node of the graph, or of any graph rebuilt from it, has had
  (`fresh_id`); a node that replaces another at its place keeps the other's id, so the dumps of
  successive stages, the schedule's ties and the plan's launches name the same node;
- renaming: when a value moves to another id (an op with several outputs takes over a node's id
  and place, its outputs get ids of their own), every reader of it and every program role naming
  it (an output, a parameter's gradient, a new value of state) follows (`Rewrite.rename`,
  `substitute`);
- program roles and recompute places travel with a rebuilt graph (`Rewrite`);
- attributes are stored in the one canonical form equal nodes compare equal in (`frozen_attrs`);
- dead code goes (`remove_dead`), from the values the roles pin (`pinned`).

A rebuilt graph starts with no shared constants: `Graph.const` on it adds a node of its own rather
than finding one of the source's, which a pass may have dropped.
"""
from __future__ import annotations

from dataclasses import replace

from .ir import Graph, Node, _freeze


def fresh_id(graph: Graph) -> int:
    """An id for a new node of `graph`, never given before; `Graph.add` draws from the same count."""
    nid = graph._next_id
    graph._next_id += 1
    return nid


def frozen_attrs(attrs: dict) -> tuple:
    """Attributes as a Node holds them (sorted pairs, lists as tuples), the form `Graph.add`
    stores: two nodes computing the same thing then have equal attrs, which CSE relies on."""
    return _freeze(attrs)


def projection(at: int, of: int, index: int, like: Node) -> Node:
    """The node at id `at` that names output `index` of the op with several outputs at `of`,
    with the shape, type and source line of `like` (the value it holds)."""
    return Node(at, "output", (of,), frozen_attrs({"index": index}), like.shape, like.dtype, like.where)


def pinned(graph: Graph) -> set[int]:
    """The values the program's roles name (its outputs, the new values of state, the gradients):
    a rewrite may change how they are computed but keeps each in memory, at its id."""
    return set(graph.outputs.values()) | set(graph.updates.values()) | set(graph.grads.values())


def substitute(graph: Graph, moved: dict[int, int]) -> Graph:
    """In place: every reader of a value in `moved` and every role naming it now names its new id."""
    for nid, n in graph.nodes.items():
        if any(i in moved for i in n.inputs):
            graph.nodes[nid] = replace(n, inputs=tuple(moved.get(i, i) for i in n.inputs))
    _rename_roles(graph, moved)
    return graph


def _rename_roles(graph: Graph, moved: dict[int, int]) -> None:
    graph.outputs = {k: moved.get(v, v) for k, v in graph.outputs.items()}
    graph.updates = {moved.get(k, k): moved.get(v, v) for k, v in graph.updates.items()}
    graph.grads = {moved.get(k, k): moved.get(v, v) for k, v in graph.grads.items()}


def remove_dead(graph: Graph) -> Graph:
    """In place: drop every node that no pinned value or state being updated depends on. An op
    with several outputs writes all of them, so each output lives (keeps its buffer) while the op
    does."""
    live = pinned(graph) | set(graph.updates)
    for n in reversed(list(graph.nodes.values())):
        if n.id in live:
            live.update(n.inputs)
    live |= {n.id for n in graph.nodes.values() if n.op == "output" and n.inputs[0] in live}
    graph.nodes = {i: n for i, n in graph.nodes.items() if i in live}
    return graph


class Rewrite:
    """A graph rebuilt from `source`, one node at a time in the order they are put (which must be
    inputs before users). It starts with no nodes, and with the source's roles, recompute places
    (`late`, which name places, not values, and so are never renamed) and id count.

    `keep` copies a source node, reading each renamed value at its new id; `put` places a node the
    pass made as it is (an op's output node reads the op at the op's id, even where the op took
    over an id whose old value moved). `finish` gives the graph, its roles renamed."""

    def __init__(self, source: Graph):
        self.source = source
        self.graph = Graph(outputs=dict(source.outputs), updates=dict(source.updates),
                           grads=dict(source.grads), late=dict(source.late))
        self.graph._next_id = source._next_id
        self.renamed: dict[int, int] = {}

    def fresh_id(self) -> int:
        return fresh_id(self.graph)

    def rename(self, old: int, new: int) -> None:
        """The value at `old` is at `new` from now on: for the source nodes kept after this and
        for the roles."""
        self.renamed[old] = new

    def read(self, node: Node) -> Node:
        """A source node reading each renamed input at its new id."""
        if not any(i in self.renamed for i in node.inputs):
            return node
        return replace(node, inputs=tuple(self.renamed.get(i, i) for i in node.inputs))

    def keep(self, node: Node) -> Node:
        return self.put(self.read(node))

    def put(self, node: Node) -> Node:
        self.graph.nodes[node.id] = node
        return node

    def finish(self) -> Graph:
        _rename_roles(self.graph, self.renamed)
        return self.graph
