"""Sums over any axes, fused_sum (a sum with a pointwise prologue) and sum_squares (one norm
over many tensors): the kernels of reduce.cu.j2.
"""
from __future__ import annotations

from ...dtypes import DTYPES, nbytes
from ...kernels.common import (THREADS, WARPS, Kernel, aligned_for, broadcast_shape, cdiv, contiguous_strides,
                               index_type, types, width)
from ...ops.registry import prod
from ...plan import Buffer, Launch, aligned
from ...target import Target
from ..elementwise.lowering import result, steps

MAX_SPLITS = 1024
# A sum_group's splits give it this many times the blocks one reduction of its work would have.
# The groups run on the side stream (passes/streams.py), beside the backward's GEMMs and
# attention, and there fewer blocks take less of the GPU from them: the seed's step took 1.469 ms
# with 1 against 1.502 with 2 (H200). On the main stream, alone, 2 was best (1.589 ms against
# 1.624 with 1 and 1.611 with 4).
GROUP_WAVES = 1
SPLIT_ROWS = 64  # fewest rows a split of a column reduction walks


def lower(launch, target: Target, work: int | None = None) -> Kernel:
    """sum over any axes. The input's axes fold into alternating runs of kept and reduced axes:
    rows -- the innermost run is reduced: threads of a warp (or block) share one output and walk
            its contiguous elements;
    cols -- the innermost run is kept: each thread owns output columns and walks the reduced axes,
            32 neighbouring columns per warp so that every load coalesces.
    Too few outputs for the GPU split the reduced range over several blocks; the last block to
    finish adds their partial sums in a fixed order, so results do not depend on timing. A fused_sum
    with several results (one output each) sums them all in one pass, in cols mode. A cols-mode
    reduction's splits are long enough to spread `work` (column blocks times rows: its own, or a
    sum_group's share) over a wave of the target's blocks, and at least SPLIT_ROWS rows."""
    if launch.op == "sum_group":
        return _group(launch, target)
    if launch.op == "sum_squares":
        flat = _flat_range(launch.ins)
        square = [["mul", [], [-1, -1]]]
        k = lower(Launch(op="fused_sum", out=launch.out, ins=(flat,),
                         attrs={"axes": [0], "keepdims": False, "program": square}), target)
        return Kernel(k.stem.replace("fused_sum", "sum_squares"), k.params, k.grid, k.block, args=[launch.out, flat])
    outs, srcs = launch.outputs, launch.ins
    shape, axes = broadcast_shape(*(b.shape for b in srcs)), set(launch.attrs["axes"])
    full = [b for b in srcs if prod(b.shape) == prod(shape)]  # the others are scalars (see fuse.py)
    prologue = {"steps": steps(launch) if launch.op == "fused_sum" else [],
                "operands": ["full" if b in full else "scalar" for b in srcs],
                "results": [result(b, r) for b, r in zip(outs, launch.attrs.get("results", ()))]}
    stem = "fused_sum" if prologue["steps"] else "sum"
    strides = contiguous_strides(shape)
    runs: list[list] = []   # [reduced, extent, stride], outermost first
    for i, e in enumerate(shape):
        if e == 1:
            continue
        if runs and runs[-1][0] == (i in axes):
            runs[-1][1] *= e
            runs[-1][2] = strides[i]
        else:
            runs.append([i in axes, e, strides[i]])
    kept = [[e, s] for r, e, s in runs if not r]
    reduced = [[e, s] for r, e, s in runs if r]
    n_out, n_red = prod(e for e, _ in kept), prod(e for e, _ in reduced)
    common = {**types(launch), "threads": THREADS, "itype": index_type(shape), "n_out": n_out, "n_red": n_red, "kept": kept,
              "reduced": reduced, **prologue}
    if kept and (not runs or not runs[-1][0]):
        w = width(*outs, *full)
        vec = w if kept[-1][0] % w == 0 and aligned_for(w, *outs, *full) else 1
        x_blocks = cdiv(n_out // vec, 32)
        rows = max(SPLIT_ROWS, cdiv(work or x_blocks * n_red, target.wave))
        chunk = cdiv(n_red, min(cdiv(n_red, rows), MAX_SPLITS))
        splits = cdiv(n_red, chunk)
        return Kernel(f"{stem}_cols", dict(common, mode="cols", vec=vec, splits=splits, chunk=chunk),
                      (x_blocks, splits, 1), (32, WARPS, 1))
    if len(outs) > 1:
        raise ValueError("a reduction with several results sums over leading axes only (cols mode)")
    w = width(*full)
    vec = w if reduced and reduced[-1][0] % w == 0 and aligned_for(w, *full) else 1
    n_vec = n_red // vec
    if n_vec <= 32 * 16:  # a warp per output
        return Kernel(f"{stem}_rows", dict(common, mode="warp", vec=vec, splits=1, chunk=n_vec),
                      (cdiv(n_out, WARPS), 1, 1), (THREADS, 1, 1))
    wave = target.wave
    splits = 1 if n_out >= wave // 2 else max(1, min(cdiv(wave, n_out), cdiv(n_vec, THREADS * 8), MAX_SPLITS))
    chunk = cdiv(n_vec, splits)
    splits = cdiv(n_vec, chunk)
    return Kernel(f"{stem}_rows", dict(common, mode="block", vec=vec, splits=splits, chunk=chunk),
                  (n_out, splits, 1), (THREADS, 1, 1))


def _group(launch, target: Target) -> Kernel:
    """A sum_group: each member lowered as its own cols-mode launch, all with splits of one length,
    the group's work spread over GROUP_WAVES waves of blocks (alone, each would ask for a wave of
    its own), and their grids laid one after another along x."""
    members, at, first_out = [], 0, 0
    for op, attrs, n in launch.attrs["members"]:
        attrs = dict(attrs)
        results = len(attrs.get("results", ())) or 1
        outs = launch.outs[first_out:first_out + results]
        members.append(Launch(op=op, attrs=attrs, ins=launch.ins[at:at + n], out=outs[0],
                              outs=outs if results > 1 else None))
        at, first_out = at + n, first_out + results
    alone = [lower(m, target) for m in members]
    if any(k.params["mode"] != "cols" for k in alone):
        raise ValueError("a sum_group's members are column sums (cols mode)")
    work = sum(k.grid[0] * k.params["n_red"] for k in alone) // GROUP_WAVES
    params, first_block = [], 0
    for m in members:
        k = lower(m, target, work)
        x_blocks, splits = k.grid[0], k.grid[1]
        params.append({**k.params, "x_blocks": x_blocks, "blocks": x_blocks * splits, "first_block": first_block})
        first_block += x_blocks * splits
    return Kernel("sum_group", {"threads": THREADS, "members": params, "vec": max(k["vec"] for k in params)},
                  (first_block, 1, 1), (32, WARPS, 1))


def _flat_range(buffers: list[Buffer]) -> Buffer:
    """Tensors that lie one after another in memory (each where the last one's aligned end is) as one
    flat buffer from the first's start to the last's end."""
    for prev, nxt in zip(buffers, buffers[1:]):
        if nxt.dtype != prev.dtype or nxt.offset != prev.offset + aligned(nbytes(prev)):
            raise ValueError("a multi-tensor reduction needs its tensors one after another in memory")
    start, last = buffers[0].offset, buffers[-1]
    return Buffer(last.dtype, start, ((last.offset + nbytes(last) - start) // DTYPES[last.dtype].bytes,))
