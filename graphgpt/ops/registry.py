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
  template                            the CUDA kernel family rendering it (graphgpt/families/<template>/);
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
  matrix_product                      a MatrixProduct: op(a) @ op(b), the operands' transposes in
                                      attrs "ta" and "tb", and the op it becomes with epilogues
  gemm_epilogue                       a GemmEpilogue: a pointwise op a GEMM can apply as it writes
  loss                                a RowLoss: a loss over rows of logits, its gradient op and the
                                      op computing both in one pass (fusion, the classifier's chunks)
  remat_root                          the rematerialisation policy (passes/remat.py) that recomputes
                                      its output for the backward: "attention" (the attention
                                      probabilities), "gelu" (an MLP's activation); "all" recomputes
                                      these, pointwise ops and a row normaliser's rows
  scatters_rows                       it sums the rows of input 1 into the output's rows (attrs
                                      "rows" of them) that input 0's ids name, which one_hot(ids)
                                      times those rows computes too (passes/embedding_grads.py)
What an op is, which simplification, fusion and the memory plan read instead of its name:
  source                              a source's arena region (passes/memory.py): "params" (a
                                      trainable parameter: it has a gradient, and a compute-type
                                      copy in a narrow plan), "state" (optimizer state), "caches"
                                      (key/value caches; with attrs copy_of, a weight's copy),
                                      "inputs" (fed each step), "consts" (attrs "value"); the first
                                      three (PERSISTENT_REGIONS) hold a slot of their own across steps
  identity(attrs, x, out)             the output is input 0 unchanged, for these attrs, input spec
                                      and output spec: simplify drops the node (a reshape to the
                                      same shape, a slice of everything, a sum over no axes)
  reinterprets                        the output is input 0's elements in the same order, in another
                                      shape (reshape): applied to another's output it may read
                                      that one's input instead, and a fold may look through it
  permutes                            the output is input 0 with its axes permuted by attrs "perm"
                                      (transpose): a pointwise chain can store in that order, and
                                      a swap of the last two axes folds into a matrix product
  pads                                the output is input 0 with zeros before (attrs "before") and
                                      after it along attrs "axis" (pad): a sum of pads that tile
                                      the axis is a concat
  casts                               the output is input 0 in the float type attrs "dtype" (cast):
                                      a producer that stores any float takes it in, and a cast of
                                      a parameter is its weight's copy
  adds, multiplies                    the pointwise sum or product of two operands: a GEMM adds a
                                      sum's other operand in its epilogue (a bias, a residual), a
                                      product by the constant 1 is its other operand, a row
                                      normaliser's backward takes in a scaling of its gradient

dtypes: floats are f32, bf16 or f16 (dtypes.py). A rule gives its output's dtype; references
compute in the float type they are given (float32, or float64 in tests: a backend reads narrower
floats as float32 first) and the backend rounds as it stores into the output's dtype.
A new op registers here and gets its gradient test, its NumPy execution and its dumps for free.
"""
from __future__ import annotations

import sys
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
    as it stores it (attrs "scaled", "accumulate"; see families/layernorm/ops.py)."""
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
class MatrixProduct:
    """op(a) @ op(b), op transposing the last two axes where attrs "ta" / "tb" say so: simplify folds
    a transposed operand into the flag, and a transpose of the product into the swapped product.
    `with_epilogue` names the op that also adds a bias or residual or applies a GemmEpilogue as it
    writes (attrs "bias", "residual", and each epilogue's attr); None for that op, which is
    therefore not a plain product."""
    with_epilogue: str | None = None


@dataclass(frozen=True)
class GemmEpilogue:
    """A pointwise op a GEMM's epilogue form (MatrixProduct.with_epilogue) applies as it writes,
    asked for by its boolean attr `attr`: with `grad` False the op of the product, which the GEMM
    then also writes as a second output (the pre-activation); with `grad` True the op's gradient
    op(pre, g), computed where g is the product (the GEMM reads pre as its last input)."""
    attr: str
    grad: bool = False


@dataclass(frozen=True)
class RowLoss:
    """A loss over rows of logits (input 0) and targets (input 1). `grad` names its gradient op,
    grad(logits, targets, seed), and `with_grad` the op computing the loss and that gradient in one
    pass over the logits, its outputs (loss, gradient). No element of the gradient is larger in
    magnitude than |seed| / rows, so with attrs "fp8_grad" (an FP8 type) and "grad_dtype" (the
    gradient's) `with_grad` also writes the gradient's FP8 copy, at the power-of-two scale that
    quantize would take for that bound, and the factor that undoes it: outputs (loss, gradient,
    copy, factor), the copy what quantize makes of the stored gradient (passes/fp8.py)."""
    grad: str
    with_grad: str


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
    matrix_product: MatrixProduct | None = None
    gemm_epilogue: GemmEpilogue | None = None
    loss: RowLoss | None = None
    remat_root: str | None = None
    scatters_rows: bool = False
    source: str | None = None
    identity: Callable[[dict, Spec, Spec], bool] = lambda attrs, x, out: False
    reinterprets: bool = False
    permutes: bool = False
    pads: bool = False
    casts: bool = False
    adds: bool = False
    multiplies: bool = False
    module: str = ""  # the module that registered it (set by `register`): a family's ops.py

    def c_expr(self, attrs: dict) -> str | None:
        return self.expr(attrs) if callable(self.expr) else self.expr

    @property
    def plain_product(self) -> bool:
        """A matrix product without epilogues: op(a) @ op(b) and nothing else."""
        return self.matrix_product is not None and self.matrix_product.with_epilogue is not None


REGISTRY: dict[str, Op] = {}
LIBRARY_KINDS = ("matmul", "collective")  # kinds whose launches a backend hands to cuBLAS and NCCL
PERSISTENT_REGIONS = ("params", "state", "caches")  # sources with a slot of their own in the arena


def register(op: Op) -> Op:
    assert op.name not in REGISTRY, f"op {op.name} registered twice"
    assert (op.vjp is None) != (op.nondiff is None), f"op {op.name}: give a vjp or say why not"
    assert (op.kind == "source") == (op.source is not None), f"op {op.name}: a source names its arena region"
    if op.kind != "source":
        assert op.ref is None and op.name in BY_OP, f"op {op.name}: its family's reference.py computes it"
        op = replace(op, ref=BY_OP[op.name])
    op = replace(op, module=sys._getframe(1).f_globals["__name__"])  # where it is declared
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


BACKWARD_ONLY = "backward-only: emitted by a VJP rule, checked through its forward op's gradient test"
FUSION_MADE = "made by the fusion pass, which runs after autodiff"


def same(attrs, x, *rest):
    """The shape rule of an op whose operands and output are one float shape and type."""
    float_spec(x)
    for r in rest:
        require(r.shape == x.shape and r.dtype == x.dtype, f"operands differ: {x.shape} vs {r.shape}")
    return x
