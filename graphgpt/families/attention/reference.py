"""Fused causal attention (packed or grouped-query) and its two backward ops."""
from __future__ import annotations

import numpy as np

from ...numpy_ops.base import reference
from ..dropout.reference import keep_mask, keep_scale


def heads(x):
    """(B, T, H, D) -> (B, H, T, D) and back: the per-head matrices."""
    return np.swapaxes(x, 1, 2)


def _split_qkv(xs):
    """q, k, v of an attention's inputs (packed: one 5-D array; separate: three), and the rest."""
    if xs[0].ndim == 5:
        return tuple(xs[0][:, :, i] for i in range(3)), xs[1:]
    return tuple(xs[:3]), xs[3:]


def grouped(x, h: int):
    """Key/value heads (B, Hkv, ..., D) as the H query heads read them: query head i reads head i // (H / Hkv)."""
    return x if h == x.shape[1] else np.repeat(x, h // x.shape[1], axis=1)


def _group_sums(x, hkv: int):
    """Per-query-head gradients (B, H, T, D) summed over each key/value head's group."""
    b, h, t, d = x.shape
    return x if h == hkv else x.reshape(b, hkv, h // hkv, t, d).sum(2)


def _attention_probs(attrs, q, k, v, lse=None):
    """Per query head: q, k, v (the key/value heads repeated over their groups), the scaled causal
    scores' softmax (through the saved log-sum-exp when given) and the log-sum-exp."""
    q = heads(q)
    k, v = (grouped(heads(x), q.shape[1]) for x in (k, v))
    t = q.shape[-2]
    s = np.where(np.tri(t, dtype=bool), (q @ np.swapaxes(k, -1, -2)) * attrs["scale"], -np.inf)
    if lse is None:
        m = s.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(s - m).sum(-1, keepdims=True)))[..., 0]
    return q, k, v, np.exp(s - lse[..., None]), lse


def _attention_dropout(attrs, p, rng):
    """What multiplies the probabilities on their way to v: the kept mask over the (B, H, T, T)
    scores, times 1 / (1 - p), when the attention drops (rng: its seed and counter inputs)."""
    if not rng:
        return 1.0
    return keep_mask(p.shape, attrs["dropout"], attrs["site"], *rng) * keep_scale(attrs["dropout"])


def _score_grads(attrs, p, v, g, delta, rng):
    return p * (_attention_dropout(attrs, p, rng) * (g @ np.swapaxes(v, -1, -2)) - delta[..., None])


@reference("causal_attention")
def causal_attention(attrs, *xs):
    qkv, rng = _split_qkv(xs)
    _, _, v, p, lse = _attention_probs(attrs, *qkv)
    return heads((p * _attention_dropout(attrs, p, rng)) @ v), lse


@reference("causal_attention_grad_q")
def causal_attention_grad_q(attrs, *xs):
    qkv, (out, lse, g, *rng) = _split_qkv(xs)
    _, k, v, p, _ = _attention_probs(attrs, *qkv, lse)
    g = heads(g)
    delta = (g * heads(out)).sum(-1)
    return heads(attrs["scale"] * (_score_grads(attrs, p, v, g, delta, rng) @ k)), delta


@reference("causal_attention_grad_kv")
def causal_attention_grad_kv(attrs, *xs):
    """Separate: dk, dv (B, T, Hkv, D). Packed: the query gradient (its last input) with them, as dqkv."""
    packed = xs[0].ndim == 5
    qkv, (lse, g, delta, *rest) = _split_qkv(xs)
    dq, rng = (rest[0], rest[1:]) if packed else (None, rest)
    q, _, v, p, _ = _attention_probs(attrs, *qkv, lse)
    g = heads(g)
    dk = attrs["scale"] * (np.swapaxes(_score_grads(attrs, p, v, g, delta, rng), -1, -2) @ q)
    dv = np.swapaxes(p * _attention_dropout(attrs, p, rng), -1, -2) @ g
    dk, dv = (heads(_group_sums(x, qkv[1].shape[2])) for x in (dk, dv))
    return np.stack([dq, dk, dv], axis=2) if packed else (dk, dv)
