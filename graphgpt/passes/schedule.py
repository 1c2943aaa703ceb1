"""Schedule: a deterministic execution order of the graph's computed nodes.

Ties between ready nodes go to the node created first, which keeps the order of the model file
in the forward and the reverse order in the backward. Collectives go first of all: a gradient's
allreduce starts as soon as the gradient is final, so communication overlaps the rest of the
backward instead of waiting for its end. So do the new values of persistent state: one that is
ready during the backward (a micro-batch's gradient folded into its accumulator) then frees the
gradient at once instead of keeping it to the end of the step. Sources cost nothing and come
first, so no node waits for one; so do views (a reshape, a contiguous slice), which only name
memory their input already holds: a node that reads one waits for nothing behind it (the last
chunk's weight-gradient GEMM of the classifier in chunks, whose slices were made after everything
else). A recomputed node (graph.late) takes its reader's place in that
order, so it runs as late as it can. An output of an op with several takes its op's place: it is
written when the op runs, so its readers are not held back behind unrelated work by its own id
(the fused loss's gradient output gets a new id, and would otherwise wait for the recomputed
activations the backward needs only later). Backward work that reads nothing but the step's
inputs (the ids' order for a large table's embedding gradient) goes first as well: beside the
forward, on the side stream where only the gradient branch reads it (passes/streams.py), instead
of in the backward's chain.
"""
from __future__ import annotations

import networkx as nx

from ..ir import Graph
from ..ops import REGISTRY
from ..ops.registry import BACKWARD_ONLY
from .memory import view_shift


def schedule(graph: Graph) -> list[int]:
    urgent = {i for i, n in graph.nodes.items() if REGISTRY[n.op].kind in ("source", "collective")
              or view_shift(n, graph.nodes) is not None}
    urgent |= set(graph.updates.values())
    urgent |= {i for i, n in graph.nodes.items() if REGISTRY[n.op].nondiff == BACKWARD_ONLY
               and all(REGISTRY[graph.nodes[j].op].kind == "source" for j in n.inputs)}

    def priority(i: int) -> tuple[int, int, int]:
        n = graph.nodes[i]
        at = n.inputs[0] if REGISTRY[n.op].kind == "projection" else i
        return (0 if i in urgent else 1, graph.late.get(at, at), i)
    order = nx.lexicographical_topological_sort(_clones_wait(graph), key=priority)
    return [i for i in order if REGISTRY[graph.nodes[i].op].kind != "source"]


def _clones_wait(graph: Graph) -> nx.DiGraph:
    """The graph's dependencies, and a recomputed node's on everything else its reader needs: a
    clone is ready only when its reader would be, so it is not computed early and kept (node ids
    order the backward only roughly: the classifier's chunks, made later, have the largest)."""
    g = graph.to_networkx()
    for clone, reader in graph.late.items():
        if reader not in graph.nodes:
            continue
        for p in graph.nodes[reader].inputs:
            if p != clone and not nx.has_path(g, clone, p):
                g.add_edge(p, clone)
    return g
