"""Decoding with key/value caches: the kv_cache kernel family."""
from __future__ import annotations

from ...ops.registry import Op, Spec, register, require
from ..attention.ops import geometry, heads_spec


# ---- decoding with key/value caches --------------------------------------------------------
# A layer's cache holds the keys and values of every position decoded so far, as (B, L, 2, Hkv, D)
# in the compute type (L: the block size; Hkv = H for the packed form). `cache_update` writes the
# new positions' k and v (slots 1 and 2 of the packed qkv, or the separate k and v) into rows
# [p, p + T), p the program's int32 position input (0 without one: the prefill of a whole window);
# it runs over the cache, which the plan keeps in place. `cached_attention` is the causal
# attention of T new queries (the packed qkv's, or q) at positions p.. over the cache's rows up to
# each query's own.
DECODE_ONLY = "decoding only: the generation programs, which take no gradients"


def _cache_spec(qkv: tuple, cache: Spec, position: tuple) -> None:
    """qkv: the packed qkv, or q, k, v (the query alone's geometry is checked against the cache's)."""
    b, t, h, hkv, d = geometry(qkv)
    require(cache.dtype == qkv[0].dtype and len(cache.shape) == 5 and cache.shape[0] == b
            and cache.shape[2:] == (2, hkv, d) and t <= cache.shape[1],
            f"cache {cache.shape}:{cache.dtype} is not (B, L >= T, 2, Hkv, D) of {qkv[-1].shape}:{qkv[0].dtype}")
    require(len(position) <= 1 and all(p == Spec((), "i32") for p in position),
            "the position is one int32 scalar")


def _cache_update_infer(attrs, cache, *inputs):
    """Inputs: the cache, the packed qkv or k and v, and the position (when decoding)."""
    if len(inputs[0].shape) == 5:
        _cache_spec(inputs[:1], cache, inputs[1:])
        return cache
    require(len(inputs) >= 2, "too few inputs")
    k, v, *position = inputs
    _cache_spec((k, k, v), cache, tuple(position))  # k stands in for a query of Hkv heads
    return cache


def _decode_query(q: Spec, cache: Spec) -> tuple:
    """The cached attention's query as the operands of geometry: the packed qkv, or q with k and v
    of the cache's key/value heads."""
    if len(q.shape) == 5:
        return (q,)
    require(len(q.shape) == 4 and len(cache.shape) == 5,
            f"needs q (B, T, H, D) and a (B, L, 2, Hkv, D) cache, got {q.shape}, {cache.shape}")
    kv = Spec(q.shape[:2] + cache.shape[3:], cache.dtype)
    return q, kv, kv


def _cached_attention_infer(attrs, q, cache, position):
    qkv = _decode_query(q, cache)
    _cache_spec(qkv, cache, (position,))
    return heads_spec(qkv)


def _cached_attention_flops(attrs, out, q: Spec, cache: Spec, position) -> int:
    """q k^T and P v over the whole cache, as nanoGPT counts attention (the masked part included)."""
    b, t, h, _, d = geometry(_decode_query(q, cache))
    return 2 * 2 * b * h * t * cache.shape[1] * d


register(Op("cache_update", "nn", _cache_update_infer, nondiff=DECODE_ONLY, template="kv_cache",
            in_place=True, overwrites=lambda attrs, n_inputs: ((0, 0),)))
register(Op("cached_attention", "nn", _cached_attention_infer, nondiff=DECODE_ONLY, template="kv_cache",
            flops=_cached_attention_flops))
