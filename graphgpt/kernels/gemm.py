"""Lower a matmul launch to one cuBLAS strided-batched GEMM call, at compile time; a fused_matmul
to one cuBLASLt matmul with the same operands plus its epilogue: the bias vector (one value per
cuBLAS row, which is our column), C = the residual, added with beta = 1, and GELU or its
derivative with the pre-activation as cuBLASLt's aux matrix (laid out as the product).

An FP8 product carries its operands' dequantisation factors, which cuBLASLt multiplies
the accumulator by, in cuBLAS's names for the operands. A product of two E4M3 operands (the
forward's) keeps its sums in the FP8 tensor cores' accumulator; one that reads an E5M2 gradient
(the backward's, long sums of small terms) has cuBLASLt move them into float32 as it goes.

cuBLAS is column-major; our buffers are row-major. A row-major (M, N) matrix is the same bytes as
a column-major (N, M) one, so C = op(A) @ op(B) is computed as C^T = op(B)^T @ op(A)^T: the
operands swap places and every leading dimension is the stored row length.
"""
from __future__ import annotations

from ..dtypes import FP8
from ..numpy_ops.matmul import SCALES
from ..ops.registry import prod
from ..plan import Epilogue, Gemm, GemmCall, Launch, Scales


def lower_matmul(launch: Launch) -> GemmCall:
    a_shape, b_shape = (b.shape for b in launch.ins[:2])
    ta, tb = launch.attrs["ta"], launch.attrs["tb"]
    m, k = (a_shape[-1], a_shape[-2]) if ta else (a_shape[-2], a_shape[-1])
    n = b_shape[-2] if tb else b_shape[-1]
    batch = prod(a_shape[:-2])
    if len(b_shape) == 2 and not ta:  # a shared weight: fold the batch into the rows, one GEMM
        m, batch = m * batch, 1
    gemm = Gemm(
        transa=int(tb), transb=int(ta),  # the swapped operands' flags
        m=n, n=m, k=k,
        a=launch.ins[1], lda=b_shape[-1], stride_a=0 if len(b_shape) == 2 else n * k,
        b=launch.ins[0], ldb=a_shape[-1], stride_b=m * k if batch > 1 else 0,
        c=launch.out, ldc=n, stride_c=m * n if batch > 1 else 0,
        batch=batch,
    )
    attrs, extra = launch.attrs, list(launch.ins[2:])
    scales = None
    if attrs.get("fp8"):  # our a's factor, then b's: cuBLAS's b, then its a
        b_scale, a_scale = extra[:SCALES]
        fast = launch.ins[0].dtype == launch.ins[1].dtype == FP8
        scales, extra = Scales(a_scale, b_scale, fast), extra[SCALES:]
    if launch.op == "matmul":
        return GemmCall(gemm, scales=scales)
    bias = extra.pop(0) if attrs["bias"] else None
    if attrs.get("gelu"):  # GELU of the biased product into out, the biased product into aux
        kind, aux = ("gelu_aux_bias" if bias else "gelu_aux"), launch.outs[1]
    elif attrs.get("gelu_grad"):  # the product times GELU's derivative at aux
        kind, aux = "dgelu", extra.pop(0)
    else:
        kind, aux = ("bias" if bias else "default"), None
    if aux is not None and (batch > 1 or n % 8):
        raise ValueError(f"a GELU epilogue needs one GEMM of a width that is a multiple of 8, not {batch} x {m}x{n}")
    return GemmCall(gemm, Epilogue(kind, bias, aux, extra.pop(0) if attrs["residual"] else None), scales)
