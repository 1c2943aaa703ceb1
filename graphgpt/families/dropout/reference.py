"""Dropout masks from Philox4x32-10, as the CUDA kernels draw them."""
from __future__ import annotations

import numpy as np

from ...numpy_ops.base import reference


PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
U32 = 0xFFFFFFFF


def philox4x32_10(counter: list, key: tuple[int, int]) -> list:
    """Philox4x32-10 (Salmon et al., SC'11) on arrays of counters: four uint32 words each, under
    a key of two; returns the four output words. Every kernel that draws a mask computes the same."""
    c = [np.asarray(w, np.uint64) & U32 for w in counter]
    k0, k1 = key[0] & U32, key[1] & U32
    for r in range(10):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & U32, (k1 + PHILOX_W[1]) & U32
        p0, p1 = c[0] * PHILOX_M[0], c[2] * PHILOX_M[1]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & U32, (p0 >> 32) ^ c[3] ^ k1, p0 & U32]
    return [w.astype(np.uint32) for w in c]


def keep_mask(shape, p: float, site: int, seed, counter) -> np.ndarray:
    """Which elements dropout keeps: element e (flat, in `shape`) is dropped when word e % 4 of
    Philox((e / 4, counter, 0, 0), (seed, site)) is below p * 2^32."""
    n = int(np.prod(shape))
    groups = np.arange((n + 3) // 4, dtype=np.uint64)
    zero = np.zeros_like(groups)
    words = philox4x32_10([groups, zero + (int(counter) & U32), zero, zero], (int(seed) & U32, site))
    bits = np.stack(words, axis=1).reshape(-1)[:n]
    return (bits >= drop_threshold(p)).reshape(shape)


def drop_threshold(p: float) -> int:
    return min(int(round(p * 2**32)), U32)


def keep_scale(p: float) -> float:
    """What a kept element is multiplied by: 1 / (1 - p), as float32 (the kernels' constant)."""
    return float(np.float32(1.0 / (1.0 - p)))


@reference("dropout")
def dropout(attrs, x, seed, counter):
    keep = keep_mask(x.shape, attrs["p"], attrs["site"], seed, counter)
    return np.where(keep, x * keep_scale(attrs["p"]), 0.0).astype(x.dtype)
