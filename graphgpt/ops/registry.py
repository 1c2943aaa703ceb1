"""The op registry: one entry per primitive, read by every stage.

An `Op` carries, in one place, everything the compiler and the backends need to know about it:
  infer(attrs, *specs) -> Spec        the shape/dtype rule (raise ShapeMismatch to reject); an op
                                      with several outputs returns a list of Specs, one per output
  ref(attrs, *arrays) -> array        the NumPy reference: numpy_ops.BY_OP[name], filled in at
                                      registration (the NumPy backend runs the same function without
                                      importing the registry); tests trust it. A tuple of arrays for
                                      an op with several outputs
  vjp(attrs, g, out, *inputs)         the reverse-mode rule; it builds graph nodes through `Value`
                                      handles (never numbers), so the backward is itself a graph.
                                      With several outputs, g and out are lists (g[k] is None where
                                      output k gets no gradient)
  nondiff                             why an op has no VJP (sources, backward-only, optimizer ops)
  template                            the CUDA kernel family rendering it (templates/<template>.cu.j2);
                                      None for sources and for matmul (cuBLAS)
  expr                                pointwise ops: the CUDA C float expression of one element, with
                                      the operands named a and b (or a function of the attrs giving it)
Aliasing, which the memory planner reads instead of knowing ops by name:
  view(attrs, x, itemsize)            the output is input 0's memory, this many bytes in (or None:
                                      not for these attrs and shape x): reshape, contiguous slices
  in_place                            the op runs over input 0's memory instead of being free: a
                                      collective (with view), or a cache update, which writes some
                                      rows of a cache and must be placed over it
  overwrites(attrs, n_inputs)         the (output, input) pairs whose input buffer the output may be
                                      written over: where nothing reads that input afterwards, the
                                      planner gives the output its buffer (pointwise ops: any input,
                                      so an optimizer update runs in place; the cross-entropy
                                      gradient: the logits)
  assembles                           each input may be computed straight into its slice of the
                                      output, so the op itself runs nothing (concat)
  stores_any_float                    it accumulates in float and stores once, in attrs["dtype"]
                                      when given: a cast after it folds into it (fuse.py)
  flops(attrs, out, *inputs)          the multiply-adds (times 2) of the matrix products it computes,
                                      as nanoGPT's estimate counts them, for the plan's MFU (ops
                                      without matrix products: 0)
Traits, which fusion and recompute read instead of knowing ops by name:
  row_normaliser                      a RowNormaliser: it normalises each row (LayerNorm's normalize,
                                      RMSNorm's rms_normalize)
  reduction                           a Reduction: a sum over chosen axes, run by the reduction
                                      kernels by rows or by columns
  gemm_epilogues                      a matrix product cuBLASLt can finish in its epilogue (a bias,
                                      a residual, GELU or GELU's gradient applied as it is written)

dtypes: floats are f32, bf16 or f16 (dtypes.py). A rule gives its output's dtype; references
compute in the float type they are given (float32, or float64 in tests: a backend reads narrower
floats as float32 first) and the backend rounds as it stores into the output's dtype.
A new op registers here and gets its gradient test, its NumPy execution and its dumps for free.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

from ..dtypes import FLOATS
from ..numpy_ops import BY_OP


class Spec(NamedTuple):
    shape: tuple[int, ...]
    dtype: str


class ShapeMismatch(Exception):
    """Raised by a shape rule; the graph builder adds the op, the shapes and the user's line."""


@dataclass(frozen=True)
class RowNormaliser:
    """An op that normalises each row of its input over the last axis. Its outputs: the normalised
    rows (at `rows`) and each row's statistics (at `statistics`), which the forward saves so the
    backward reads them instead of recomputing them; recompute brings back the rows, never the
    statistics. `with_epilogue` names the op that also applies the pointwise chain reading the
    rows as it stores them (an affine part), whose result is its last output; None for that op.
    `grad` names its backward op, grad(x, g, *statistics), and `fused_grad` the one that also
    scales g by a per-column weight as it loads it and adds its result to a residual gradient
    as it stores it (attrs "scaled", "accumulate"; see ops/nn.py's fused_normalize_grad)."""
    rows: int
    statistics: tuple[int, ...]
    with_epilogue: str | None = None
    grad: str | None = None
    fused_grad: str | None = None


@dataclass(frozen=True)
class Reduction:
    """A sum over attrs["axes"] (keeping them as ones with attrs["keepdims"]), which the reduction
    kernels run by rows or by columns: column sums of one block shape can share a launch.
    `with_prologue` names the op that computes a pointwise chain of the input as it reads it, so
    the chain's result never goes to memory; None for that op."""
    with_prologue: str | None = None


@dataclass(frozen=True)
class Op:
    name: str
    kind: str  # source | elementwise | reduction | matmul | shape | nn
    infer: Callable[..., Spec]
    ref: Callable | None = None
    vjp: Callable | None = None
    nondiff: str | None = None
    template: str | None = None
    expr: str | Callable[[dict], str] | None = None
    view: Callable[[dict, Spec, int], int | None] | None = None
    in_place: bool = False
    overwrites: Callable[[dict, int], tuple[tuple[int, int], ...]] = lambda attrs, n_inputs: ()
    assembles: bool = False
    stores_any_float: bool = False
    flops: Callable[..., int] = lambda attrs, out, *inputs: 0
    row_normaliser: RowNormaliser | None = None
    reduction: Reduction | None = None
    gemm_epilogues: bool = False

    def c_expr(self, attrs: dict) -> str | None:
        return self.expr(attrs) if callable(self.expr) else self.expr


REGISTRY: dict[str, Op] = {}


def register(op: Op) -> Op:
    assert op.name not in REGISTRY, f"op {op.name} registered twice"
    assert (op.vjp is None) != (op.nondiff is None), f"op {op.name}: give a vjp or say why not"
    if op.kind != "source":
        assert op.ref is None and op.name in BY_OP, f"op {op.name}: its reference belongs in numpy_ops.py"
        op = replace(op, ref=BY_OP[op.name])
    REGISTRY[op.name] = op
    return op


def any_input(attrs: dict, n_inputs: int) -> tuple[tuple[int, int], ...]:
    """A pointwise op's output may overwrite any of its inputs: each element is read before it is
    written, by the same thread."""
    return tuple((0, i) for i in range(n_inputs))


def prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise ShapeMismatch(msg)




def float_spec(x: Spec) -> Spec:
    require(x.dtype in FLOATS, f"expects a float tensor, got {x.dtype}")
    return x


def out_dtype(attrs: dict, default: str) -> str:
    """The output dtype an op was given (attrs["dtype"], set when a cast was folded into it)."""
    dtype = attrs.get("dtype", default)
    require(dtype in FLOATS, f"unknown float dtype {dtype}")
    return dtype
