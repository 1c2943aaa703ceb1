"""Fusion: fewer kernels and fewer passes over memory, by rewriting the joint graph. In order:

0. The loss and its gradient of the same logits and targets become one cross_entropy_with_grad,
   which reads the logits once for both (the gradient's pass yields each row's loss too), and
   writes the gradient over them still. A program without the gradient (eval) keeps the loss op.
1. A cast whose input is a GEMM, a reduction or an embedding gradient read by nothing else is
   folded into it: the op stores its float accumulator in the cast's type directly (attrs
   "dtype"). This is how a bf16 plan's weight gradients come out of their GEMMs in float32,
   without a bf16 rounding on the way.
2. A sum of pads that tile one axis becomes a concat, which the memory plan builds in place: each
   piece is computed straight into its slice (this is how the q, k, v gradients meet), so neither
   the pads nor the adds run. Only along an axis whose pieces are contiguous (every axis before it
   of extent 1); the gradients of slices of an inner axis stay pads and adds.
3. A GEMM takes in the bias and residual adds that read it (fused_matmul): cuBLASLt adds them as it
   writes the product.
4. Pointwise chains: a pointwise node is folded into its users when all of them are pointwise ops
   of its own shape and it is not needed in memory (a gradient, an update, an output); each chain
   becomes one `fused` node, one kernel. A node with several such users is recomputed in each of
   them: a few flops per element are cheaper than writing and re-reading a tensor.
5. At the boundaries where a value would otherwise be materialised:
   - a chain whose only user is a `sum` becomes its prologue (`fused_sum`, LayerNorm's
     sum(g * xhat)); its operands must be of the chain's size or scalars, since the reduction
     kernels walk all of them with the input's indexing;
   - a chain read only by a transpose (seen through a reshape, as where attention splits heads)
     is computed in the transpose's output order (attrs "shape" and "perm" of the fused node);
   - a row normaliser's backward (LayerNorm's, RMSNorm's) takes in the gradient's scaling by gamma
     before it and the residual stream's gradient accumulation after it (fused_normalize_grad);
   - a row normaliser's forward takes in the chain that reads its normalised rows, x_hat * gamma +
     beta (fused_normalize), or the one op that does, RMSNorm's x_hat * weight: the kernel stores
     both, so the affine part is not a pass of its own.
   - a plain sum and a fused_sum over the same leading axes, the sum's input an operand of the
     fused_sum's prologue, become one fused_sum with both results (attrs "results"): LayerNorm's
     beta and gamma gradients, sum(g) and sum(g * xhat), read g once.
GEMMs, other reductions, row ops and broadcasts to larger shapes otherwise stay boundaries.
6. The pointwise new values of persistent state that read one another, and that nothing else
   reads, become one fused_multi with a result for each: a weight's Adam moments, the weight and
   its bf16 copy are one kernel that reads the gradient, the moments and the weight once, instead
   of four that each re-read what the one before wrote.
7. Two pointwise chains of one shape that read a tensor of that shape in common, neither reading
   the other, become one fused_multi with a result for each, which reads their operands once:
   SwiGLU's backward, whose gate and up-projection gradients both read the gate and the gradient
   of the product.

`gelu_epilogues` runs after rematerialisation (which recomputes GELU outputs by their op) and
gives GELU and its gradient to the bf16 GEMMs next to them, cuBLASLt's GELU epilogues:
- GELU of a GEMM (the MLP's first linear): the GEMM writes GELU of its biased product and, as a
  second output, the product itself, which GELU's gradient reads. A recomputed GELU of the same
  product, later in the backward, stays an op of its own.
- GELU's gradient of a GEMM's product read by nothing else (the gradient of GELU's output): the
  GEMM multiplies its product by GELU's derivative at the pre-activation as it writes it, for a
  product of at least GELU_GRAD_MIN_ELEMENTS elements.
Either way the pointwise kernel, its read of the product and its write of the result are gone.
"""
from __future__ import annotations

from dataclasses import replace

