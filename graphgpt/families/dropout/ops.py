"""Dropout with a counter-based mask: the dropout kernel family."""
from __future__ import annotations

from ...ops.registry import Op, Spec, float_spec, register, require


# ---- dropout: elements dropped with probability p, the rest scaled by 1 / (1 - p) ------------
# The mask is a function of the element's index, the dropout site (attrs["site"], numbered in the
# model) and two int32 program inputs, the run's seed and a counter of micro-batches (Philox4x32-10,
# reference.keep_mask): nothing is stored, and the backward draws the same mask again, so the
# gradient is the same op applied to the incoming gradient.
def scalar_i32(*xs: Spec) -> None:
    for x in xs:
        require(x == Spec((), "i32"), f"the RNG's seed and counter are int32 scalars, got {x.shape}:{x.dtype}")


def rng_attrs(attrs) -> None:
    require(0.0 < attrs["p"] < 1.0 and isinstance(attrs["site"], int), "needs 0 < p < 1 and an integer site")


def _dropout_infer(attrs, x, seed, counter):
    float_spec(x)
    scalar_i32(seed, counter)
    rng_attrs(attrs)
    return x


register(Op("dropout", "nn", _dropout_infer, template="dropout",
            vjp=lambda a, g, out, x, seed, counter: (g.graph.add("dropout", (g, seed, counter), **a), None, None)))
