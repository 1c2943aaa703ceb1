"""The key/value caches of decoding (kv_cache.cu.j2): cache_update copies the new
positions' keys and values (of the packed qkv, or the separate k and v) into their rows, a thread
per vector; cached_attention gives each (batch entry, new position) and query head a block (a
query head of the separate form reads its group's key/value head), which scores the query against every cached key up
to its own position (a thread per key, the scores in shared memory), takes their softmax and sums
the values (each thread a vector of head dimensions over an interleaved slice of the keys, then
the slices' sums added in order).
"""
from __future__ import annotations

from ...dtypes import DTYPES
from ...errors import UserError
from ...kernels.common import THREADS, Kernel, c_float, index_type, row_vec, streaming, types
from ...target import Target

ATTENTION_THREADS = 256
SMEM_LIMIT = 48 << 10  # shared memory without opting in: the scores of 12k positions in float32


def lower(launch, target: Target) -> Kernel:
    if launch.op == "cache_update":
        cache, *sources = launch.ins
        packed = len(sources[0].shape) == 5
        kv, position = (sources[:1], sources[1:]) if packed else (sources[:2], sources[2:])
        b, t = kv[0].shape[:2]
        hd = kv[0].shape[-2] * kv[0].shape[-1]
        row = 2 * hd  # a position's keys and values: contiguous in qkv and in the cache; k's, then v's apart
        vec = row_vec(row if packed else hd, cache, *kv)  # a separate form's vector falls in k or in v
        grid, block = streaming(b * t * row // vec)
        return Kernel("cache_update", {**types(launch), "threads": THREADS, "op": "cache_update", "b": b, "t": t, "l": cache.shape[1],
                                       "row": row, "hd": hd, "vec": vec, "position": bool(position), "packed": packed,
                                       "itype": index_type(cache.shape, *(x.shape for x in kv))},
                      grid, block, args=[launch.out, *kv, *position])  # the cache is the output
    qkv, cache, _ = launch.ins
    packed = len(qkv.shape) == 5
    b, t, h, d = (qkv.shape[:2] + qkv.shape[3:]) if packed else qkv.shape
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
                                       "packed": packed, "hkv": cache.shape[3],
                                       "l": length, "scale": c_float(launch.attrs["scale"]), "vec": vec,
                                       "threads": ATTENTION_THREADS, "slices": slices,
                                       "itype": index_type(cache.shape, qkv.shape)},
                  (h, b * t, 1), (ATTENTION_THREADS, 1, 1), smem=smem)
