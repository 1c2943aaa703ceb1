"""FP8 matrix products: the training step's forward products that read chosen weights run on E4M3
operands (`--set fp8=PATTERNS`: weight names, shell-style patterns, comma-separated).

Each chosen product op(x) @ W becomes the scaled product of x and W quantized: a tensor's largest
magnitude (abs_max) gives it the power-of-two scale that puts that magnitude at most at E4M3's
largest value, 448; the tensor is rounded to E4M3 at that scale (quantize); and cuBLASLt sums the
products in the FP8 tensor cores' accumulator and multiplies the sums by the two factors that undo
the scales. The scales come from the step's
own tensors, so no state carries over from one step to the next, and a power of two changes no
bit but the exponent. cuBLASLt's FP8 products read both operands along k, so a weight stored
(k, n) is quantized into its transpose, (n, k).

Only the forward is quantized: the products that do not depend on the targets, which only the
loss and its gradient read. The backward's products read the operands in the plan's dtype, as the
other programs do throughout: evaluation and generation compute what the weights compute in that
dtype. A tensor that several chosen products read (a chunked classifier's weight, the input of a
layer's query, key and value projections) is quantized once; a product recomputed in the backward
(remat) quantizes its own operands there, so no quantized copy is kept alive between the two.

The pass runs on the training program's final graph (after fusion and remat), so a product keeps
whatever epilogue fusion gave it.
"""
from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase

from ..dtypes import FP8, FP8_MULTIPLE
from ..errors import UserError
from ..ir import Graph, Node
from ..ops import REGISTRY
from ..rewrite import Rewrite, frozen_attrs, remove_dead

TARGETS = "targets"  # the training program's input that only the loss and its gradient read
SHOWN = 8  # weights an error lists


def patterns(setting: str) -> tuple[str, ...]:
    """The weight-name patterns of an fp8 setting ("" for none)."""
    return tuple(p.strip() for p in setting.split(",") if p.strip())


def fp8_products(graph: Graph, setting: str) -> Graph:
    """`graph` with the forward products that read a weight matching `setting` on E4M3 operands;
    `graph` itself where the setting names none."""
    wanted = patterns(setting)
    if not wanted:
        return graph
    chosen = _chosen_products(graph, wanted)
    rw, made = Rewrite(graph), {}
    for n in graph.nodes.values():
        n = rw.read(n)
        if n.id not in chosen:
            rw.put(n)
            continue
        rw.graph.locate = lambda where=n.where: where  # the quantizations point at the product's line
        late = graph.late.get(n.id)
        a, scale_a = _quantized(rw, made, n.inputs[0], False, late)
        b, scale_b = _quantized(rw, made, n.inputs[1], not n.attr["tb"], late)
        stored = n.specs[0][1] if n.specs else n.dtype  # an epilogue's outputs share the product's type
        attrs = {**n.attr, "tb": True, "fp8": True, "dtype": stored}
        rw.put(replace(n, inputs=(a, b, scale_a, scale_b, *n.inputs[2:]), attrs=frozen_attrs(attrs)))
    rw.graph.locate = None
    out = remove_dead(rw.finish())
    out.verify()
    return out


def _quantized(rw: Rewrite, made: dict, x: int, transpose: bool, late: int | None) -> tuple[int, int]:
    """The E4M3 copy of value `x` (transposed where asked) and its factor, made once per place:
    a recomputed product's operands are quantized beside it, just before its reader."""
    key = (x, transpose, late)
    if key not in made:
        amax = made.get((x, late))
        if amax is None:
            amax = made[(x, late)] = rw.graph.add("abs_max", (x,)).id
        q, factor = rw.graph.add("quantize", (x, amax), transpose=transpose, dtype=FP8)
        made[key] = (q.id, factor.id)
        if late is not None:  # the new nodes run where the product does
            for nid in (amax, q.id, factor.id, rw.graph.nodes[q.id].inputs[0]):
                rw.graph.late[nid] = late
    return made[key]


def _chosen_products(graph: Graph, wanted: tuple[str, ...]) -> set[int]:
    """The forward's matrix products whose right operand is a weight `wanted` names, each checked
    for the shapes cuBLASLt's FP8 products take; every pattern must name at least one."""
    nodes = graph.nodes
    targets = [n.id for n in nodes.values() if REGISTRY[n.op].source == "inputs" and n.name == TARGETS]
    backward = graph.depends_on(set(targets))
    chosen, named = set(), {p: 0 for p in wanted}
    for n in nodes.values():
        if REGISTRY[n.op].matrix_product is None or n.id in backward or n.attr.get("fp8"):
            continue
        weight = _weight_name(nodes[n.inputs[1]])
        hits = [p for p in wanted if weight is not None and fnmatchcase(weight, p)]
        if not hits:
            continue
        _check_shape(n, nodes[n.inputs[0]], nodes[n.inputs[1]], weight)
        chosen.add(n.id)
        for p in hits:
            named[p] += 1
    missing = [p for p, count in named.items() if not count]
    if missing:
        weights = sorted({w for n in nodes.values() if REGISTRY[n.op].matrix_product is not None and n.id not in backward
                          for w in [_weight_name(nodes[n.inputs[1]])] if w is not None})
        cut = SHOWN if len(weights) > SHOWN + 1 else len(weights)  # "and 1 more" would be as long as its name
        shown = ", ".join(weights[:cut]) + (f" and {len(weights) - cut} more" if len(weights) > cut else "")
        raise UserError(f"fp8={','.join(missing)} names no weight a forward matrix product reads; "
                        f"those are: {shown or 'none'}")
    return chosen


def _weight_name(b: Node) -> str | None:
    """The parameter a product's right operand is: the parameter itself, or its copy in the
    compute type (a cache that names it)."""
    region = REGISTRY[b.op].source
    if region == "params":
        return b.name
    return b.attr.get("copy_of") if region == "caches" else None


def _check_shape(n: Node, a: Node, b: Node, weight: str) -> None:
    if n.attr["ta"] or len(b.shape) != 2:
        raise UserError(f"{n.where}: fp8: the product with {weight} is not rows times a shared weight, "
                        f"which an FP8 product needs")
    rows = a.size // a.shape[-1]
    if any(d % FP8_MULTIPLE for d in (rows, *b.shape)):
        raise UserError(f"{n.where}: fp8: the product of {rows} rows with {weight} {list(b.shape)} has a dimension "
                        f"that is not a multiple of {FP8_MULTIPLE}, which cuBLASLt's FP8 products need")
