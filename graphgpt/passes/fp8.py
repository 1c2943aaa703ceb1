"""FP8 matrix products: the training step's forward products that read chosen weights run on E4M3
operands (`--set fp8=PATTERNS`: weight names, shell-style patterns, comma-separated), and the
backward products that take the gradient through chosen weights (`--set fp8_grad=PATTERNS`: dY @
W^T, the input's gradient) on an E5M2 gradient and the E4M3 weight.

Each chosen product op(x) @ W becomes the scaled product of x and W quantized: a tensor's largest
magnitude (abs_max) gives it the power-of-two scale that puts that magnitude at most at the FP8
type's largest value (E4M3's 448, E5M2's 57344); the tensor is rounded at that scale (quantize);
and cuBLASLt sums the products and multiplies the sums by the two factors that undo the scales.
The scales come from the step's own tensors, so no state carries over from one step to the next,
and a power of two changes no bit but the exponent. cuBLASLt's FP8 products read both operands
along k, so a weight stored (k, n) is quantized into its transpose, (n, k).

Forward products are those that do not depend on the targets, which only the loss and its
gradient read; backward products, those that do. Evaluation and generation compute what the
weights compute in the plan's dtype. A tensor that several chosen products read (a chunked
classifier's weight, in its forward and in its gradient; the input of a layer's query, key and
value projections) is quantized once; a product recomputed in the backward (remat) quantizes its
own operands there, so no quantized copy is kept alive between the two.

A gradient that a row loss computes (the classifier's logits' gradient, one of a step's largest
tensors) is not read again to be quantized: the loss's kernel writes its E5M2 copy as it writes
it, at the scale that quantize would take for the bound the loss declares on its magnitude
(ops.registry.RowLoss), so the copy needs neither an abs_max pass nor a quantize pass.

The pass runs on the training program's final graph (after fusion and remat), so a product keeps
whatever epilogue fusion gave it.
"""
from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase

from ..dtypes import E5M2, FP8, FP8_MULTIPLE
from ..errors import UserError
from ..ir import Graph, Node
from ..ops import REGISTRY
from ..rewrite import Rewrite, fresh_id, frozen_attrs, remove_dead

TARGETS = "targets"  # the training program's input that only the loss and its gradient read
SHOWN = 8  # weights an error lists


def patterns(setting: str) -> tuple[str, ...]:
    """The weight-name patterns of an fp8 setting ("" for none)."""
    return tuple(p.strip() for p in setting.split(",") if p.strip())


def fp8_products(graph: Graph, forward: str, gradients: str = "") -> Graph:
    """`graph` with the forward products that read a weight matching `forward` on E4M3 operands,
    and the backward products that read a weight matching `gradients` on an E5M2 gradient and the
    E4M3 weight; `graph` itself where neither names one."""
    wanted, through = patterns(forward), patterns(gradients)
    if not wanted and not through:
        return graph
    backward = graph.depends_on({n.id for n in graph.nodes.values()
                                 if REGISTRY[n.op].source == "inputs" and n.name == TARGETS})
    chosen = {i: FP8 for i in _chosen_products(graph, wanted, backward, of_backward=False)}
    chosen |= {i: E5M2 for i in _chosen_products(graph, through, backward, of_backward=True)}
    carried = _loss_gradients(graph, [graph.nodes[i].inputs[0] for i, t in chosen.items() if t == E5M2])
    rw, made = Rewrite(graph), {}
    for n in graph.nodes.values():
        n = rw.read(n)
        if n.id in carried:
            _with_copy(rw, made, n, carried[n.id])
            continue
        if n.id not in chosen:
            rw.put(n)
            continue
        rw.graph.locate = lambda where=n.where: where  # the quantizations point at the product's line
        late = graph.late.get(n.id)
        a, scale_a = made.get(("loss", n.inputs[0])) or _quantized(rw, made, n.inputs[0], False, chosen[n.id], late)
        b, scale_b = _quantized(rw, made, n.inputs[1], not n.attr["tb"], FP8, late)
        stored = n.specs[0][1] if n.specs else n.dtype  # an epilogue's outputs share the product's type
        attrs = {**n.attr, "tb": True, "fp8": True, "dtype": stored}
        rw.put(replace(n, inputs=(a, b, scale_a, scale_b, *n.inputs[2:]), attrs=frozen_attrs(attrs)))
    rw.graph.locate = None
    out = remove_dead(rw.finish())
    out.verify()
    return out


