"""Rematerialisation: recompute activations in the backward instead of keeping them.

Policy: a forward node is recomputed for its backward readers when
  - it is one of the policy's roots, as ops declare them (registry's remat_root) -- "attention":
    causal softmax; "gelu": the MLP's GELU outputs (as torch.compile's partitioner recomputes
    pointwise ops); "all": those, pointwise ops (a fused chain included) and LayerNorm's normalised
    rows -- together with the plain matrix products that feed only it (the attention scores' GEMM); an output of an op with several is recomputed by
    running that op again, all its outputs with it (LayerNorm's statistics come out again too,
    unread: the backward reads the ones the forward saved);
  - recomputing adds no memory: the inputs at the edge of what is recomputed are sources or are
    read in the backward anyway (the residual stream a LayerNorm reads is kept for its gradient,
    the pre-activation of GELU for GELU's gradient, q and k for their own gradients), so only
    the recomputed outputs stop living across the step.
Each clone is scheduled just before the first backward reader ("compute late"), so the original
dies after its last forward reader. "attention" drops the largest activation of long sequences,
the (T x T) attention probabilities, at the price of one more (T x T x D) GEMM per layer -- the
trade FlashAttention makes; "gelu" drops the widest activation a fused-attention model keeps, one
elementwise pass per layer; "all" also drops every LayerNorm and GELU output. The compiler's
default, "auto", measures the trade on the memory plan (see `choose`).
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph, Node
from ..ops import REGISTRY
from ..rewrite import Rewrite, fresh_id, pinned
from .memory import view_shift

POLICIES = ("none", "attention", "gelu", "all")
AUTO = "auto"  # the compiler's default: attention where that saves a quarter of the work region (see `choose`)
WORTH_IT = 0.25


def choose(work_peaks: dict[str, int], room: int | None = None) -> str:
    """The policy `auto` stands for, given each policy's work peak and the bytes the work region
    may take on the target (None: no bound): recompute the attention probabilities when that saves
    at least a quarter of the work region. They grow with the square of the sequence length and
    every other activation linearly, so long sequences recompute them (GPT-2 124M at 1024 tokens: a
    third of the region) and short ones keep them (the seed's 256 tokens: a sixth), sparing a GEMM
    and a softmax per layer. Where that does not fit, the GELU outputs are recomputed too, one
    elementwise pass a layer, and then everything `all` names; where nothing fits, the smallest
    (whose arena the refusal then names)."""
    saved = work_peaks["none"] - work_peaks["attention"]
    chosen = "attention" if saved >= WORTH_IT * work_peaks["none"] else "none"
    if room is None or work_peaks[chosen] <= room:
        return chosen
    return next((p for p in ("gelu", "all") if work_peaks[p] <= room), min(work_peaks, key=work_peaks.get))


def rematerialize(graph: Graph, policy: str = "attention") -> Graph:
    if "loss" not in graph.outputs or policy == "none":
        return graph

    def root(n: Node) -> bool:
        op = REGISTRY[n.op]
        if policy != "all":
            return op.remat_root == policy
        if op.kind == "projection":
            # a row normaliser's rows and its epilogue's result; its statistics are saved, not recomputed
            normaliser = REGISTRY[graph.nodes[n.inputs[0]].op].row_normaliser
            return normaliser is not None and n.attr["index"] not in normaliser.statistics
        return op.kind == "elementwise" or op.remat_root is not None

    boundary = graph.outputs["loss"]  # autodiff emits every backward node after the loss
    users, kept = graph.users(), pinned(graph)

    def late_readers(i: int) -> list[int]:
        return [u for u in users[i] if u > boundary]

    projections = graph.projections()

    def chain(n: Node) -> list[int] | None:
        """n and the private producers to recompute with it, inputs first; None if it would
        keep something alive that is not kept anyway."""
        if REGISTRY[n.op].kind == "projection":  # the op that writes it, with every output
            op = chain(graph.nodes[n.inputs[0]])
            return None if op is None else op + projections[n.inputs[0]]
        part = []
        for i in n.inputs:
            x = graph.nodes[i]
            if REGISTRY[x.op].kind == "source" or late_readers(i):
                continue
            # a plain product is recomputed only as the private input of a root
            if REGISTRY[x.op].plain_product and users[i] == [n.id] and x.id not in kept:
                sub = chain(x)
                if sub is None:
                    return None
                part += sub
                continue
            return None
        return part + [n.id]

    plans: dict[int, list[int]] = {}  # root -> nodes to recompute, inputs first
    for n in graph.nodes.values():
        late = late_readers(n.id)
        if root(n) and n.id not in kept and n.id < boundary and late and len(late) < len(users[n.id]):
            plan = chain(n)
            if plan is not None:
                plans[n.id] = plan
    if not plans:
        return graph
    clone_of: dict[int, int] = {}
    for root, plan in plans.items():
        for orig in plan:
            clone_of.setdefault(orig, None)
    def first_work(i: int) -> int:
        """The first backward node that computes from i, through the views that only rename it: a
        view runs as soon as its input exists (passes/schedule.py), so a clone scheduled by its
        view reader's id would come at the start of the backward and live through all of it."""
        return min(first_work(u) if view_shift(graph.nodes[u], graph.nodes) is not None else u
                   for u in late_readers(i))

    first_late: dict[int, int] = {}  # where each clone enters the graph: before its first reader
    needed: dict[int, int] = {}      # where the schedule places it: before the first that computes
    for root, plan in plans.items():
        for orig in plan:
            first_late[orig] = min(first_late.get(orig, 1 << 62), min(late_readers(root)))
            needed[orig] = min(needed.get(orig, 1 << 62), first_work(root))
    for orig in sorted(clone_of, reverse=True):  # a clone's inputs must be recomputed before it
        for i in graph.nodes[orig].inputs:
            if i in clone_of:
                first_late[i] = min(first_late[i], first_late[orig])
                needed[i] = min(needed[i], needed[orig])
    # The clones' ids are drawn from the input graph itself, so the variants built from one graph
    # (one per policy, which the compiler compares) never give one id to two different clones.
    for orig in sorted(clone_of):
        clone_of[orig] = fresh_id(graph)
    rw = Rewrite(graph)
    rw.graph.late = {clone_of[o]: needed[o] for o in clone_of}
    pending = sorted(clone_of, key=lambda o: (first_late[o], o))
    for n in graph.nodes.values():
        while pending and first_late[pending[0]] == n.id:  # clones enter just before their reader
            orig = graph.nodes[pending.pop(0)]
            rw.put(replace(orig, id=clone_of[orig.id], inputs=tuple(clone_of.get(i, i) for i in orig.inputs)))
        if n.id > boundary:
            n = replace(n, inputs=tuple(clone_of.get(i, i) if i in plans else i for i in n.inputs))
        rw.put(n)
    return rw.finish()
