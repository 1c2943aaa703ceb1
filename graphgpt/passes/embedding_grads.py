"""The embedding gradient of a small table as a GEMM: one_hot(ids) @ g.

embedding_grad sums the gradient rows of each id into its table row (families/embedding/embedding.cu.j2):
without atomics, each block scans every id for its own rows, so its time follows the most
frequent id. In text a few ids are most of them: on the seed (172 characters, 4096 ids a step,
the space 590 of them) the kernel took 63 us on text and 33 us on uniform ids (H200). The same
sum is a product, one_hot(ids) (rows x ids, zeros and ones) times the gradient rows (ids x
width), which cuBLAS runs on the tensor cores in 6 us after a 3 us one_hot kernel: exact in
bf16 (the ones and the gradient's bf16 values are exact products) with float32 sums, as the
kernel's. So a bf16 plan's embedding gradient of a table whose one-hot matrix has at most
ONE_HOT_ELEMENTS elements becomes that GEMM; larger tables (GPT-2's 50304 rows) keep the
scatter-add, whose one-hot matrix would be 16384 x 50304.

The GEMM keeps the embedding gradient's id, so its readers and the graph's roles are unchanged;
the fusion pass then folds the cast to float32 into it, or, with tied weights, gives it to the
classifier's weight-gradient GEMM as the residual that GEMM adds onto.

A large table (more than ONE_HOT_ELEMENTS one-hot elements, any type) of at most SORTED_IDS ids
sums its rows from the ids sorted once instead: id_order, one block that sorts the (id, position)
pairs in shared memory, then embedding_grad_sorted, which reads each gradient row once and adds a
table row's in position order (np.add.at's, so the sums are the scatter-add's to the bit). On
GPT-2 124M's 16384 ids and 50304 rows the scatter-add took 336-461 us at the end of the backward,
where its scans of the ids are most of its time.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph, Node
from ..ops import REGISTRY
from ..ops.registry import prod
from ..rewrite import Rewrite, frozen_attrs

ONE_HOT_ELEMENTS = 1 << 23  # 16 MiB of bf16
SORTED_IDS = 1 << 15  # ids id_order's block sorts: their keys fill 128 KiB of shared memory


def embedding_grads(graph: Graph) -> Graph:
    chosen = {n.id: form for n in graph.nodes.values() if REGISTRY[n.op].scatters_rows and (form := _form(graph, n))}
    if not chosen:
        return graph
    rw = Rewrite(graph)
    out = rw.graph
    for n in graph.nodes.values():  # in order: what the new form reads, just before it
        if n.id not in chosen:
            rw.put(n)
            continue
        ids, g = (out.value(i) for i in n.inputs)
        if chosen[n.id] == "one_hot":
            hot = out.add("one_hot", (ids,), rows=n.attr["rows"], dtype=g.dtype)
            rows = g.reshape(-1, g.shape[-1])
            for v in (hot, rows):
                rw.put(replace(out.nodes[v.id], where=n.where))
            attrs = {"ta": False, "tb": False, **({"dtype": n.attr["dtype"]} if "dtype" in n.attr else {})}
            rw.put(Node(n.id, "matmul", (hot.id, rows.id), frozen_attrs(attrs), n.shape, n.dtype, n.where))
        else:
            order = out.add("id_order", (ids,), rows=n.attr["rows"])
            rw.put(replace(out.nodes[order.id], where=n.where))
            rw.put(replace(n, op="embedding_grad_sorted", inputs=(order.id, g.id)))
    return rw.finish()


def _form(graph: Graph, n: Node) -> str | None:
    """How an embedding gradient is computed: "one_hot" (a GEMM), "sorted", or None (the scatter-add)."""
    ids, g = (graph.nodes[i] for i in n.inputs)
    n_ids = prod(ids.shape)
    elements = n.attr["rows"] * n_ids
    if elements <= ONE_HOT_ELEMENTS:
        return "one_hot" if g.dtype == "bf16" else None
    return "sorted" if n_ids <= SORTED_IDS and elements < 1 << 32 else None  # id * ids + position in 32 bits
