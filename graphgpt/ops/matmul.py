"""Batched matrix product with transpose flags, as cuBLAS takes it.

matmul(a, b, ta, tb) = op(a) @ op(b) where op transposes the last two axes when its flag is set.
`b` is either batched like `a` or a plain matrix shared by every batch entry (a weight); the
flags let the backward use the operands in place instead of materialising transposes.

With attrs["fp8"] the product is an FP8 one (passes/fp8.py): both operands FP8, E4M3 or E5M2 (a
gradient) but not both E5M2, each read along k (ta False, tb True, as cuBLASLt's FP8 kernels
require), followed by two float32 scalars, the factors that undo each operand's scaling; the
product is multiplied by both before its epilogue, and stored in attrs["dtype"].
"""
from __future__ import annotations

from ..dtypes import FP8, FP8_TYPES
from ..numpy_ops.matmul import SCALES
from .registry import MatrixProduct, Op, Spec, float_spec, out_dtype, prod, register, require


def _mk(x, t):
    return (x[-1], x[-2]) if t else (x[-2], x[-1])


def _operands(attrs, a, b, scales) -> str:
    """Check the operands' types (and an FP8 product's factors); the product's dtype."""
    if not attrs.get("fp8"):
        require(not scales, "too many inputs")
        float_spec(a), float_spec(b)
        require(a.dtype == b.dtype, f"operands differ in dtype: {a.dtype} and {b.dtype}")
        return out_dtype(attrs, a.dtype)
    require(a.dtype in FP8_TYPES and b.dtype in FP8_TYPES and FP8 in (a.dtype, b.dtype),
            f"an FP8 product's operands are FP8, at least one {FP8}, not {a.dtype} and {b.dtype}")
    require(not attrs["ta"] and attrs["tb"], "an FP8 product reads both operands along k (ta=False, tb=True)")
    require(len(scales) == SCALES and all(s.shape == () and s.dtype == "f32" for s in scales),
            "an FP8 product takes each operand's float32 factor after the operands")
    require("dtype" in attrs, "an FP8 product names the dtype it stores")
    return out_dtype(attrs, attrs["dtype"])


def _infer(attrs, a, b, *scales):
    dtype = _operands(attrs, a, b, scales)
    require(len(a.shape) >= 2 and len(b.shape) >= 2, "needs operands of rank >= 2")
    (m, k), (k2, n) = _mk(a.shape, attrs["ta"]), _mk(b.shape, attrs["tb"])
    require(k == k2, f"inner dimensions differ: {k} vs {k2}")
    if len(b.shape) == 2:
        require(not attrs["ta"] or len(a.shape) == 2, "a shared right operand needs ta=False")
    else:
        require(a.shape[:-2] == b.shape[:-2], f"batch dimensions differ: {a.shape[:-2]} vs {b.shape[:-2]}")
    return Spec(a.shape[:-2] + (m, n), dtype)


def _vjp(attrs, g, out, a, b):
    ta, tb = attrs["ta"], attrs["tb"]
    mm = g.graph.add
    da = mm("matmul", (b, g), ta=tb, tb=True) if ta else mm("matmul", (g, b), ta=False, tb=not tb)
    if b.ndim == 2 and a.ndim > 2:  # the shared operand's gradient sums over the batch
        a2 = a.reshape(-1, a.shape[-1])
        g2 = g.reshape(-1, g.shape[-1])
        db = mm("matmul", (g2, a2), ta=True, tb=False) if tb else mm("matmul", (a2, g2), ta=True, tb=False)
    else:
        db = mm("matmul", (g, a), ta=True, tb=ta) if tb else mm("matmul", (a, g), ta=not ta, tb=False)
    return da, db


def _flops(attrs, out, a: Spec, b: Spec, *rest) -> int:
    (m, k), n = _mk(a.shape, attrs["ta"]), _mk(b.shape, attrs["tb"])[1]
    return 2 * prod(a.shape[:-2]) * m * n * k


register(Op("matmul", "matmul", _infer, vjp=_vjp, stores_any_float=True, flops=_flops, gemm_epilogues=True,
            matrix_product=MatrixProduct(with_epilogue="fused_matmul")))


# A GEMM with its epilogue, made by the fusion pass: op(a) @ op(b) [+ bias] [+ residual], the bias
# one value per output column (attrs["bias"]: the input after the operands and an FP8 product's
# factors), the residual of the output's shape
# (attrs["residual"]: the last input). cuBLASLt adds both as it writes the product (a bias
# epilogue, and C with beta = 1), so neither sum makes a pass over memory of its own.
# With attrs["gelu"] (no residual) it has two outputs: GELU of the biased product, and the biased
# product itself, the pre-activation GELU's gradient reads; with attrs["gelu_grad"] (no bias, no
# residual) the input after the operands is that pre-activation, and the result is the product
# times GELU's derivative there: the gradient of the pre-activation, when the product is that of
# GELU's output. cuBLASLt computes GELU (tanh approximation) from the float accumulator.
def _fused_infer(attrs, a, b, *rest):
    scales = SCALES if attrs.get("fp8") else 0
    out = _infer(attrs, a, b, *rest[:scales])
    rest = list(rest[scales:])
    if attrs["bias"]:
        bias = rest.pop(0)
        require(bias.shape == out.shape[-1:], f"bias {bias.shape} is not one value per column of {out.shape}")
        require(bias.dtype == out.dtype, f"bias is {bias.dtype}, the product {out.dtype}")
    gelu, gelu_grad = attrs.get("gelu", False), attrs.get("gelu_grad", False)
    require(not (gelu or gelu_grad) or not attrs["residual"], "a GELU epilogue takes no residual")
    require(not gelu_grad or not (gelu or attrs["bias"]), "GELU's gradient epilogue takes no bias")
    if gelu_grad:
        pre = rest.pop(0)
        require(pre.shape == out.shape and pre.dtype == out.dtype,
                f"pre-activation {pre.dtype}{list(pre.shape)} is not the product's {out.dtype}{list(out.shape)}")
    if attrs["residual"]:
        residual = rest.pop(0)
        require(residual.shape == out.shape, f"residual {residual.shape} is not the product's {out.shape}")
        require(residual.dtype == out.dtype, f"residual is {residual.dtype}, the product {out.dtype}")
    require(not rest, "too many inputs")
    return [out, out] if gelu else out


def _fused_overwrites(attrs, n_inputs: int):
    """The product over its residual: cuBLASLt reads C before it writes D of the same layout, so
    D = A B + C may be computed in place (a weight gradient summed over chunks of rows)."""
    return ((0, n_inputs - 1),) if attrs["residual"] else ()


register(Op("fused_matmul", "matmul", _fused_infer, flops=_flops, overwrites=_fused_overwrites,
            nondiff="made by the fusion pass, which runs after autodiff", gemm_epilogues=True,
            matrix_product=MatrixProduct()))
