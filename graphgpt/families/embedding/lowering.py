"""embedding (a gather of table rows), embedding_grad (a deterministic scatter-add without
atomics), one_hot (the ids as a (rows, ids) matrix of zeros and ones), id_order (the ids' positions
sorted by id, in one block) and embedding_grad_sorted (each table row summed from its run of that
order): the kernels of embedding.cu.j2.
"""
from __future__ import annotations

from ...kernels.common import THREADS, Kernel, aligned_for, cdiv, index_type, streaming, types, width
from ...ops.registry import prod
from ...target import Target

ID_CHUNK = 2048  # ids an embedding-gradient block reads per round (8 KiB of shared memory)
SUM_FLOATS = 24576  # a block's running sums, in dynamic shared memory: 96 KiB, two blocks per SM
MAX_BLOCK_ROWS = 32  # table rows one embedding-gradient block owns, at most
SORT_THREADS = 1024  # id_order's one block
SORTED_BLOCK_ROWS = 4  # table rows a block of the sorted embedding gradient sums, one after another


def lower(launch, target: Target) -> Kernel:
    out = launch.out
    if launch.op == "embedding":
        table, ids = launch.ins
        c, n = table.shape[1], prod(ids.shape)
        w = width(out, table)
        vec = w if c % w == 0 and aligned_for(w, out, table) else 1
        grid, block = streaming(n * c // vec)
        return Kernel("embedding", {**types(launch), "op": "embedding", "n": n, "c": c, "vec": vec, "threads": block[0],
                                    "itype": index_type(out.shape, table.shape)}, grid, block)
    if launch.op == "one_hot":
        rows, n = out.shape
        w = width(out)
        vec = w if n % w == 0 and aligned_for(w, out) else 1
        grid, block = streaming(rows * n // vec)
        return Kernel("one_hot", {**types(launch), "op": "one_hot", "rows": rows, "n": n, "vec": vec,
                                  "threads": block[0], "itype": index_type(out.shape)}, grid, block)
    if launch.op == "id_order":
        (ids,) = launch.ins
        n = prod(ids.shape)
        keys = 1 << (n - 1).bit_length()  # the sort's keys: a power of two, padded past the ids
        return Kernel("id_order", {**types(launch), "op": "id_order", "n": n, "rows": launch.attrs["rows"],
                                   "n_keys": keys, "threads": SORT_THREADS}, (1, 1, 1), (SORT_THREADS, 1, 1), smem=4 * keys)
    if launch.op == "embedding_grad_sorted":
        order, g = launch.ins
        rows, c = out.shape
        vec, threads = _row_lanes(out, g)
        return Kernel("embedding_grad_sorted", {**types(launch), "op": "embedding_grad_sorted", "rows": rows, "c": c,
                                                "n": prod(g.shape[:-1]), "vec": vec, "threads": threads,
                                                "block_rows": SORTED_BLOCK_ROWS, "itype": index_type(out.shape, g.shape)},
                      (cdiv(rows, SORTED_BLOCK_ROWS), cdiv(c, threads * vec), 1), (threads, 1, 1))
    ids, g = launch.ins
    rows, c = out.shape
    vec, threads = _row_lanes(out, g)
    col_blocks = cdiv(c, threads * vec)
    # table rows a block owns: as many as its sums have room for (every block scans all ids, so
    # fewer blocks read them fewer times), yet few enough that the blocks fill the GPU (a small
    # table is better spread one row per block)
    block_rows = max(1, min(MAX_BLOCK_ROWS, SUM_FLOATS // (threads * vec), rows * col_blocks // target.wave))
    # groups of threads that share out a block's rows: as many as fit in 1024 threads and the sums,
    # so that a frequent id (in text, a few ids are most of them) is not summed row by row
    groups = max(1, min(1024 // threads, SUM_FLOATS // (block_rows * threads * vec)))
    return Kernel("embedding_grad", {**types(launch), "op": "embedding_grad", "rows": rows, "c": c, "n": prod(ids.shape),
                                     "vec": vec, "threads": threads, "groups": groups, "block_rows": block_rows,
                                     "ids_per_thread": max(1, ID_CHUNK // (threads * groups)),
                                     "itype": index_type(out.shape, g.shape)},
                  (cdiv(rows, block_rows), col_blocks, 1), (threads * groups, 1, 1),
                  smem=groups * block_rows * threads * vec * 4)


def _row_lanes(out, g) -> tuple[int, int]:
    """An embedding gradient's vector width and threads across a table row of `out` summed from
    rows of `g`: a thread a vector, in whole warps."""
    c = out.shape[1]
    w = width(out, g)
    vec = w if c % w == 0 and aligned_for(w, out, g) else 1
    return vec, min(THREADS, cdiv(c // vec, 32) * 32)
