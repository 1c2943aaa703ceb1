"""Fused causal attention (packed or grouped-query q, k, v) and its two backward ops: the attention
kernel family."""
from __future__ import annotations

from ...errors import UserError
from ...ops.registry import BACKWARD_ONLY, Op, Spec, float_spec, register, require
from ..dropout.ops import rng_attrs, scalar_i32


# ---- fused causal attention: softmax(scale * q k^T, keys j > query i masked) v ---------------
# Flash attention: the (T x T) scores never reach memory. One family of ops in two forms, told
# apart by their first input: packed, q, k and v where GPT-2's QKV projection leaves them,
# (B, T, 3, H, D); or separate, q (B, T, H, D) with k and v (B, T, Hkv, D), Hkv dividing H
# (grouped-query attention: query head h reads key/value head h // (H / Hkv), never a copy of
# them). Both write the heads' outputs as (B, T, H, D), the layout the output projection reads:
# no transposes around it. Its outputs: that, and each query's log-sum-exp of its scaled scores
# ((B, H, T), float32), which the backward reads to rebuild the probabilities tile by tile. With
# dropout (attrs dropout, site; the RNG's seed and counter as two more inputs) the probabilities
# are dropped on their way to v inside the kernels, each (batch, head, query, key) element by its
# own Philox word, as the dropout op numbers the elements of a (B, H, T, T) tensor. The backward
# is two ops, each one kernel without atomics: the query gradient (which also leaves delta_i =
# sum_d g_id out_id, float32, for the second), then the key and value gradients, summed over each
# key/value head's group of query heads; the packed form stores them with the query gradient as
# the packed (B, T, 3, H, D) gradient of qkv, the separate one as dk and dv (B, T, Hkv, D).
def _packed(qkv: Spec) -> tuple[int, int, int, int]:
    float_spec(qkv)
    require(len(qkv.shape) == 5 and qkv.shape[2] == 3, f"needs packed (B, T, 3, H, D) q, k, v, got {qkv.shape}")
    b, t, _, h, d = qkv.shape
    return b, t, h, d


def _operands(inputs: tuple, named: int) -> tuple[tuple, tuple, tuple]:
    """An attention op's inputs split into its q, k, v (the packed qkv alone, or three tensors: the
    packed form's first input is 5-D), the `named` inputs after them, and the RNG's (the rest)."""
    n = 1 if len(inputs[0].shape) == 5 else 3
    require(len(inputs) >= n + named, "too few inputs")
    return tuple(inputs[:n]), tuple(inputs[n:n + named]), tuple(inputs[n + named:])


def geometry(qkv: tuple) -> tuple[int, int, int, int, int]:
    """(B, T, H, Hkv, D) of an attention's q, k, v, packed (Hkv = H) or separate."""
    if len(qkv) == 1:
        b, t, h, d = _packed(qkv[0])
        return b, t, h, h, d
    q, k, v = qkv
    float_spec(q)
    require(len(q.shape) == 4, f"needs q (B, T, H, D), got {q.shape}")
    require(k == v, f"k {k.shape}:{k.dtype} and v {v.shape}:{v.dtype} differ")
    require(len(k.shape) == 4 and k.dtype == q.dtype,
            f"needs k and v (B, T, Hkv, D) of q's {q.dtype}, got {k.shape}:{k.dtype}")
    b, t, h, d = q.shape
    require(k.shape[:2] == (b, t), f"k and v have (B, T) {k.shape[:2]}, q {(b, t)}")
    require(k.shape[3] == d, f"k and v have head dim {k.shape[3]}, q {d}")
    require(h % k.shape[2] == 0, f"{k.shape[2]} key/value heads do not divide {h} query heads")
    return b, t, h, k.shape[2], d


def heads_spec(qkv: tuple, *xs: Spec) -> Spec:
    b, t, h, _, d = geometry(qkv)
    out = Spec((b, t, h, d), qkv[0].dtype)
    for x in xs:
        require(x == out, f"{x.shape}:{x.dtype} is not (B, T, H, D) {out.shape}:{out.dtype}")
    return out


def _row_stats(qkv: tuple, *stats: Spec) -> Spec:
    b, t, h, _, _ = geometry(qkv)
    rows = Spec((b, h, t), "f32")
    for s in stats:
        require(s == rows, f"row statistics {s.shape}:{s.dtype} are not float32 of {rows.shape}")
    return rows


def _attention_rng(attrs, rng) -> None:
    """With dropout (attrs dropout and site) the ops take the RNG's seed and counter last."""
    if "dropout" not in attrs:
        require(not rng, "too many inputs")
        return
    require(len(rng) == 2, "an attention with dropout takes the RNG's seed and counter")
    scalar_i32(*rng)
    rng_attrs({"p": attrs["dropout"], "site": attrs["site"]})


def _attention_infer(attrs, *inputs):
    qkv, _, rng = _operands(inputs, 0)
    _attention_rng(attrs, rng)
    return [heads_spec(qkv), _row_stats(qkv)]


def _attention_vjp(attrs, g, out, *inputs):
    qkv, _, rng = _operands(inputs, 0)
    if g[1] is not None:
        raise UserError(f"{qkv[0].node.where}: causal_attention's log-sum-exp is saved for the backward; "
                        "a loss that depends on it cannot be differentiated")
    graph = g[0].graph
    dq, delta = graph.add("causal_attention_grad_q", (*qkv, out[0], out[1], g[0], *rng), **attrs)
    if len(qkv) == 1:
        dqkv = graph.add("causal_attention_grad_kv", (*qkv, out[1], g[0], delta, dq, *rng), **attrs)
        return (dqkv, *(None for _ in rng))
    dk, dv = graph.add("causal_attention_grad_kv", (*qkv, out[1], g[0], delta, *rng), **attrs)
    return (dq, dk, dv, *(None for _ in rng))


def _attention_grad_q_infer(attrs, *inputs):
    qkv, (out, lse, g), rng = _operands(inputs, 3)
    _attention_rng(attrs, rng)
    return [heads_spec(qkv, out, g), _row_stats(qkv, lse)]


def _attention_grad_kv_infer(attrs, *inputs):
    """Inputs q, k, v, lse, g, delta: the packed form also takes dq, which it moves into dqkv."""
    packed = len(inputs[0].shape) == 5
    qkv, (lse, g, delta, *dq), rng = _operands(inputs, 4 if packed else 3)
    _attention_rng(attrs, rng)
    heads_spec(qkv, g, *dq)
    _row_stats(qkv, lse, delta)
    return qkv[0] if packed else [qkv[1], qkv[2]]


def _attention_flops(attrs, out, *inputs) -> int:
    """Two (T x T x D) products per query head, as nanoGPT counts them (the masked half included,
    the backward's recomputed scores not): the forward's q k^T and P v; the query gradient's g v^T
    and dS k; the key/value gradient's P^T g and dS^T q."""
    b, t, h, _, d = geometry(_operands(inputs, 0)[0])
    return 2 * 2 * b * h * t * t * d


register(Op("causal_attention", "nn", _attention_infer, vjp=_attention_vjp, template="attention",
            flops=_attention_flops))
register(Op("causal_attention_grad_q", "nn", _attention_grad_q_infer, nondiff=BACKWARD_ONLY, template="attention",
            flops=_attention_flops))
register(Op("causal_attention_grad_kv", "nn", _attention_grad_kv_infer, nondiff=BACKWARD_ONLY, template="attention",
            flops=_attention_flops))
