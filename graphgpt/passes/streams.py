"""Streams: the gradient branch's small kernels on a second stream, beside the backward's chain.

A layer's backward ends with kernels whose results are parameter gradients and nothing else: the
column sums of its bias and LayerNorm gradients (the sum groups) and, at the end, a large
table's embedding gradient (passes/embedding_grads.py). No later launch of the backward reads them; only the update does. On the main stream
each waits for the one before it and the next layer's GEMMs wait for it, though on the seed each
keeps the GPU's SMs only partly busy for its 10-20 us. So every launch that is not a library call
(cuBLAS, NCCL) and writes only into the gradients' region runs on stream SIDE. So does backward
work that reads only the program's inputs (the ids' order that a large table's embedding
gradient is summed from): passes/schedule.py puts it first, so it overlaps the forward, and is
done long before its reader waits for it. The rest run on MAIN.

What each launch must wait for comes from the bytes it touches, after the memory plan: a launch
waits for the last launch of the other stream that writes what it reads or writes, or reads what
it writes, and that it does not already follow. The arena's reuse of a freed buffer is such a
conflict too, so a buffer is never rewritten while the other stream still reads it. Two launches
of one kernel also conflict: a reduction split over blocks keeps its partials in its module's
`__device__` scratch, which one kernel's launches share.

Each launch gets its `stream` and `waits` (indices of the launches of its program it waits for). A
gradient's allreduce (a collective, on the main stream's list) waits for the side launch that
wrote it, but a backend runs the reduction on a communication stream, or not at all in one
process, so its waits order nothing else; and no side launch touches a gradient after its
allreduce, whose readers a backend joins to the communication stream. A backend forks the side
stream from the main one where a program starts and joins it where it ends, so a program's
launches follow every launch of the programs before it.
"""
from __future__ import annotations

from dataclasses import replace

from ..dtypes import nbytes
from ..ops import REGISTRY
from ..ops.registry import BACKWARD_ONLY, LIBRARY_KINDS
from ..plan import KernelCall, Launch, Program

MAIN, SIDE = 0, 1


def assign_streams(program: Program, grads: tuple[int, int]) -> Program:
    """`program` with each launch given its stream and waits; grads is the gradients' region
    (start, size) in the arena."""
    launches = program.launches
    start, size = grads
    touched = [_touched(launch) for launch in launches]
    streams = [SIDE if launch.kind not in LIBRARY_KINDS
               and all(start <= b.offset and b.offset + nbytes(b) <= start + size for b in launch.outputs) else MAIN
               for launch in launches]
    for i, launch in enumerate(launches):
        if (launch.kind not in LIBRARY_KINDS and REGISTRY[launch.op].nondiff == BACKWARD_ONLY
                and not any(_overlap(touched[i][0], touched[j][1]) for j in range(i))):
            streams[i] = SIDE
    collective = [launch.kind == "collective" for launch in launches]
    followed = {MAIN: -1, SIDE: -1}  # per stream: the last launch of the other stream it waits for
    placed = []
    for i, launch in enumerate(launches):
        own, waits = streams[i], []
        for j in range(i - 1, followed[own], -1):
            if streams[j] == own or not _conflict(touched[i], touched[j]):
                continue
            if collective[j]:
                raise ValueError(f"launch {i} ({launch.op}) on the side stream touches a gradient after "
                                 f"its allreduce (launch {j})")
            waits.append(j)
            if not collective[i]:  # a reduction runs on a stream of its own, which its waits order
                followed[own] = j
            break
        placed.append(replace(launch, stream=own, waits=tuple(waits)))
    return replace(program, launches=tuple(placed))


def _touched(launch: Launch) -> tuple[list, list, str | None]:
    """The byte ranges a launch reads and writes, and its kernel (None for a library call)."""
    def spans(buffers):
        return [(b.offset, b.offset + nbytes(b)) for b in buffers]
    return spans(launch.ins), spans(launch.outputs), launch.cuda.kernel if isinstance(launch.cuda, KernelCall) else None


def _conflict(a, b) -> bool:
    (a_reads, a_writes, a_kernel), (b_reads, b_writes, b_kernel) = a, b
    return (_overlap(a_writes, b_reads + b_writes) or _overlap(a_reads, b_writes)
            or (a_kernel is not None and a_kernel == b_kernel))


def _overlap(xs: list, ys: list) -> bool:
    return any(x0 < y1 and y0 < x1 for x0, x1 in xs for y0, y1 in ys)
