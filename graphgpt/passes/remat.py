"""Rematerialisation: recompute cheap activations in the backward instead of keeping them.

Policy: a forward node is recomputed for its backward readers when
  - it is cheap: pointwise (a fused chain included) or a LayerNorm normalisation, a few flops per
    element and no GEMM;
  - recomputing adds no memory: every input is a source or is read in the backward anyway (the
    residual stream a LayerNorm reads is kept for its gradient; the pre-activation a GELU reads
    is kept for GELU's gradient), so only the node's own output stops living across the step.
The clone is scheduled just before its first backward reader ("compute late"), so the original
dies after its last forward reader. LayerNorm and GELU outputs of every layer qualify; attention
probabilities do not (their input is a GEMM output nothing else keeps).
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import SOURCE_OPS, Graph
from ..ops import REGISTRY


def rematerialize(graph: Graph) -> Graph:
    if "loss" not in graph.outputs:
        return graph
    boundary = graph.outputs["loss"]  # autodiff emits every backward node after the loss
    users = graph.users()
    pinned = set(graph.outputs.values()) | set(graph.updates.values()) | set(graph.grads.values())

    def late_readers(i: int) -> list[int]:
        return [u for u in users[i] if u > boundary]

    clones: dict[int, int] = {}  # original -> clone id
    for n in graph.nodes.values():
        cheap = REGISTRY[n.op].kind == "elementwise" or n.op == "normalize"
        if (not cheap or n.id in pinned or n.id > boundary or not late_readers(n.id)
                or len(late_readers(n.id)) == len(users[n.id])):
            continue
        if all(graph.nodes[i].op in SOURCE_OPS or late_readers(i) for i in n.inputs):
            clones[n.id] = graph._next_id
            graph._next_id += 1
    if not clones:
        return graph
    first_late = {orig: min(late_readers(orig)) for orig in clones}
    out = Graph(outputs=dict(graph.outputs), updates=dict(graph.updates), grads=dict(graph.grads))
    out._next_id = graph._next_id
    out.late = {clone: first_late[orig] for orig, clone in clones.items()}
    for n in graph.nodes.values():
        for orig, clone in clones.items():  # a clone enters the order just before its first reader
            if first_late[orig] == n.id:
                out.nodes[clone] = replace(graph.nodes[orig], id=clone, where=graph.nodes[orig].where)
        if n.id > boundary:
            n = replace(n, inputs=tuple(clones.get(i, i) for i in n.inputs))
        out.nodes[n.id] = n
    return out
