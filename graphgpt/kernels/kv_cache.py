"""The key/value caches of decoding (templates/kv_cache.cu.j2): cache_update copies the new
positions' keys and values into their rows, a thread per vector; cached_attention gives each
(batch entry, new position) and head a block, which scores the query against every cached key up
to its own position (a thread per key, the scores in shared memory), takes their softmax and sums
the values (each thread a vector of head dimensions over an interleaved slice of the keys, then
the slices' sums added in order).
"""
from __future__ import annotations

from ..dtypes import DTYPES
from ..errors import UserError
from ..target import Target
from .common import Kernel, c_float, index_type, row_vec, streaming, types

ATTENTION_THREADS = 256
SMEM_LIMIT = 48 << 10  # shared memory without opting in: the scores of 12k positions in float32


def lower(launch, target: Target) -> Kernel:
    if launch["op"] == "cache_update":
        cache, qkv, *position = launch["in"]
        b, t, _, h, d = qkv.shape
        row = 2 * h * d  # a position's keys and values, contiguous in qkv and in the cache
        vec = row_vec(row, cache, qkv)
        grid, block = streaming(b * t * row // vec)
        return Kernel("cache_update", {**types(launch), "op": "cache_update", "b": b, "t": t, "l": cache.shape[1],
                                       "row": row, "hd": h * d, "vec": vec, "position": bool(position),
                                       "itype": index_type(cache.shape, qkv.shape)},
                      grid, block, args=[launch["out"], qkv, *position])  # the cache is the output
    qkv, cache, _ = launch["in"]
    b, t, _, h, d = qkv.shape
    length = cache.shape[1]
    vec = row_vec(d, cache, qkv)
    # key slices of the value sums, a thread per (slice, vector of head dims)
    slices = max(1, ATTENTION_THREADS // (d // vec))
    smem = (length + d + slices * d) * DTYPES["f32"].bytes
    if smem > SMEM_LIMIT:
        room = SMEM_LIMIT // 4 - d - slices * d  # the scores that fit beside the head's sums
        if room <= 0:
            raise UserError(f"decoding sums a head's {d} dimensions in shared memory, which holds "
                            f"{SMEM_LIMIT} bytes, too few for them: use a smaller n_embd / n_head")
        raise UserError(f"decoding keeps a query's scores of all {length} cached positions in shared memory, "
                        f"which has room for {room} at head dimension {d}: use a smaller block_size")
    return Kernel("cached_attention", {**types(launch), "op": "cached_attention", "t": t, "h": h, "d": d,
                                       "l": length, "scale": c_float(launch["attrs"]["scale"]), "vec": vec,
                                       "threads": ATTENTION_THREADS, "slices": slices,
                                       "itype": index_type(cache.shape, qkv.shape)},
                  (h, b * t, 1), (ATTENTION_THREADS, 1, 1), smem=smem)
