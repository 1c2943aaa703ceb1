"""What every kernel family's lowering shares: the Kernel record and the layout arithmetic.

A family's lowering (graphgpt/families/<family>/lowering.py) turns one launch of the plan into a
Kernel: the template's parameters and the launch geometry. Every launch's shapes, attributes and
operand offsets are known at compile time, so extents, strides and constants become literals.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import DTYPES
from ..ops.registry import prod

VECTOR_BYTES = 16  # one vector access
THREADS = 256      # threads per block of the streaming and row kernels
WARPS = THREADS // 32


@dataclass
class Kernel:
    """A launch's kernel before naming: template parameters and launch geometry."""
    stem: str                      # the name's readable part
    params: dict
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: list | None = None       # the kernel's buffers when not the launch's (out, *in)
    smem: int = 0                  # bytes of dynamic shared memory
    arch: str | None = None        # the GPU architecture whose own instructions it uses (sm_90a), if any
    helpers: tuple[str, ...] = ()  # helpers its family's prelude renders only for kernels that ask (fp8)


def contiguous_strides(shape) -> list[int]:
    out, step = [], 1
    for d in reversed(shape):
        out.append(step)
        step *= d
    return out[::-1]


def broadcast_strides(shape, out_shape) -> list[int]:
    """Strides that read `shape` broadcast to `out_shape` (0 along broadcast axes)."""
    shape = [1] * (len(out_shape) - len(shape)) + list(shape)
    return [s if d == o else 0 for d, o, s in zip(shape, out_shape, contiguous_strides(shape))]


def collapse(extents, *strides) -> tuple[list[int], list[list[int]]]:
    """Drop unit axes and merge neighbours that every operand walks contiguously: fewer divisions."""
    dims = [(e, [s[i] for s in strides]) for i, e in enumerate(extents) if e != 1]
    merged: list[tuple[int, list[int]]] = []
    for e, st in dims:
        if merged and all(po == so * e for po, so in zip(merged[-1][1], st)):
            merged[-1] = (merged[-1][0] * e, st)
        else:
            merged.append((e, st))
    return [e for e, _ in merged], [[st[i] for _, st in merged] for i in range(len(strides))]


def reshaped_strides(shape, strides, new_shape) -> list[int]:
    """Strides that read the same elements as (shape, strides) in the order of `new_shape` (same size).
    Axes are grouped into the shortest runs of equal size on both sides; within a run the operand
    must be contiguous (one stride per element) or broadcast (stride 0) for that to exist."""
    shape, new_shape, out = list(shape), list(new_shape), []
    i = j = 0
    while j < len(new_shape):
        old_run, new_run, a, b = [i], [j], shape[i] if i < len(shape) else 1, new_shape[j]
        i, j = i + 1, j + 1
        while a != b:
            if a < b:
                a *= shape[i]
                old_run.append(i)
                i += 1
            else:
                b *= new_shape[j]
                new_run.append(j)
                j += 1
        old_run = [k for k in old_run if k < len(shape) and shape[k] != 1]
        inner = strides[old_run[-1]] if old_run else 0
        for k, nxt in zip(old_run, old_run[1:]):
            if strides[k] != strides[nxt] * shape[nxt]:
                raise ValueError(f"strides {strides} of {shape} cannot be read as {new_shape}")
        step, run = inner, []
        for k in reversed(new_run):
            run.append(step)
            step *= new_shape[k]
        out += run[::-1]
    return out


def broadcast_shape(*shapes) -> list[int]:
    """A fused chain's shape: its operands' shapes broadcast together."""
    return list(np.broadcast_shapes(*(tuple(s) for s in shapes)))


def index_type(*shapes) -> str:
    """32-bit index arithmetic (cheaper division by constants) unless a buffer needs more."""
    return "unsigned int" if max(prod(s) for s in shapes) < 2**31 else "unsigned long long"


def width(*buffers) -> int:
    """Elements per 16-byte access of the widest float among these buffers: 4 for f32, 8 for bf16.
    A kernel moves the same number of elements of each of its operands at once."""
    return VECTOR_BYTES // max((DTYPES[b.dtype].bytes for b in buffers if DTYPES[b.dtype].is_float), default=4)


def aligned_for(vec: int, *buffers) -> bool:
    """Every buffer starts where a `vec`-element access of its dtype is aligned."""
    return all(b.offset % (vec * DTYPES[b.dtype].bytes) == 0 for b in buffers)


def types(launch) -> dict:
    """The C element types of a launch's output and inputs, as the templates declare them."""
    return {"out_t": DTYPES[launch.out.dtype].ctype, "in_t": [DTYPES[b.dtype].ctype for b in launch.ins]}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def c_float(x: float) -> str:
    return f"{float(x)!r}f"


def streaming(n_vec: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """One vector per thread: grid and block for `n_vec` work items."""
    threads = min(THREADS, cdiv(n_vec, 32) * 32)
    return (cdiv(n_vec, threads), 1, 1), (threads, 1, 1)


def operand(extents: list[int], strides: list[int], buf, vec: int) -> dict:
    """How a kernel reads one operand at the output's flat index i (vec consecutive elements at once):
    vec    -- `vec` consecutive elements of the operand: one (vector) load
    splat  -- all `vec` elements read the same operand element (broadcast along the innermost axis)
    gather -- element by element (the innermost axis is strided, or not aligned for a vector load)
    """
    dims = [[e, s] for e, s in zip(extents, strides)]
    identity = strides == contiguous_strides(extents)
    inner = strides[-1] if strides else 0
    if vec == 1 or (inner == 1 and aligned_for(vec, buf)):
        mode = "vec"
    elif inner == 0:
        mode = "splat"
    else:
        mode = "gather"
    return {"mode": mode, "identity": identity, "dims": dims}


def row_vec(row: int, *buffers) -> int:
    """The 16-byte access's element count where rows of `row` elements in these buffers allow it,
    else 1."""
    w = width(*buffers)
    return w if row % w == 0 and aligned_for(w, *buffers) else 1
