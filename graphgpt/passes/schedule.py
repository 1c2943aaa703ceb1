"""Schedule: a deterministic execution order of the graph's computed nodes.

Ties between ready nodes go to the node created first, which keeps the order of the model file
in the forward and the reverse order in the backward.
"""
from __future__ import annotations

import networkx as nx

from ..ir import SOURCE_OPS, Graph


def schedule(graph: Graph) -> list[int]:
    order = nx.lexicographical_topological_sort(graph.to_networkx(), key=lambda i: i)
    return [i for i in order if graph.nodes[i].op not in SOURCE_OPS]