from ..families.shape.ops import contiguous_along
from ..ir import TUPLE, Graph, Node
from ..ops import REGISTRY
from ..rewrite import Rewrite, frozen_attrs, pinned, projection, remove_dead, substitute

# Measured on an H200 (tools/gemm_epilogue_check.py): cuBLASLt's GELU-gradient epilogue adds 43 us
# to GPT-2 124M's (16384 x 3072) GEMM, where the gelu_grad kernel it replaces takes 77 us, but 16 us
# to the seed's (4096 x 1536), where the kernel takes about 7 us. GELU's own epilogue pays at both.
# Both are for bf16 products only: in float32 their GELU is 2-3e-6 from float64 (norm-relative),
# where the same GEMM alone is 4e-7 and the gelu kernels are exact to float32.
GELU_GRAD_MIN_ELEMENTS = 1 << 24


def fuse(graph: Graph) -> Graph:
    graph = _gemm_epilogues(_concats(_fold_casts(_loss_with_grad(graph))))
    users, needed = graph.users(), pinned(graph)

    def pointwise(n: Node) -> bool:
        return REGISTRY[n.op].kind == "elementwise"

    inlined = {n.id for n in graph.nodes.values()
               if pointwise(n) and n.id not in needed and users[n.id]
               and all(pointwise(graph.nodes[u]) and graph.nodes[u].shape == n.shape for u in users[n.id])}
    prologues = {}  # sum or transpose id -> its input as a fused node
    for n in (m for m in graph.nodes.values() if _prologue_form(m)):
        src = graph.nodes[n.inputs[0]]
        if pointwise(src) and src.id not in needed and users[src.id] == [n.id]:
            chain = _fused_node(graph, src, inlined)
            if all(graph.nodes[i].size in (1, src.size) for i in chain.inputs):
                prologues[n.id] = chain
    folded = {graph.nodes[s].inputs[0] for s in prologues}
    for n in (m for m in graph.nodes.values() if REGISTRY[m.op].permutes):
        src, reshaped = graph.nodes[n.inputs[0]], {}
        if REGISTRY[src.op].reinterprets and src.id not in needed and users[src.id] == [n.id]:
            reshaped, src = {"shape": src.shape}, graph.nodes[src.inputs[0]]
        if pointwise(src) and src.id not in needed and len(users[src.id]) == 1:
            chain = _fused_node(graph, src, inlined)
            prologues[n.id] = replace(chain, attrs=frozen_attrs({**dict(chain.attrs), **reshaped}))
            folded |= {src.id, n.inputs[0]}
    rows, absorbed = _normalize_grads(graph, users, needed, inlined | folded)
    folded |= absorbed
    rw = Rewrite(graph)
    for n in graph.nodes.values():
        if n.id in rows:
            rw.put(rows[n.id])
            continue
        if n.id in inlined or n.id in folded:
            continue
        if n.id in prologues:
            chain = prologues[n.id]
            n = replace(n, op=_prologue_form(n) or "fused", inputs=chain.inputs,
                        attrs=frozen_attrs({**dict(n.attrs), **dict(chain.attrs)}))
            assert REGISTRY[n.op].infer(n.attr, *(graph.nodes[i] for i in n.inputs)).shape == n.shape
        elif pointwise(n) and any(i in inlined for i in n.inputs):
            n = _fused_node(graph, n, inlined)
        rw.put(n)
    return _sibling_chains(_update_groups(_paired_sums(_normalize_epilogues(rw.finish()))))


def _prologue_form(n: Node) -> str | None:
    """The op a reduction becomes with a pointwise chain of its input folded in (sum: fused_sum);
    None for any other node."""
    reduction = REGISTRY[n.op].reduction
    return reduction.with_prologue if reduction else None


def _sum_with_prologue(n: Node) -> bool:
    reduction = REGISTRY[n.op].reduction
    return reduction is not None and reduction.with_prologue is None


def _chain(n: Node) -> bool:
    """A pointwise chain of step 4: one output, computed by the steps of attrs["program"]."""
    return REGISTRY[n.op].kind == "elementwise" and "program" in n.attr and not n.specs


