"""The op registry: one entry per primitive, read by every stage.

An `Op` carries, in one place, everything the compiler and the backends need to know about it:
  infer(attrs, *specs) -> Spec        the shape/dtype rule (raise ShapeMismatch to reject)
  ref(attrs, *arrays) -> array        the NumPy reference: the NumPy backend runs it, tests trust it
  vjp(attrs, g, out, *inputs)         the reverse-mode rule; it builds graph nodes through `Value`
                                      handles (never numbers), so the backward is itself a graph
  nondiff                             why an op has no VJP (sources, backward-only, optimizer ops)
  template                            the CUDA kernel family rendering it (templates/<template>.cu.j2);
                                      None for sources and for matmul (cuBLAS)
  expr                                pointwise ops: the CUDA C float expression of one element, with
                                      the operands named a and b
A new op registers here and gets its gradient test, its NumPy execution and its dumps for free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple


class Spec(NamedTuple):
    shape: tuple[int, ...]
    dtype: str


class ShapeMismatch(Exception):
    """Raised by a shape rule; the graph builder adds the op, the shapes and the user's line."""


@dataclass(frozen=True)
class Op:
    name: str
    kind: str  # source | elementwise | reduction | matmul | shape | nn
    infer: Callable[..., Spec]
    ref: Callable | None = None
    vjp: Callable | None = None
    nondiff: str | None = None
    template: str | None = None
    expr: str | None = None


REGISTRY: dict[str, Op] = {}


def register(op: Op) -> Op:
    assert op.name not in REGISTRY, f"op {op.name} registered twice"
    assert (op.vjp is None) != (op.nondiff is None), f"op {op.name}: give a vjp or say why not"
    REGISTRY[op.name] = op
    return op


def prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise ShapeMismatch(msg)


def float_spec(x: Spec) -> Spec:
    require(x.dtype == "f32", f"expects a float tensor, got {x.dtype}")
    return x
