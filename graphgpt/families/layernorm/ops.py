"""The row normalisers (LayerNorm's normalize and RMSNorm's rms_normalize), their fused forms and
their backward ops: the layernorm kernel family."""
from __future__ import annotations

import math

from ...errors import UserError
from ...ops.fused import step_specs
from ...ops.registry import (BACKWARD_ONLY, FUSION_MADE, Op, RowNormaliser, Spec, float_spec, register, require,
                             same)


# ---- row normalisers: each row normalised over the last axis, its statistics saved ------------
# normalize is LayerNorm without its affine part (that is plain mul/add in the model); its
# statistics are each row's mean and reciprocal standard deviation. rms_normalize is RMSNorm
# without its weight: the rows are not centred, and the one statistic is the reciprocal root mean
# square. Both are float32, one per row, saved for the backward as llm.c saves them, so the
# backward does not recompute them.
#
# fused_<name> is the normaliser with the pointwise chain that reads its rows (LayerNorm's affine
# part, x_hat * gamma + beta; RMSNorm's weight), made by the fusion pass: the kernel applies
# attrs["program"] to each normalised element as it stores it, and stores the chain's result as
# its last output. The program's input -1 is the normalised element (unrounded), -2 - j the op's
# input 1 + j: one value per column, or a scalar.
#
# fused_<name>_grad is the backward as llm.c writes LayerNorm's, made by the fusion pass: the
# incoming gradient is scaled by the per-column gamma as the row is loaded (attrs["scaled"]: input
# gamma follows the row statistics) and the result is added to the residual stream's gradient as
# it is stored (attrs["accumulate"]: input residual comes last), so neither g * gamma nor the
# unaccumulated dx goes to memory. Inputs: x, g, the statistics, [gamma], [residual].


def _stats_spec(x: Spec, *stats: Spec) -> None:
    for s in stats:
        require(s == Spec(x.shape[:-1], "f32"), f"row statistics {s.shape}:{s.dtype} are not float32 of {x.shape[:-1]}")


def _register_row_normaliser(name: str, statistics: tuple[str, ...]) -> None:
    """The normaliser `name`, whose outputs are the rows and the named statistics, with its
    epilogue form and its two backward ops."""
    n_stats = len(statistics)

    def infer(attrs, x):
        float_spec(x)
        require(math.isfinite(attrs["eps"]) and attrs["eps"] > 0, f"eps must be a finite number > 0, got {attrs['eps']}")
        return [x, *(Spec(x.shape[:-1], "f32") for _ in statistics)]

    def vjp(attrs, g, out, x):
        if any(gi is not None for gi in g[1:]):
            raise UserError(f"{x.node.where}: {name}'s {' and '.join(statistics)} are saved for the backward; "
                            "a loss that depends on them cannot be differentiated")
        return (g[0].graph.add(f"{name}_grad", (x, g[0], *out[1:]), eps=attrs["eps"]),)

    def grad_infer(attrs, x, g, *stats):
        same(attrs, x, g)
        require(len(stats) == n_stats, f"needs the {n_stats} row statistics")
        _stats_spec(x, *stats)
        return x

    def fused_infer(attrs, x, *operands):
        for o in operands:
            require(o.shape == x.shape[-1:] or o.shape == (), f"operand {o.shape} is neither a column vector of "
                                                              f"{x.shape} nor a scalar")
        out = infer(attrs, x)
        y = step_specs(attrs, (x, *operands))[-1]
        require(y.shape == x.shape, f"the chain gives {y.shape}, not the rows' {x.shape}")
        return [*out, y]

    def fused_grad_infer(attrs, x, g, *rest):
        rest = list(rest)
        grad_infer(attrs, x, g, *rest[:n_stats])
        del rest[:n_stats]
        if attrs["scaled"]:
            gamma = rest.pop(0)
            require(gamma.shape == x.shape[-1:] and gamma.dtype == x.dtype,
                    f"gamma {gamma.shape}:{gamma.dtype} is not one value per column of {x.shape}:{x.dtype}")
        if attrs["accumulate"]:
            same(attrs, x, rest.pop(0))
        require(not rest, "too many inputs")
        return x

    stats_at = tuple(range(1, 1 + n_stats))
    register(Op(name, "nn", infer, vjp=vjp, template="layernorm",
                row_normaliser=RowNormaliser(rows=0, statistics=stats_at, with_epilogue=f"fused_{name}",
                                             grad=f"{name}_grad", fused_grad=f"fused_{name}_grad")))
    register(Op(f"{name}_grad", "nn", grad_infer, nondiff=BACKWARD_ONLY, template="layernorm"))
    register(Op(f"fused_{name}", "nn", fused_infer, nondiff=FUSION_MADE, template="layernorm",
                row_normaliser=RowNormaliser(rows=0, statistics=stats_at)))
    register(Op(f"fused_{name}_grad", "nn", fused_grad_infer, nondiff=FUSION_MADE, template="layernorm"))


_register_row_normaliser("normalize", ("mean", "rstd"))
_register_row_normaliser("rms_normalize", ("rstd",))
