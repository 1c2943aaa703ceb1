"""Decoding with key/value caches."""
from __future__ import annotations

import numpy as np

from ...numpy_ops.base import reference
from ..attention.reference import grouped, heads


@reference("cache_update")
def cache_update(attrs, cache, *xs):
    """xs: the packed qkv or k and v, then the position when decoding."""
    packed = xs[0].ndim == 5
    (k, v), position = ((xs[0][:, :, 1], xs[0][:, :, 2]), xs[1:]) if packed else (xs[:2], xs[2:])
    out = cache.copy()
    p = int(position[0]) if position else 0
    rows = out[:, p:p + k.shape[1]]  # positions past the cache's end are not kept
    rows[:, :, 0], rows[:, :, 1] = k[:, :rows.shape[1]], v[:, :rows.shape[1]]
    return out


@reference("cached_attention")
def cached_attention(attrs, q, cache, position):
    """q: the packed qkv's queries, or q (B, T, H, D) over a cache of Hkv heads."""
    q = q[:, :, 0] if q.ndim == 5 else q
    t, p = q.shape[1], int(position)
    keys = min(cache.shape[1], p + t)  # what the last query sees; later rows are not read
    q = heads(q)
    k, v = (grouped(heads(cache[:, :keys, i]), q.shape[1]) for i in range(2))
    s = attrs["scale"] * (q @ np.swapaxes(k, -1, -2))                     # (B, H, T, keys)
    s = np.where(np.arange(keys) > p + np.arange(t)[:, None], -np.inf, s)
    e = np.exp(s - s.max(-1, keepdims=True))
    return heads((e / e.sum(-1, keepdims=True)) @ v)
