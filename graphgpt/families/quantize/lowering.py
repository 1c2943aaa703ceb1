"""abs_max and quantize (quantize.cu.j2): a wave of blocks over a tensor's elements, each thread
taking every (blocks x threads)-th vector, for abs_max (the last block to finish combining the
blocks' maxima) and for the plain copy; a shared-memory tile for the transposed one.
"""
from __future__ import annotations

from ...kernels.common import THREADS, VECTOR_BYTES, Kernel, aligned_for, cdiv, index_type, row_vec, types
from ...ops.registry import prod
from ...target import Target
from .reference import exponents

VEC = 8  # elements a thread of the plain copy moves at once: 16 bytes of bf16 in, 8 of FP8 out
# A transposed copy's tile: GROUPS threads across a row of it, a vector each (with 16-byte vectors,
# 128 bytes of the row: one coalesced access), and TILE_ROWS rows down, GROUPS groups of 16 (each
# group 16 bytes of a row of the copy: one store), every thread reading 4 rows.
GROUPS = 8
TILE_ROWS = 16 * GROUPS
TILE_THREADS = GROUPS * TILE_ROWS // 4


def lower(launch, target: Target) -> Kernel:
    if launch.op == "abs_max":
        return _abs_max(launch, target)
    if launch.attrs["transpose"]:
        return _transposed(launch)
    return _plain(launch, target)


def _strided(n_vec: int, target: Target) -> tuple[int, int, int]:
    """(blocks, threads, steps) of a kernel whose threads each take every (blocks x threads)-th
    of n_vec vectors, `steps` of them (the last step of some past the end): at most a wave of
    blocks, so that a large tensor keeps every block busy for several steps and a reduction's
    second level has a wave's partials at most."""
    threads = min(THREADS, cdiv(n_vec, 32) * 32)
    blocks = min(target.wave, cdiv(n_vec, threads))
    return blocks, threads, cdiv(n_vec, blocks * threads)


def _abs_max(launch, target: Target) -> Kernel:
    x = launch.ins[0]
    n = prod(x.shape)
    vec = row_vec(n, x)
    blocks, threads, steps = _strided(n // vec, target)
    return Kernel("abs_max", {**types(launch), "mode": "abs_max", "n": n, "vec": vec, "blocks": blocks,
                              "threads": threads, "steps": steps, "itype": index_type(x.shape)},
                  (blocks, 1, 1), (threads, 1, 1))


def _plain(launch, target: Target) -> Kernel:
    q, x = launch.out, launch.ins[0]
    n = prod(x.shape)
    vec = VEC if n % VEC == 0 and aligned_for(VEC, q, x) else 1
    blocks, threads, steps = _strided(n // vec, target)
    return Kernel("quantize", {**types(launch), "mode": "plain", "exponents": exponents(launch.out.dtype), "n": n, "vec": vec, "blocks": blocks,
                               "threads": threads, "steps": steps, "itype": index_type(x.shape)},
                  (blocks, 1, 1), (threads, 1, 1))


def _transposed(launch) -> Kernel:
    """A block per tile of TILE_ROWS rows and GROUPS vectors of columns of x; the copy's rows go
    out whole 16-byte groups at a time, so it must start on a 16-byte boundary (any arena slot
    does) and its rows be multiples of 16 bytes (the op's shape rule)."""
    q, x = launch.out, launch.ins[0]
    if q.offset % VECTOR_BYTES:
        raise ValueError(f"a transposed quantize writes 16 bytes at a time: its output at byte {q.offset} "
                         f"is not on a 16-byte boundary")
    rows, cols = prod(x.shape[:-1]), x.shape[-1]
    vec = row_vec(cols, x)
    tile_cols = GROUPS * vec
    return Kernel("quantize_transposed", {**types(launch), "mode": "transposed", "exponents": exponents(launch.out.dtype), "rows": rows, "cols": cols, "vec": vec,
                                          "groups": GROUPS, "tile_rows": TILE_ROWS, "tile_cols": tile_cols,
                                          "threads": TILE_THREADS, "itype": index_type(x.shape)},
                  (cdiv(rows, TILE_ROWS), cdiv(cols, tile_cols), 1), (TILE_THREADS, 1, 1))
