"""Data movement without arithmetic: reshape, transpose, broadcast, slice, pad, concat, copy."""
from __future__ import annotations

import numpy as np

from ...ops.registry import Op, Spec, ShapeMismatch, prod, register, require


def unbroadcast(g, shape: tuple[int, ...]):
    """Sum a gradient of a broadcast result back down to the operand's shape."""
    if g.shape == tuple(shape):
        return g
    lead = len(g.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1)
    return g.sum(axes).reshape(shape)


def _same_shape(attrs, x: Spec, out: Spec) -> bool:
    return x.shape == out.shape


def _reshape_infer(attrs, x):
    shape = tuple(attrs["shape"])
    require(all(d >= 0 for d in shape) and prod(shape) == prod(x.shape),
            f"cannot reshape {x.shape} ({prod(x.shape)} elements) to {shape}")
    return Spec(shape, x.dtype)


register(Op("reshape", "shape", _reshape_infer,
            vjp=lambda a, g, out, x: (g.reshape(x.shape),), template="shape",
            view=lambda a, x, itemsize: 0, reinterprets=True, identity=_same_shape))


def _transpose_infer(attrs, x):
    perm = tuple(attrs["perm"])
    require(sorted(perm) == list(range(len(x.shape))), f"bad permutation {perm} for rank {len(x.shape)}")
    return Spec(tuple(x.shape[p] for p in perm), x.dtype)


register(Op("transpose", "shape", _transpose_infer,
            vjp=lambda a, g, out, x: (g.transpose(tuple(np.argsort(a["perm"]).tolist())),), template="shape",
            permutes=True, identity=lambda a, x, out: list(a["perm"]) == list(range(len(out.shape)))))


def _broadcast_infer(attrs, x):
    shape = tuple(attrs["shape"])
    try:
        ok = np.broadcast_shapes(x.shape, shape) == shape
    except ValueError:
        ok = False
    require(ok, f"cannot broadcast {x.shape} to {shape}")
    return Spec(shape, x.dtype)


register(Op("broadcast_to", "shape", _broadcast_infer,
            vjp=lambda a, g, out, x: (unbroadcast(g, x.shape),), template="shape", identity=_same_shape))


def _slice_infer(attrs, x):
    axis, start, stop = attrs["axis"], attrs["start"], attrs["stop"]
    require(0 <= axis < len(x.shape) and 0 <= start < stop <= x.shape[axis],
            f"slice [{start}:{stop}] on axis {axis} is out of range")
    return Spec(x.shape[:axis] + (stop - start,) + x.shape[axis + 1:], x.dtype)


def _slice_vjp(a, g, out, x):
    return (g.graph.add("pad", (g,), axis=a["axis"], before=a["start"],
                        after=x.shape[a["axis"]] - a["stop"]),)


def contiguous_along(shape, axis: int) -> bool:
    """A range of indices along `axis` is one contiguous run of memory: every axis before it has
    extent 1. A slice of such a range is a view, and a concat of such pieces is built in place."""
    return prod(shape[:axis]) == 1


def _slice_view(a, x, itemsize: int) -> int | None:
    axis = a["axis"]
    return a["start"] * prod(x.shape[axis + 1:]) * itemsize if contiguous_along(x.shape, axis) else None


register(Op("slice", "shape", _slice_infer, vjp=_slice_vjp, template="shape", view=_slice_view,
            identity=lambda a, x, out: a["start"] == 0 and a["stop"] == x.shape[a["axis"]]))


def _pad_infer(attrs, x):
    axis = attrs["axis"]
    require(0 <= axis < len(x.shape) and attrs["before"] >= 0 and attrs["after"] >= 0,
            f"bad pad {attrs}")
    return Spec(x.shape[:axis] + (attrs["before"] + x.shape[axis] + attrs["after"],) + x.shape[axis + 1:],
                x.dtype)


def _pad_vjp(a, g, out, x):
    start = a["before"]
    return (g.graph.add("slice", (g,), axis=a["axis"], start=start, stop=start + x.shape[a["axis"]]),)


# a pad of nothing: the gradient of a slice that took everything
register(Op("pad", "shape", _pad_infer, vjp=_pad_vjp, template="shape", pads=True,
            identity=lambda a, x, out: a["before"] == a["after"] == 0))


def _concat_infer(attrs, *xs):
    axis = attrs["axis"]
    require(len(xs) > 0, "needs at least one input")
    first = xs[0]
    require(0 <= axis < len(first.shape), f"axis {axis} is out of range for rank {len(first.shape)}")
    rest = first.shape[:axis], first.shape[axis + 1:]
    require(all((x.shape[:axis], x.shape[axis + 1:]) == rest and x.dtype == first.dtype for x in xs),
            f"inputs differ outside axis {axis}")
    return Spec(rest[0] + (sum(x.shape[axis] for x in xs),) + rest[1], first.dtype)


def _concat_vjp(a, g, out, *xs):
    axis, start, grads = a["axis"], 0, []
    for x in xs:
        stop = start + x.shape[axis]
        grads.append(g.graph.add("slice", (g,), axis=axis, start=start, stop=stop))
        start = stop
    return tuple(grads)


# No CUDA template: the memory plan builds a concat in place (each input is computed into its slice
# of the output), so it never launches; the plan refuses a concat it cannot build that way.
register(Op("concat", "shape", _concat_infer,
            vjp=_concat_vjp, assembles=True))

register(Op("copy", "shape", lambda a, x: x,
            vjp=lambda a, g, out, x: (g,), template="shape"))

__all__ = ["unbroadcast", "contiguous_along", "ShapeMismatch"]
