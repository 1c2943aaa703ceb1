"""Reductions over chosen axes."""
from __future__ import annotations

from ...ops.registry import REGISTRY, Op, Reduction, Spec, float_spec, out_dtype, register, require


def _sum_infer(attrs, x):
    float_spec(x)
    axes = tuple(attrs["axes"])
    require(all(0 <= a < len(x.shape) for a in axes) and len(set(axes)) == len(axes),
            f"bad axes {axes} for rank {len(x.shape)}")
    dtype = out_dtype(attrs, x.dtype)
    if attrs["keepdims"]:
        return Spec(tuple(1 if i in axes else d for i, d in enumerate(x.shape)), dtype)
    return Spec(tuple(d for i, d in enumerate(x.shape) if i not in axes), dtype)


def _sum_vjp(a, g, out, x):
    kept = tuple(1 if i in a["axes"] else d for i, d in enumerate(x.shape))
    return (g.reshape(kept).broadcast_to(x.shape),)


register(Op("sum", "reduction", _sum_infer, vjp=_sum_vjp, template="reduce", stores_any_float=True,
            reduction=Reduction(with_prologue="fused_sum"), identity=lambda a, x, out: not a["axes"]))


# The squared L2 norm of many tensors together: the optimizer's global gradient norm in one
# reduction instead of one per gradient. Codegen reads the tensors as one flat range, so on the GPU
# they must lie one after another (the gradient region; the zero padding between them adds nothing).
def _sum_squares_infer(attrs, *xs):
    require(len(xs) > 0, "needs at least one input")
    for x in xs:
        float_spec(x)
        require(x.dtype == xs[0].dtype, "inputs differ in dtype")
    return Spec((), "f32")


register(Op("sum_squares", "reduction", _sum_squares_infer,
            nondiff="the optimizer's gradient norm, added after autodiff", template="reduce"))


# Column sums that run as one launch (passes/sum_groups.py): attrs["members"] lists each member
# as (op, attrs, number of inputs); the inputs are the members' in order, and so are the results.
def _group_infer(attrs, *specs):
    out, at = [], 0
    for op, member_attrs, n in attrs["members"]:
        spec = REGISTRY[op].infer(dict(member_attrs), *specs[at:at + n])
        out += spec if isinstance(spec, list) else [spec]
        at += n
    require(at == len(specs), f"the members read {at} inputs, not {len(specs)}")
    return out


register(Op("sum_group", "reduction", _group_infer,
            nondiff="made by passes/sum_groups.py, which runs after autodiff", template="reduce"))