def _quantized(rw: Rewrite, made: dict, x: int, transpose: bool, dtype: str, late: int | None) -> tuple[int, int]:
    """The FP8 copy of value `x` in `dtype` (transposed where asked) and its factor, made once per
    place: a recomputed product's operands are quantized beside it, just before its reader."""
    key = (x, transpose, dtype, late)
    if key not in made:
        amax = made.get((x, late))
        if amax is None:
            amax = made[(x, late)] = rw.graph.add("abs_max", (x,)).id
        q, factor = rw.graph.add("quantize", (x, amax), transpose=transpose, dtype=dtype)
        made[key] = (q.id, factor.id)
        if late is not None:  # the new nodes run where the product does
            for nid in (amax, q.id, factor.id, rw.graph.nodes[q.id].inputs[0]):
                rw.graph.late[nid] = late
    return made[key]


def _loss_gradients(graph: Graph, gradients: list[int]) -> dict[int, int]:
    """Of these gradients (values), those that a row loss's one-pass op computes (its output 1), by
    that op's node: {the op's node: the gradient's}."""
    one_pass = {op.loss.with_grad for op in REGISTRY.values() if op.loss}
    carried = {}
    for node, outs in graph.projections().items():
        if graph.nodes[node].op in one_pass:
            carried |= {node: o for o in outs if graph.nodes[o].attr["index"] == 1 and o in gradients}
    return carried


def _with_copy(rw: Rewrite, made: dict, n: Node, gradient: int) -> None:
    """Put the row loss's node `n` writing its gradient's E5M2 copy and factor too (RowLoss), the
    two as new outputs after its others; made[("loss", gradient)] names them."""
    attrs = {**n.attr, "fp8_grad": E5M2, "grad_dtype": n.specs[1][1]}
    specs = REGISTRY[n.op].infer(attrs, *(rw.graph.nodes[i].spec for i in n.inputs))
    rw.put(replace(n, attrs=frozen_attrs(attrs), specs=tuple((tuple(sp.shape), sp.dtype) for sp in specs)))
    outs = []
    for index in range(len(n.specs), len(specs)):
        at = fresh_id(rw.graph)
        rw.put(Node(at, "output", (n.id,), frozen_attrs({"index": index}), tuple(specs[index].shape),
                    specs[index].dtype, n.where))
        outs.append(at)
    made[("loss", gradient)] = tuple(outs)


def _chosen_products(graph: Graph, wanted: tuple[str, ...], backward: set[int], of_backward: bool) -> set[int]:
    """The matrix products whose right operand is a weight `wanted` names, of the forward (setting
    fp8) or of the backward (fp8_grad), each checked for the shapes cuBLASLt's FP8 products take;
    every pattern must name at least one."""
    nodes, setting = graph.nodes, "fp8_grad" if of_backward else "fp8"

    def candidate(n: Node) -> bool:
        return (REGISTRY[n.op].matrix_product is not None and (n.id in backward) == of_backward
                and not n.attr.get("fp8"))
    chosen, named = set(), {p: 0 for p in wanted}
    for n in nodes.values():
        if not candidate(n):
            continue
        weight = _weight_name(nodes[n.inputs[1]])
        hits = [p for p in wanted if weight is not None and fnmatchcase(weight, p)]
        if not hits:
            continue
        _check_shape(n, nodes[n.inputs[0]], nodes[n.inputs[1]], weight, setting)
        chosen.add(n.id)
        for p in hits:
            named[p] += 1
    missing = [p for p, count in named.items() if not count]
    if missing:
        weights = sorted({w for n in nodes.values() if candidate(n) for w in [_weight_name(nodes[n.inputs[1]])] if w is not None})
        cut = SHOWN if len(weights) > SHOWN + 1 else len(weights)  # "and 1 more" would be as long as its name
        shown = ", ".join(weights[:cut]) + (f" and {len(weights) - cut} more" if len(weights) > cut else "")
        products = "a backward matrix product takes a gradient through" if of_backward else "a forward matrix product reads"
        raise UserError(f"{setting}={','.join(missing)} names no weight {products}; those are: {shown or 'none'}")
    return chosen


def _weight_name(b: Node) -> str | None:
    """The parameter a product's right operand is: the parameter itself, or its copy in the
    compute type (a cache that names it)."""
    region = REGISTRY[b.op].source
    if region == "params":
        return b.name
    return b.attr.get("copy_of") if region == "caches" else None


def _check_shape(n: Node, a: Node, b: Node, weight: str, setting: str) -> None:
    if n.attr["ta"] or len(b.shape) != 2:
        raise UserError(f"{n.where}: {setting}: the product with {weight} is not rows times a shared weight, "
                        f"which an FP8 product needs")
    rows = a.size // a.shape[-1]
    if any(d % FP8_MULTIPLE for d in (rows, *b.shape)):
        raise UserError(f"{n.where}: {setting}: the product of {rows} rows with {weight} {list(b.shape)} has a dimension "
                        f"that is not a multiple of {FP8_MULTIPLE}, which cuBLASLt's FP8 products need")
