"""Data movement (shape.cu.j2): copies, broadcasts and transposes as gathers over
collapsed axes, slices and pads as windows over rows, and transposes that move the contiguous
axis through a shared-memory tile.
"""
from __future__ import annotations

from ...kernels.common import (Kernel, aligned_for, broadcast_strides, cdiv, collapse, contiguous_strides,
                               index_type, operand, streaming, types, width)
from ...ops.registry import prod
from ...target import Target

TILE_ROWS = 8  # a tiled transpose's block: 32 x TILE_ROWS threads, each moving 32 / TILE_ROWS of a 32x32 tile


def lower(launch, target: Target) -> Kernel:
    op, out, (src,) = launch.op, launch.out, launch.ins
    attrs, shape, in_shape = launch.attrs, out.shape, src.shape
    n = prod(shape)
    itype = index_type(shape, in_shape)
    if op in ("slice", "pad"):
        return _window(launch, itype)
    if op == "transpose":
        in_strides = contiguous_strides(in_shape)
        extents, (strides,) = collapse(shape, [in_strides[p] for p in attrs["perm"]])
        if 1 in strides[:-1]:
            return _tiled_transpose(launch, extents, strides, itype)
    elif op == "broadcast_to":
        extents, (strides,) = collapse(shape, broadcast_strides(in_shape, shape))
    else:  # copy, or a reshape that must own its memory: same elements, same order
        extents, strides = ([n], [1]) if n > 1 else ([], [])
    w = width(out, src)
    vec = w if n % w == 0 and aligned_for(w, out) and extents and extents[-1] % w == 0 else 1
    grid, block = streaming(n // vec)
    return Kernel("gather", {**types(launch), "mode": "gather", "n": n, "vec": vec, "itype": itype,
                             "src": operand(extents, strides, src, vec), "threads": block[0]}, grid, block)


def _window(launch, itype: str) -> Kernel:
    """slice and pad as rows: out[r, j] = in[r, j - shift] where 0 <= j - shift < in_row, else 0."""
    op, attrs, out, (src,) = launch.op, launch.attrs, launch.out, launch.ins
    axis, in_shape = attrs["axis"], src.shape
    inner = prod(in_shape[axis + 1:])
    in_row = in_shape[axis] * inner
    out_row = out.shape[axis] * inner
    shift = attrs["before"] * inner if op == "pad" else -attrs["start"] * inner
    n = prod(out.shape)
    w = width(out, src)
    vec = w if all(x % w == 0 for x in (in_row, out_row, shift)) and aligned_for(w, out, src) else 1
    grid, block = streaming(n // vec)
    return Kernel("window", {**types(launch), "mode": "window", "n": n, "vec": vec, "itype": itype, "in_row": in_row,
                             "out_row": out_row, "shift": shift, "threads": block[0]}, grid, block)


def _tiled_transpose(launch, extents: list[int], strides: list[int], itype: str) -> Kernel:
    """The input's contiguous axis is not the output's: go through a shared-memory tile so that both
    the reads (along the input's axis y) and the writes (along the output's last axis x) coalesce."""
    y = strides.index(1)
    out_strides = contiguous_strides(extents)
    batch = [i for i in range(len(extents)) if i not in (y, len(extents) - 1)]
    n_batch = prod(extents[i] for i in batch)
    tiles_x, tiles_y = cdiv(extents[-1], 32), cdiv(extents[y], 32)
    params = {**types(launch), "mode": "tile", "itype": itype, "ex": extents[-1], "sx": strides[-1], "ey": extents[y],
              "oy": out_strides[y], "tiles_x": tiles_x, "batch": n_batch,
              "in_batch": [[extents[i], strides[i]] for i in batch],
              "out_batch": [[extents[i], out_strides[i]] for i in batch], "tile_rows": TILE_ROWS,
              "threads": 32 * TILE_ROWS}
    return Kernel("transpose", params, (tiles_x * tiles_y, 1, min(n_batch, 65535)), (32, TILE_ROWS, 1))
