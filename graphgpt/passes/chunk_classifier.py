"""The classifier in chunks of the batch: only one chunk's logits are ever in memory.

The logits are a step's largest tensor (batch x sequence x vocabulary: 1.5 GiB at GPT-2 124M in
bf16), and they are alive at the step's peak, the end of the forward, where every saved activation
is too. Their gradient needs nothing but their own row and the loss's seed, so the classifier can
run its forward and its backward one chunk of sequences at a time, right after the forward:

    for each chunk k of the batch:
        z_k  = a_k @ W                                  the chunk's logits
        loss_k, dz_k = cross_entropy(z_k), its gradient  one kernel, dz_k over z_k (fuse.py)
        da[k] = dz_k @ W.T                              into its rows of the input's gradient
        dW  = a_k.T @ dz_k + dW                         the GEMM adds the chunks before (beta = 1)
    loss = mean of the loss_k

The chunks are of equal size, so the loss (a mean over tokens) is the mean of the chunks' means,
and each chunk's gradient takes the loss's seed over the chunk count. The weight gradient is
summed in float32 whatever the compute type: a bf16 plan's weight gradients come out of their
GEMMs in float32 anyway (fuse.py folds the cast). What the chunking costs is a smaller GEMM shape
and a few more launches; by default the count comes from the bytes the logits take.

The rewrite runs on the joint graph after autodiff and before fusion, which then fuses each
chunk's loss with its gradient, folds the casts and gives the GEMMs their residuals as it would
for the whole. The classifier's backward readers keep their ids: the gradient of the input is a
concat built in place from the chunks' pieces, the weight's is the last of the sums, and the loss
is the mean; so the graph's outputs, gradients and the boundary rematerialisation draws at the
loss stay where they were. The chunks' nodes are new, with ids after all the others, and are
emitted at the place of the old gradient. The schedule breaks ties by id and runs views (the
chunks' slices and reshapes) as soon as they can be, so each chunk runs whole before the next
starts, and its logits are dead before the next chunk's are written.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..ir import Graph, Node
from ..ops import REGISTRY
from ..rewrite import Rewrite, frozen_attrs, remove_dead

# A chunk's logits at most this large: GPT-2 124M's bf16 logits (1.5 GiB) in four chunks. Each
# further halving saves half as much again but costs one more pass of the float32 weight
# gradient's sum (154 MB read and written at 124M, about 0.1 ms): docs/PERFORMANCE.md measures
# 1, 4, 8 and 16 chunks.
CHUNK_BYTES = 512 << 20
ACCUMULATE = "f32"  # the weight gradient's sum over the chunks


@dataclass
class Classifier:
    """The nodes of the pattern, by what their ops declare: loss = a row loss (cross_entropy) of
    z = a @ W (a plain matrix product) and targets t, and its gradient dz (the loss's grad op) read
    by row-wise products (the input's gradient) and, through a reshape to rows, by products that
    contract over the rows (the weight's gradient)."""
    loss: Node
    logits: Node
    grad: Node
    row_gemms: list[Node]      # dz @ W.T, (batch, sequence, width)
    flat: Node | None          # dz as (rows, vocabulary)
    weight_gemms: list[tuple[Node, Node]]  # x.T @ y over the rows (one of x, y the flat dz), and
                                           # what the other operand's rows are read from
    rows: int                  # batch x sequence


def classifier(graph: Graph) -> Classifier | None:
    """The program's classifier, if it has the shape the chunking knows; otherwise None."""
    if "loss" not in graph.outputs:
        return None
    nodes, users = graph.nodes, graph.users()
    loss = nodes[graph.outputs["loss"]]
    row_loss = REGISTRY[loss.op].loss
    if row_loss is None:
        return None
    z = nodes[loss.inputs[0]]
    if not _product(z) or z.attr["ta"] or len(nodes[z.inputs[1]].shape) != 2 or len(z.shape) < 3:
        return None
    grads = [nodes[u] for u in users[z.id] if u != loss.id]
    if len(grads) != 1 or grads[0].op != row_loss.grad or grads[0].inputs[:2] != loss.inputs:
        return None
    grad, rows = grads[0], z.size // z.shape[-1]
    place = {nid: k for k, nid in enumerate(nodes)}
    if any(place[u] < place[grad.id] for u in users[loss.id]):
        return None  # the loss is read before its gradient exists: the chunks could not come first
    row_gemms, flat, weight_gemms = [], None, []
    for u in (nodes[i] for i in users[grad.id]):
        if _product(u) and u.inputs[0] == grad.id and not u.attr["ta"] and len(nodes[u.inputs[1]].shape) == 2:
            row_gemms.append(u)
        elif _reshape(u) and u.shape == (rows, z.shape[-1]) and flat is None:
            flat = u
        else:
            return None
    for u in (nodes[i] for i in users[flat.id]) if flat else ():
        other = nodes[u.inputs[1] if u.inputs[0] == flat.id else u.inputs[0]]
        if not (_product(u) and u.attr["ta"] and not u.attr["tb"] and other.shape[0] == rows
                and len(other.shape) == 2 and flat.id in u.inputs and other.id != flat.id):
            return None
        # the other operand's rows, from something computed before the gradient: the chunks run there
        source = other if place[other.id] < place[grad.id] else nodes[other.inputs[0]] if _reshape(other) else None
        if source is None or place[source.id] > place[grad.id] or source.shape[0] not in (rows, z.shape[0]):
            return None
        weight_gemms.append((u, source))
    return Classifier(loss, z, grad, row_gemms, flat, weight_gemms, rows)


def _product(n: Node) -> bool:
    return REGISTRY[n.op].plain_product


def _reshape(n: Node) -> bool:
    return REGISTRY[n.op].reinterprets


def _chunk_count(found: Classifier | None, requested: int) -> int:
    """The chunks to split the batch's sequences into: `requested`, or with 0 the fewest (dividing
    the batch) whose logits are at most CHUNK_BYTES each; with 0, 1 where the program has no
    classifier the chunking knows."""
    if found is None and requested > 1:
        raise UserError(f"classifier_chunks={requested}: the training loss is not the cross-entropy of a "
                        "matrix product's logits, which is what the classifier's chunks split")
    if found is None or requested:
        return max(requested, 1)
    batch = found.logits.shape[0]
    return next(k for k in range(1, batch + 1) if batch % k == 0 and
                (found.logits.nbytes // k <= CHUNK_BYTES or k == batch))


def chunk_classifier(graph: Graph, requested: int) -> tuple[Graph, int]:
    """The program with its classifier in chunks (`requested` of them, 0: chosen by the logits'
    bytes), and how many; the program itself where that is one."""
    found = classifier(graph)
    chunks = _chunk_count(found, requested)
    if chunks == 1:
        return graph, 1
    nodes, users = graph.nodes, graph.users()
    z, loss, grad = found.logits, found.loss, found.grad
    a, weight = z.inputs
    targets, seed = grad.inputs[1], grad.inputs[2]
    batch = z.shape[0]
    assert batch % chunks == 0, f"{chunks} chunks do not divide the batch of {batch}"
    per, chunk_rows = batch // chunks, found.rows // chunks  # sequences and rows of a chunk

    # The weight gradients' readers: the float32 cast each is read by in a bf16 plan becomes the
    # sum itself (its id, so the parameter's gradient stays that node); otherwise the sum is cast
    # back to the GEMM's type under the GEMM's id.
    sums: dict[int, int] = {}  # weight GEMM -> the node that holds the chunks' sum
    for m, _ in found.weight_gemms:
        readers = [nodes[u] for u in users[m.id]]
        casts_up = len(readers) == 1 and REGISTRY[readers[0].op].casts and readers[0].dtype == ACCUMULATE
        sums[m.id] = readers[0].id if casts_up else m.id
    replaced = {z.id, loss.id, grad.id, *(m.id for m, _ in found.weight_gemms)} | ({found.flat.id} if found.flat else set())

    rw = Rewrite(graph)
    out = rw.graph
    out.locate = lambda: loss.where
    pieces = {m.id: [] for m in found.row_gemms}      # row GEMM -> its chunks' products
    partial: dict[int, tuple[int, int]] = {}            # weight GEMM -> (sum of the chunks before, last chunk's)

    def emit_chunks() -> None:
        running = None
        g = nodes[seed]
        share = (out.const(g.attr["value"] / chunks) if REGISTRY[g.op].source == "consts" else
                 out.add("mul", (seed, out.const(1.0 / chunks))))
        for k in range(chunks):
            a_k = out.add("slice", (a,), axis=0, start=k * per, stop=(k + 1) * per)
            t_k = out.add("slice", (targets,), axis=0, start=k * per, stop=(k + 1) * per)
            z_k = out.add(z.op, (a_k, weight), ta=False, tb=z.attr["tb"])
            loss_k = out.add(loss.op, (z_k, t_k))
            dz_k = out.add(grad.op, (z_k, t_k, share))
            for m in found.row_gemms:
                pieces[m.id].append(out.add(m.op, (dz_k, m.inputs[1]), ta=False, tb=m.attr["tb"]).id)
            flat_k = dz_k.reshape(chunk_rows, z.shape[-1]) if found.flat else None
            for m, source in found.weight_gemms:
                if source.shape[0] == found.rows:  # the rows themselves
                    rows_k = out.add("slice", (source.id,), axis=0, start=k * chunk_rows, stop=(k + 1) * chunk_rows)
                else:  # the sequences the rows are a reshape of
                    rows_k = out.add("slice", (source.id,), axis=0, start=k * per, stop=(k + 1) * per)
                    rows_k = rows_k.reshape(chunk_rows, source.size // found.rows)
                x_k, y_k = (flat_k, rows_k) if m.inputs[0] == found.flat.id else (rows_k, flat_k)
                product = out.add(m.op, (x_k, y_k), ta=True, tb=False)
                if product.dtype != ACCUMULATE:
                    product = out.add("cast", (product,), dtype=ACCUMULATE)
                before = partial.get(m.id, (None, None))[0]
                if k == chunks - 1:
                    partial[m.id] = (before, product.id)  # added where the gradient was
                else:  # the new product first: fuse.py gives it the sum so far as its residual
                    partial[m.id] = (product.id if before is None else out.add("add", (product, before)).id, None)
            running = loss_k if running is None else out.add("add", (running, loss_k))
        share_of_mean = out.const(1.0 / chunks)
        rw.put(Node(loss.id, "mul", (running.id, share_of_mean.id), (), loss.shape, loss.dtype, loss.where))

    def emit_sum(m: Node, nid: int) -> None:
        before, last = partial[m.id]
        if nid != m.id or m.dtype == ACCUMULATE:  # the sum is the node its readers read
            rw.put(Node(nid, "add", (last, before), (), m.shape, ACCUMULATE, m.where))
            return
        total = rw.fresh_id()  # read in the GEMM's type: the sum, then its cast back under the GEMM's id
        rw.put(Node(total, "add", (last, before), (), m.shape, ACCUMULATE, m.where))
        rw.put(Node(nid, "cast", (total,), frozen_attrs({"dtype": m.dtype}), m.shape, m.dtype, m.where))

    weight_of = {sums[m.id]: m for m, _ in found.weight_gemms}
    for n in graph.nodes.values():
        if n.id == grad.id:
            emit_chunks()
        elif n.id in pieces:
            rw.put(Node(n.id, "concat", tuple(pieces[n.id]), frozen_attrs({"axis": 0}), n.shape, n.dtype, n.where))
        elif n.id in weight_of:
            emit_sum(weight_of[n.id], n.id)
        elif n.id not in replaced:
            rw.put(n)
    return remove_dead(rw.finish()), chunks
