"""The element types: one table, read by the compiler (nodes, memory plan, kernels) and by the
runtime (arena views, cuBLAS, NCCL, host transfers) alike.

A plan buffer is `[dtype, byte offset, shape]`: one byte-addressed arena holds every tensor, and
the dtype says how its bytes read. Floats narrower than 32 bits are storage types only: kernels
load them into float registers, compute in float and round once, to nearest even, on store.
The two FP8 types hold only the operands of FP8 matrix products (passes/fp8.py), so they are not
among FLOATS: E4M3 (4 exponent bits, 3 mantissa bits, no infinities, largest finite 448) the
forward's operands and the weights, written by the quantize kernels; E5M2 (5 and 2, largest finite
57344) the gradients that backward products read, which need its range more than its precision.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str       # the plan's and the graph's spelling
    ctype: str      # the element type in the rendered CUDA C (bf16, f16: graphgpt/families/common.cu.j2)
    bytes: int
    cuda: int       # cudaDataType_t, for cuBLAS
    nccl: int       # ncclDataType_t
    numpy_name: str  # NumPy's name of the type; ml_dtypes.NAME for the floats NumPy lacks
    is_float: bool

    @property
    def numpy(self) -> np.dtype:
        return _numpy_dtype(self.numpy_name)


@functools.cache
def _numpy_dtype(name: str) -> np.dtype:
    module, _, attr = name.rpartition(".")
    if module == "ml_dtypes":  # imported where a narrow float is first used: it takes over a second on a slow machine
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, attr))
    return np.dtype(getattr(np, name))


DTYPES = {d.name: d for d in (
    DType("f32", "float", 4, 0, 7, "float32", True),          # CUDA_R_32F, ncclFloat32
    DType("bf16", "bf16", 2, 14, 9, "ml_dtypes.bfloat16", True),  # CUDA_R_16BF, ncclBfloat16
    DType("f16", "f16", 2, 2, 6, "float16", True),            # CUDA_R_16F, ncclFloat16
    DType("i32", "int", 4, 10, 2, "int32", False),            # CUDA_R_32I, ncclInt32
    DType("u8", "unsigned char", 1, 8, 1, "uint8", False),    # CUDA_R_8U, ncclUint8
    DType("e4m3", "e4m3", 1, 28, 10, "ml_dtypes.float8_e4m3fn", True),  # CUDA_R_8F_E4M3, ncclFloat8e4m3
    DType("e5m2", "e5m2", 1, 29, 11, "ml_dtypes.float8_e5m2", True),    # CUDA_R_8F_E5M2, ncclFloat8e5m2
)}
FP8, E5M2 = "e4m3", "e5m2"  # the forward's and the weights' FP8 type; the gradients'
E4M3_MAX = 448.0  # E4M3's largest finite value


class FP8Range(NamedTuple):
    """What the FP8 copies' scales are chosen by (families/quantize/reference.py)."""
    largest: float    # the largest finite value
    smallest: int     # the exponent of the smallest subnormal, 2^smallest


FP8_TYPES = {FP8: FP8Range(E4M3_MAX, -9), E5M2: FP8Range(57344.0, -16)}
FP8_MULTIPLE = 16  # cuBLASLt's FP8 products need every dimension a multiple of this
FLOATS = tuple(name for name, d in DTYPES.items() if d.is_float and name not in FP8_TYPES)  # what ops compute and store in


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def nbytes(buf) -> int:
    """Bytes of a plan buffer (plan.Buffer)."""
    return numel(buf.shape) * DTYPES[buf.dtype].bytes


def padded(nbytes: int, align: int) -> int:
    """Bytes of a slot that holds nbytes, in an arena whose tensors start every `align` bytes."""
    return -(-nbytes // align) * align
