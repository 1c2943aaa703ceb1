"""Schedule: a deterministic execution order of the graph's computed nodes.

Ties between ready nodes go to the node created first, which keeps the order of the model file
in the forward and the reverse order in the backward. Collectives go first of all: a gradient's
allreduce starts as soon as the gradient is final, so communication overlaps the rest of the
backward instead of waiting for its end. A recomputed node (graph.late) takes its reader's place
in that order, so it runs as late as it can.
"""
from __future__ import annotations

import networkx as nx

from ..ir import SOURCE_OPS, Graph
from ..ops import REGISTRY


def schedule(graph: Graph) -> list[int]:
    def priority(i: int) -> tuple[int, int, int]:
        collective = REGISTRY[graph.nodes[i].op].kind == "collective"
        return (0 if collective else 1, graph.late.get(i, i), i)
    order = nx.lexicographical_topological_sort(graph.to_networkx(), key=priority)
    return [i for i in order if graph.nodes[i].op not in SOURCE_OPS]