def _program(n: Node) -> tuple:
    """A pointwise node's steps: a fused chain's program, or a lone op as a program of one step."""
    return n.attr["program"] if _chain(n) else ((n.op, n.attrs, tuple(-1 - k for k in range(len(n.inputs)))),)


def _normalize_epilogues(graph: Graph) -> Graph:
    """Step 5's row normaliser forward rule. The chain (a fused one, or one pointwise op such as
    RMSNorm's weight multiply) takes the normalised rows and, besides them, only values available
    where the normaliser runs: one per column, or scalars (gamma and beta). The normaliser becomes
    its epilogue form (fused_normalize) at its place; the chain's result keeps its id, as the new
    op's last output. The normalised rows stay an output of their own (the backward's
    sum(g * x_hat) reads them)."""
    place = {i: k for k, i in enumerate(graph.nodes)}
    chains: dict[int, tuple[Node, int]] = {}  # normaliser id -> the chain it takes in, and the rows' id
    for f in (m for m in graph.nodes.values() if REGISTRY[m.op].kind == "elementwise"):
        rows = [graph.nodes[i] for i in f.inputs if graph.nodes[i].shape == f.shape]
        if {"perm", "shape"} & set(f.attr) or len(rows) != 1 or REGISTRY[rows[0].op].kind != "projection":
            continue
        norm = graph.nodes[rows[0].inputs[0]]
        normaliser = REGISTRY[norm.op].row_normaliser
        if (normaliser is None or normaliser.with_epilogue is None or rows[0].attr["index"] != normaliser.rows
                or norm.id in chains):
            continue
        others = [graph.nodes[i] for i in f.inputs if i != rows[0].id]
        if all(o.shape in (f.shape[-1:], ()) and (REGISTRY[o.op].kind == "source" or place[o.id] < place[norm.id])
               for o in others):
            chains[norm.id] = f, rows[0].id
    taken = {f.id: norm for norm, (f, _) in chains.items()}
    rw = Rewrite(graph)
    for n in graph.nodes.values():
        if n.id in chains:
            f, rows_id = chains[n.id]
            others = tuple(i for i in f.inputs if i != rows_id)
            arg = {-1 - k: -1 if i == rows_id else -2 - others.index(i) for k, i in enumerate(f.inputs)}
            program = tuple((op, attrs, tuple(a if a >= 0 else arg[a] for a in args))
                            for op, attrs, args in _program(f))
            n = replace(n, op=REGISTRY[n.op].row_normaliser.with_epilogue, inputs=(*n.inputs, *others),
                        attrs=frozen_attrs({**n.attr, "program": program}), specs=(*n.specs, (f.shape, f.dtype)))
        elif n.id in taken:
            norm = graph.nodes[taken[n.id]]
            n = projection(n.id, norm.id, len(norm.specs), n)
        rw.put(n)
    return rw.finish()


def _paired_sums(graph: Graph) -> Graph:
    """Step 5's last rule. The pair becomes one fused_sum with the sum's result first. The tuple
    takes the earlier id and the later place (where every input of both is computed); the later
    sum's result keeps its id, the earlier's gets a new one, which its readers are given instead.
    A pair is taken only when nothing reads the earlier result before the later sum's place."""
    place = {i: k for k, i in enumerate(graph.nodes)}
    users = graph.users()
    pairs: dict[int, tuple[Node, Node, Node]] = {}  # the later one's id -> (the earlier, sum, fused_sum)
    taken: set[int] = set()
    for f in (m for m in graph.nodes.values() if _sum_with_prologue(m)):
        if "results" in f.attr:
            continue
        for i in f.inputs:
            s = next((graph.nodes[u] for u in users[i] if _prologue_form(graph.nodes[u])
                      and u not in taken and _same_sum(graph, graph.nodes[u], f)), None)
            if s is None:
                continue
            first, later = sorted((s, f), key=lambda n: place[n.id])
            if all(place[u] > place[later.id] for u in users[first.id]):
                pairs[later.id] = (first, s, f)
                taken |= {s.id, f.id}
                break
    rw = Rewrite(graph)
    for n in graph.nodes.values():
        if n.id in taken and n.id not in pairs:
            continue  # the earlier of a pair: computed at the later one's place
        if n.id not in pairs:
            rw.keep(n)
            continue
        first, s, f = pairs[n.id]
        results = (-1 - f.inputs.index(s.inputs[0]), len(f.attr["program"]) - 1)
        _put_pair(rw, replace(rw.read(f), id=first.id, attrs=frozen_attrs({**dict(f.attrs), "results": results}),
                              shape=(), dtype=TUPLE, specs=((s.shape, s.dtype), (f.shape, f.dtype)), where=first.where),
                  first, (s, f))
    return rw.finish()


def _put_pair(rw: Rewrite, joined: Node, first: Node, members: tuple[Node, Node]) -> None:
    """Steps 5 and 7: `joined`, at the earlier member `first`'s id, then its outputs, the members'
    values in order. Each keeps its id but first's, which moves to a new one its readers follow."""
    rw.put(joined)
    fresh = rw.fresh_id()
    rw.rename(first.id, fresh)
    for k, m in enumerate(members):
        rw.put(projection(fresh if m is first else m.id, first.id, k, m))


def _same_sum(graph: Graph, s: Node, f: Node) -> bool:
    """A sum that a fused_sum's kernel can compute beside its own: of an input of the prologue's
    shape, over the same leading axes (the reduction's cols mode), into the same type."""
    src, axes = graph.nodes[s.inputs[0]], sorted(s.attr["axes"])
    return (s.shape == f.shape and s.dtype == f.dtype and s.attr.get("dtype") == f.attr.get("dtype")
            and sorted(f.attr["axes"]) == axes == list(range(len(axes))) and s.attr["keepdims"] == f.attr["keepdims"]
            and all(graph.nodes[i].shape == src.shape for i in f.inputs if graph.nodes[i].size != 1))


def _update_groups(graph: Graph) -> Graph:
    """Step 6. Members: new values of state (graph.updates), pointwise, in their own layout. Two
    members of one shape where one reads the other are in one group; a group is kept when nothing
    outside it reads its members. Each group becomes one fused_multi, added after everything it
    reads, whose outputs are the updates; its members go."""
    users, updates = graph.users(), {new: state for state, new in graph.updates.items()}

    def member(i: int) -> bool:
        n = graph.nodes[i]
        return (i in updates and REGISTRY[n.op].kind == "elementwise" and not n.specs
                and not {"perm", "shape"} & set(n.attr))
    leader: dict[int, int] = {}

    def find(i: int) -> int:
        while leader.get(i, i) != i:
            i = leader[i]
        return i
    for n in graph.nodes.values():
        if member(n.id):
            for i in n.inputs:
                if member(i) and graph.nodes[i].shape == n.shape:
                    leader[find(n.id)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in graph.nodes:
        if member(i):
            groups.setdefault(find(i), []).append(i)
    outside = set(graph.outputs.values()) | set(graph.grads.values())
    moved: dict[int, int] = {}  # a member -> the fused_multi output that now holds its value
    for ids in groups.values():
        if len(ids) < 2 or any(set(users[i]) - set(ids) or i in outside for i in ids):
            continue
        inputs, program, results = _joined_programs([graph.nodes[i] for i in ids])
        graph.locate = lambda: graph.nodes[ids[0]].where
        outs = graph.add("fused_multi", inputs, program=program, results=results)
        graph.locate = None
        moved |= {i: o.id for i, o in zip(ids, outs)}
    substitute(graph, moved)
    for i in moved:
        del graph.nodes[i]
    return graph


def _sibling_chains(graph: Graph) -> Graph:
    """Step 7. The fused_multi takes the earlier chain's id, and its place where every operand of
    the later one is computed by then, else the later one's place where nothing reads the earlier
    result before it (so neither chain reads the other). The later chain's result keeps its id,
    the earlier's gets a new one, which its readers are given instead."""
    place = {i: k for k, i in enumerate(graph.nodes)}
    users = graph.users()

    def chain(n: Node) -> bool:
        return REGISTRY[n.op].kind == "elementwise" and not n.specs and not {"perm", "shape"} & set(n.attr)

    def joinable(first: Node, later: Node) -> bool:
        return (first.id not in taken and chain(first) and first.shape == later.shape
                and place[first.id] < place[later.id] and later.id not in users[first.id]
                and (all(place[i] < place[first.id] for i in later.inputs)
                     or all(place[w] > place[later.id] for w in users[first.id])))
    at: dict[int, tuple[Node, Node]] = {}  # where a pair's fused_multi goes -> (the earlier, the later)
    taken: set[int] = set()
    for f in (m for m in graph.nodes.values() if chain(m) and m.id not in taken):
        for i in dict.fromkeys(f.inputs):
            s = next((graph.nodes[u] for u in users[i] if graph.nodes[i].shape == f.shape
                      and joinable(graph.nodes[u], f)), None)
            if s is not None:
                early = all(place[i] < place[s.id] for i in f.inputs)
                at[s.id if early else f.id] = (s, f)
                taken |= {s.id, f.id}
                break
    if not at:
        return graph
    rw = Rewrite(graph)
    for n in graph.nodes.values():
        if n.id in taken and n.id not in at:
            continue  # computed at the pair's place
        if n.id not in at:
            rw.keep(n)
            continue
        first, later = at[n.id]
        inputs, program, results = _joined_programs([first, later])
        _put_pair(rw, rw.read(replace(later, id=first.id, op="fused_multi", inputs=tuple(inputs), shape=(), dtype=TUPLE,
                                      attrs=frozen_attrs({"program": program, "results": results}),
                                      specs=((first.shape, first.dtype), (later.shape, later.dtype)), where=first.where)),
                  first, (first, later))
    return rw.finish()


def _joined_programs(members: list[Node]) -> tuple[list[int], tuple, tuple[int, ...]]:
    """One program computing every member (in id order, so each reads only earlier ones), a member
    read by a later one taken from its step; the program's inputs, and each member's step."""
    program, externals, step_of = [], [], {}
    for n in members:
        steps, base = _program(n), len(program)

        def arg(a: int) -> int:
            if a >= 0:
                return base + a
            i = n.inputs[-1 - a]
            if i in step_of:
                return step_of[i]
            if i not in externals:
                externals.append(i)
            return -1 - externals.index(i)
        program += [(op, attrs, tuple(arg(a) for a in args)) for op, attrs, args in steps]
        step_of[n.id] = len(program) - 1
    return externals, tuple(program), tuple(step_of[n.id] for n in members)


def _normalize_grads(graph: Graph, users, needed: set[int], taken: set[int]) -> tuple[dict[int, Node], set[int]]:
    """A row normaliser's backward (LayerNorm's): grad(x, dy * gamma), added to the residual's
    gradient, becomes one fused_grad (fused_normalize_grad, see families/layernorm/ops.py). Returns the
    new nodes by the id they replace, and the ids they absorb."""
    fused_grad = {t.grad: t.fused_grad for t in (op.row_normaliser for op in REGISTRY.values()) if t and t.grad}
    rows, absorbed = {}, set()
    for n in (m for m in graph.nodes.values() if m.op in fused_grad):
        x, g, *statistics = n.inputs
        inputs, eaten, at = [x, g, *statistics], set(), n.id
        attrs = {"eps": n.attr["eps"], "scaled": False, "accumulate": False}
        m = graph.nodes[g]
        if REGISTRY[m.op].multiplies and m.id not in needed and users[m.id] == [n.id]:
            for dy, gamma in (m.inputs, m.inputs[::-1]):
                if graph.nodes[dy].shape == n.shape and graph.nodes[gamma].shape == n.shape[-1:]:
                    inputs, attrs["scaled"] = [x, dy, *statistics, gamma], True
                    eaten.add(m.id)
                    break
        a = graph.nodes[users[n.id][0]] if len(users[n.id]) == 1 else None
        if (a is not None and REGISTRY[a.op].adds and n.id not in needed and a.id not in taken
                and len(set(a.inputs)) == 2 and all(graph.nodes[i].shape == n.shape for i in a.inputs)):
            inputs.append(next(i for i in a.inputs if i != n.id))
            attrs["accumulate"], at = True, a.id
            eaten.add(n.id)
        if (attrs["scaled"] or attrs["accumulate"]) and not (set(inputs) & (taken | absorbed | eaten)):
            rows[at] = replace(n, id=at, op=fused_grad[n.op], inputs=tuple(inputs), attrs=frozen_attrs(attrs))
            absorbed |= eaten
    return rows, absorbed


def _loss_with_grad(graph: Graph) -> Graph:
    """cross_entropy(z, t) and cross_entropy_grad(z, t, g) -> one cross_entropy_with_grad(z, t, g).
    The op takes the gradient's id and place in the graph, so it runs where the gradient ran: first
    in the backward, as soon as the logits exist. Its loss output keeps the loss's id (the
    program's output, and the boundary remat.py draws between forward and backward); its gradient
    output gets a new id, which the gradient's readers are given instead."""
    losses = {(REGISTRY[n.op].loss.grad, n.inputs): n for n in graph.nodes.values() if REGISTRY[n.op].loss}
    place = {nid: k for k, nid in enumerate(graph.nodes)}
    users = graph.users()
    pairs: dict[int, Node] = {}  # gradient id -> its loss node
    for g in graph.nodes.values():
        loss = losses.pop((g.op, g.inputs[:2]), None)
        # the loss moves to the gradient's place: only where nothing reads it before that
        if loss is not None and all(place[u] > place[g.id] for u in users[loss.id]):
            pairs[g.id] = loss
    if not pairs:
        return graph
    fused_losses = {loss.id for loss in pairs.values()}
    rw = Rewrite(graph)
    for n in graph.nodes.values():
        if n.id in fused_losses:
            continue
        if n.id not in pairs:
            rw.keep(n)
            continue
        loss, grad = pairs[n.id], rw.fresh_id()
        rw.rename(n.id, grad)
        rw.put(replace(rw.read(n), op=REGISTRY[loss.op].loss.with_grad, shape=(), dtype=TUPLE,
                       specs=((loss.shape, loss.dtype), (n.shape, n.dtype))))
        for index, (nid, value) in enumerate(((loss.id, loss), (grad, n))):
            rw.put(projection(nid, n.id, index, value))
    return rw.finish()


def gelu_epilogues(graph: Graph) -> Graph:
    users, needed = graph.users(), pinned(graph)

    def one_gemm(n: Node) -> bool:
        """A GEMM cuBLASLt can give a GELU epilogue: no residual or folded cast, one matrix product
        (a shared 2-D weight, the batch folded into the rows) of a width that is a multiple of 8,
        stored in bf16, whose rounding dwarfs the epilogue's approximation of GELU."""
        if not REGISTRY[n.op].gemm_epilogues:
            return False
        b = graph.nodes[n.inputs[1]]
        return (n.dtype == "bf16" and not n.attr.get("residual") and "dtype" not in n.attr and len(b.shape) == 2
                and not n.attr["ta"] and n.shape[-1] % 8 == 0)

    takes: dict[int, Node] = {}  # a GEMM -> the GELU it takes in (its first GELU reader)
    for n in graph.nodes.values():
        epilogue = REGISTRY[n.op].gemm_epilogue
        gemm = graph.nodes[n.inputs[0]] if epilogue and not epilogue.grad else None
        if gemm is not None and one_gemm(gemm) and gemm.id not in takes:
            takes[gemm.id] = n
    gelus = {n.id: gemm for gemm, n in takes.items()}
    # The tuple keeps the GEMM's id and place; GELU's output keeps GELU's id and place, and the
    # product (the pre-activation) gets a new id, which its readers are given instead.
    rw = Rewrite(graph)
    for n in graph.nodes.values():
        n = rw.read(n)
        if n.id in takes:
            gelu, pre = takes[n.id], rw.fresh_id()
            rw.rename(n.id, pre)
            attrs = {"ta": n.attr["ta"], "tb": n.attr["tb"], "bias": n.attr.get("bias", False), "residual": False,
                     REGISTRY[gelu.op].gemm_epilogue.attr: True}
            rw.put(replace(n, op=_epilogue_form(n), attrs=frozen_attrs(attrs), shape=(), dtype=TUPLE,
                           specs=((gelu.shape, gelu.dtype), (n.shape, n.dtype))))
            rw.put(projection(pre, n.id, 1, n))
        elif n.id in gelus:
            rw.put(projection(n.id, gelus[n.id], 0, n))
        elif _dgelu_gemm(graph, graph.nodes[n.id], users, needed, one_gemm):
            gemm = rw.graph.nodes[n.inputs[1]]
            attrs = {"ta": gemm.attr["ta"], "tb": gemm.attr["tb"], "bias": False, "residual": False,
                     REGISTRY[n.op].gemm_epilogue.attr: True}
            rw.put(replace(n, op=_epilogue_form(gemm), inputs=(*gemm.inputs, n.inputs[0]), attrs=frozen_attrs(attrs)))
        else:
            rw.put(n)
    return remove_dead(rw.finish())


def _dgelu_gemm(graph: Graph, n: Node, users, needed: set[int], one_gemm) -> bool:
    """gelu_grad(pre, g) (an epilogue's gradient op) where g is a plain GEMM's product that nothing
    else reads."""
    epilogue = REGISTRY[n.op].gemm_epilogue
    if epilogue is None or not epilogue.grad:
        return False
    pre, g = (graph.nodes[i] for i in n.inputs)
    return (REGISTRY[g.op].plain_product and one_gemm(g) and users[g.id] == [n.id] and g.id not in needed
            and (pre.shape, pre.dtype) == (g.shape, g.dtype) and g.size >= GELU_GRAD_MIN_ELEMENTS)


def _epilogue_form(gemm: Node) -> str:
    """The op a GEMM becomes with epilogues: a plain product's epilogue form, or its own op."""
    return REGISTRY[gemm.op].matrix_product.with_epilogue or gemm.op


def _gemm_epilogues(graph: Graph) -> Graph:
    """matmul + bias (one value per column) + residual (the product's shape), either or both, in any
    order of the adds, becomes one fused_matmul: cuBLASLt adds them as it writes the product."""
    users, needed = graph.users(), pinned(graph)
    rw = Rewrite(graph)
    absorbed: dict[int, Node] = {}  # an add that became a fused_matmul: the node it became
    for n in graph.nodes.values():
        rw.put(n)
        if not REGISTRY[n.op].adds or len(set(n.inputs)) != 2:
            continue
        for inner, other in (n.inputs, n.inputs[::-1]):
            base = absorbed.get(inner) or graph.nodes[inner]
            if not REGISTRY[base.op].gemm_epilogues or inner in needed or users[inner] != [n.id]:
                continue
            attrs = {"ta": base.attr["ta"], "tb": base.attr["tb"], "bias": base.attr.get("bias", False),
                     "residual": base.attr.get("residual", False),
                     **({"dtype": base.attr["dtype"]} if "dtype" in base.attr else {})}
            role = ("bias" if graph.nodes[other].shape == n.shape[-1:] != n.shape
                    else "residual" if graph.nodes[other].shape == n.shape else None)
            if role is None or attrs[role]:
                continue
            attrs[role] = True
            a, b, *extra = base.inputs
            bias = [other] if role == "bias" else extra[:1] if attrs["bias"] else []
            residual = [other] if role == "residual" else extra[-1:] if attrs["residual"] else []
            absorbed[n.id] = rw.put(replace(n, op=_epilogue_form(base), inputs=(a, b, *bias, *residual),
                                            attrs=frozen_attrs(attrs)))
            break
    return remove_dead(rw.finish())


def _fold_casts(graph: Graph) -> Graph:
    users, needed = graph.users(), pinned(graph)
    rw = Rewrite(graph)

    def private(src: Node, reader: int) -> bool:
        return users[src.id] == [reader] and src.id not in needed

    for n in graph.nodes.values():
        src = graph.nodes[n.inputs[0]] if REGISTRY[n.op].casts else None
        view = None
        # cast(reshape(sum)): the bias gradient of a broadcast add
        if src is not None and REGISTRY[src.op].reinterprets and private(src, n.id):
            view, src = src, graph.nodes[src.inputs[0]]
        if src is not None and REGISTRY[src.op].stores_any_float and private(src, (view or n).id):
            folded = replace(src, dtype=n.dtype, attrs=frozen_attrs({**src.attr, "dtype": n.attr["dtype"]}))
            if view is None:
                n = replace(folded, id=n.id)
            else:  # the producer stores the cast's type, and the cast becomes the reshape
                rw.put(folded)
                n = replace(view, id=n.id, dtype=n.dtype, inputs=(src.id,))
        rw.put(n)
    return remove_dead(rw.finish())


def _concats(graph: Graph) -> Graph:
    rw = Rewrite(graph)
    for n in graph.nodes.values():
        rw.put((_concat_of_pads(graph, n) if REGISTRY[n.op].adds else None) or n)
    return remove_dead(rw.finish())


def _concat_of_pads(g: Graph, n: Node) -> Node | None:
    """pad(a, [0:1]) + pad(b, [1:2]) + pad(c, [2:3]) -> concat(a, b, c), when the pads' ranges along one
    axis are disjoint and cover it exactly, so every output element is exactly one input element.
    This is how autodiff sums the gradients of slices (q, k, v of one qkv tensor); the concat writes
    the result once instead of zero-filling it three times and adding."""
    leaves, stack, seen = [], [n], set()
    while stack:  # the leaves of the tree of same-shape adds rooted at n (no broadcasting inside)
        m = stack.pop()
        if m.id in seen:  # a value summed twice cannot be one element of a tiling
            return None
        seen.add(m.id)
        if REGISTRY[m.op].adds and all(g.nodes[i].shape == n.shape for i in m.inputs):
            stack.extend(g.nodes[i] for i in m.inputs)
        elif REGISTRY[m.op].pads and m.shape == n.shape:
            leaves.append(m)
        else:
            return None
    axis = leaves[0].attr["axis"]
    if any(p.attr["axis"] != axis for p in leaves) or not contiguous_along(n.shape, axis):
        return None  # a concat is built in place, of contiguous pieces only: the pads and adds stay
    leaves.sort(key=lambda p: p.attr["before"])
    end = 0
    for p in leaves:  # sorted by start: disjoint and gap-free exactly when each starts where the last ended
        if p.attr["before"] != end:
            return None
        end += g.nodes[p.inputs[0]].shape[axis]
    if end != n.shape[axis]:
        return None
    return replace(n, op="concat", inputs=tuple(p.inputs[0] for p in leaves), attrs=frozen_attrs({"axis": axis}))



def _fused_node(graph: Graph, root: Node, inlined: set[int]) -> Node:
    program: list[tuple] = []
    externals: list[int] = []
    step_of: dict[int, int] = {}

    def arg(i: int) -> int:
        if i in inlined:
            return emit(graph.nodes[i])
        if i not in externals:
            externals.append(i)
        return -1 - externals.index(i)

    def emit(n: Node) -> int:
        if n.id not in step_of:  # a shared subexpression is computed once per element
            args = tuple(arg(i) for i in n.inputs)
            program.append((n.op, n.attrs, args))
            step_of[n.id] = len(program) - 1
        return step_of[n.id]

    emit(root)
    return replace(root, op="fused", inputs=tuple(externals), attrs=frozen_attrs({"program": tuple(program)}))
