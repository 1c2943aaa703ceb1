"""The neural-network primitives of GPT-2 and their backward-only partners.

Each forward op keeps its derivative as one dedicated op (`*_grad`) instead of a chain of
elementwise nodes: the backward stays readable in the graph dumps and a backend can give it a
single kernel. Backward-only ops are never differentiated again, so they carry no VJP.
"""
from __future__ import annotations

import math

from ..errors import UserError
from ..numpy_ops import GELU_C
from .fused import step_specs
from .registry import GemmEpilogue, Op, RowLoss, RowNormaliser, Spec, float_spec, out_dtype, prod, register, require

BACKWARD_ONLY = "backward-only: emitted by a VJP rule, checked through its forward op's gradient test"


def _same(attrs, x, *rest):
    float_spec(x)
    for r in rest:
        require(r.shape == x.shape and r.dtype == x.dtype, f"operands differ: {x.shape} vs {r.shape}")
    return x


# ---- GELU, tanh approximation ------------------------------------------------------------------
# The same formulas in CUDA C; the repeated tanh is one call after the compiler's CSE.
_TANH = f"tanhf({GELU_C!r}f * (a + 0.044715f * a * a * a))"
register(Op("gelu", "elementwise", _same,
            vjp=lambda a, g, out, x: (g.graph.add("gelu_grad", (x, g)),),
            template="elementwise", expr=f"0.5f * a * (1.0f + {_TANH})", gemm_epilogue=GemmEpilogue("gelu"),
            remat_root="gelu"))
register(Op("gelu_grad", "elementwise", _same, nondiff=BACKWARD_ONLY,
            template="elementwise", gemm_epilogue=GemmEpilogue("gelu_grad", grad=True),
            expr=f"b * (0.5f * (1.0f + {_TANH}) + 0.5f * a * (1.0f - {_TANH} * {_TANH}) * {GELU_C!r}f"
                 f" * (1.0f + 3.0f * 0.044715f * a * a))"))


# ---- SiLU (x * sigmoid(x), LLaMA's gate) and ReLU: their derivatives read the input -----------
_SIGMOID = "(1.0f / (1.0f + expf(-a)))"
register(Op("silu", "elementwise", _same,
            vjp=lambda a, g, out, x: (g.graph.add("silu_grad", (x, g)),),
            template="elementwise", expr=f"a * {_SIGMOID}"))
register(Op("silu_grad", "elementwise", _same, nondiff=BACKWARD_ONLY, template="elementwise",
            expr=f"b * {_SIGMOID} * (1.0f + a * (1.0f - {_SIGMOID}))"))
# a NaN passes through ReLU, as through np.maximum(x, 0): a NaN loss must show
register(Op("relu", "elementwise", _same,
            vjp=lambda a, g, out, x: (g.graph.add("relu_grad", (x, g)),),
            template="elementwise", expr="(a > 0.0f || a != a) ? a : 0.0f"))
register(Op("relu_grad", "elementwise", _same, nondiff=BACKWARD_ONLY, template="elementwise",
            expr="a > 0.0f ? b : 0.0f"))


# ---- row normalisers: each row normalised over the last axis, its statistics saved ------------
# normalize is LayerNorm without its affine part (that is plain mul/add in the model); its
# statistics are each row's mean and reciprocal standard deviation. rms_normalize is RMSNorm
# without its weight: the rows are not centred, and the one statistic is the reciprocal root mean
# square. Both are float32, one per row, saved for the backward as llm.c saves them, so the
# backward does not recompute them.
#
# fused_<name> is the normaliser with the pointwise chain that reads its rows (LayerNorm's affine
# part, x_hat * gamma + beta; RMSNorm's weight), made by the fusion pass: the kernel applies
# attrs["program"] to each normalised element as it stores it, and stores the chain's result as
# its last output. The program's input -1 is the normalised element (unrounded), -2 - j the op's
# input 1 + j: one value per column, or a scalar.
#
# fused_<name>_grad is the backward as llm.c writes LayerNorm's, made by the fusion pass: the
# incoming gradient is scaled by the per-column gamma as the row is loaded (attrs["scaled"]: input
# gamma follows the row statistics) and the result is added to the residual stream's gradient as
# it is stored (attrs["accumulate"]: input residual comes last), so neither g * gamma nor the
# unaccumulated dx goes to memory. Inputs: x, g, the statistics, [gamma], [residual].
FUSION_MADE = "made by the fusion pass, which runs after autodiff"


def _stats_spec(x: Spec, *stats: Spec) -> None:
    for s in stats:
        require(s == Spec(x.shape[:-1], "f32"), f"row statistics {s.shape}:{s.dtype} are not float32 of {x.shape[:-1]}")


def _register_row_normaliser(name: str, statistics: tuple[str, ...]) -> None:
    """The normaliser `name`, whose outputs are the rows and the named statistics, with its
    epilogue form and its two backward ops."""
    n_stats = len(statistics)

    def infer(attrs, x):
        float_spec(x)
        require(math.isfinite(attrs["eps"]) and attrs["eps"] > 0, f"eps must be a finite number > 0, got {attrs['eps']}")
        return [x, *(Spec(x.shape[:-1], "f32") for _ in statistics)]

    def vjp(attrs, g, out, x):
        if any(gi is not None for gi in g[1:]):
            raise UserError(f"{x.node.where}: {name}'s {' and '.join(statistics)} are saved for the backward; "
                            "a loss that depends on them cannot be differentiated")
        return (g[0].graph.add(f"{name}_grad", (x, g[0], *out[1:]), eps=attrs["eps"]),)

    def grad_infer(attrs, x, g, *stats):
        _same(attrs, x, g)
        require(len(stats) == n_stats, f"needs the {n_stats} row statistics")
        _stats_spec(x, *stats)
        return x

    def fused_infer(attrs, x, *operands):
        for o in operands:
            require(o.shape == x.shape[-1:] or o.shape == (), f"operand {o.shape} is neither a column vector of "
                                                              f"{x.shape} nor a scalar")
        out = infer(attrs, x)
        y = step_specs(attrs, (x, *operands))[-1]
        require(y.shape == x.shape, f"the chain gives {y.shape}, not the rows' {x.shape}")
        return [*out, y]

    def fused_grad_infer(attrs, x, g, *rest):
        rest = list(rest)
        grad_infer(attrs, x, g, *rest[:n_stats])
        del rest[:n_stats]
        if attrs["scaled"]:
            gamma = rest.pop(0)
            require(gamma.shape == x.shape[-1:] and gamma.dtype == x.dtype,
                    f"gamma {gamma.shape}:{gamma.dtype} is not one value per column of {x.shape}:{x.dtype}")
        if attrs["accumulate"]:
            _same(attrs, x, rest.pop(0))
        require(not rest, "too many inputs")
        return x

    stats_at = tuple(range(1, 1 + n_stats))
    register(Op(name, "nn", infer, vjp=vjp, template="layernorm",
                row_normaliser=RowNormaliser(rows=0, statistics=stats_at, with_epilogue=f"fused_{name}",
                                             grad=f"{name}_grad", fused_grad=f"fused_{name}_grad")))
    register(Op(f"{name}_grad", "nn", grad_infer, nondiff=BACKWARD_ONLY, template="layernorm"))
    register(Op(f"fused_{name}", "nn", fused_infer, nondiff=FUSION_MADE, template="layernorm",
                row_normaliser=RowNormaliser(rows=0, statistics=stats_at)))
    register(Op(f"fused_{name}_grad", "nn", fused_grad_infer, nondiff=FUSION_MADE, template="layernorm"))


_register_row_normaliser("normalize", ("mean", "rstd"))
_register_row_normaliser("rms_normalize", ("rstd",))


# ---- causal softmax: softmax(scale * x) over the last axis, key j > query i masked out --------
def _square(attrs, x, *rest):
    _same(attrs, x, *rest)
    require(len(x.shape) >= 2 and x.shape[-1] == x.shape[-2], f"needs (..., T, T) scores, got {x.shape}")
    return x


register(Op("causal_softmax", "nn", _square,
            vjp=lambda a, g, out, x: (g.graph.add("causal_softmax_grad", (out, g), scale=a["scale"]),),
            template="softmax", remat_root="attention"))
register(Op("causal_softmax_grad", "nn", _square,
            nondiff=BACKWARD_ONLY, template="softmax"))


# ---- dropout: elements dropped with probability p, the rest scaled by 1 / (1 - p) ------------
# The mask is a function of the element's index, the dropout site (attrs["site"], numbered in the
# model) and two int32 program inputs, the run's seed and a counter of micro-batches (Philox4x32-10,
# numpy_ops.keep_mask): nothing is stored, and the backward draws the same mask again, so the
# gradient is the same op applied to the incoming gradient.
def _scalar_i32(*xs: Spec) -> None:
    for x in xs:
        require(x == Spec((), "i32"), f"the RNG's seed and counter are int32 scalars, got {x.shape}:{x.dtype}")


def _rng_attrs(attrs) -> None:
    require(0.0 < attrs["p"] < 1.0 and isinstance(attrs["site"], int), "needs 0 < p < 1 and an integer site")


def _dropout_infer(attrs, x, seed, counter):
    float_spec(x)
    _scalar_i32(seed, counter)
    _rng_attrs(attrs)
    return x


register(Op("dropout", "nn", _dropout_infer, template="dropout",
            vjp=lambda a, g, out, x, seed, counter: (g.graph.add("dropout", (g, seed, counter), **a), None, None)))


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


def _geometry(qkv: tuple) -> tuple[int, int, int, int, int]:
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


def _heads_spec(qkv: tuple, *xs: Spec) -> Spec:
    b, t, h, _, d = _geometry(qkv)
    out = Spec((b, t, h, d), qkv[0].dtype)
    for x in xs:
        require(x == out, f"{x.shape}:{x.dtype} is not (B, T, H, D) {out.shape}:{out.dtype}")
    return out


def _row_stats(qkv: tuple, *stats: Spec) -> Spec:
    b, t, h, _, _ = _geometry(qkv)
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
    _scalar_i32(*rng)
    _rng_attrs({"p": attrs["dropout"], "site": attrs["site"]})


def _attention_infer(attrs, *inputs):
    qkv, _, rng = _operands(inputs, 0)
    _attention_rng(attrs, rng)
    return [_heads_spec(qkv), _row_stats(qkv)]


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
    return [_heads_spec(qkv, out, g), _row_stats(qkv, lse)]


def _attention_grad_kv_infer(attrs, *inputs):
    """Inputs q, k, v, lse, g, delta: the packed form also takes dq, which it moves into dqkv."""
    packed = len(inputs[0].shape) == 5
    qkv, (lse, g, delta, *dq), rng = _operands(inputs, 4 if packed else 3)
    _attention_rng(attrs, rng)
    _heads_spec(qkv, g, *dq)
    _row_stats(qkv, lse, delta)
    return qkv[0] if packed else [qkv[1], qkv[2]]


def _attention_flops(attrs, out, *inputs) -> int:
    """Two (T x T x D) products per query head, as nanoGPT counts them (the masked half included,
    the backward's recomputed scores not): the forward's q k^T and P v; the query gradient's g v^T
    and dS k; the key/value gradient's P^T g and dS^T q."""
    b, t, h, _, d = _geometry(_operands(inputs, 0)[0])
    return 2 * 2 * b * h * t * t * d


register(Op("causal_attention", "nn", _attention_infer, vjp=_attention_vjp, template="attention",
            flops=_attention_flops))
register(Op("causal_attention_grad_q", "nn", _attention_grad_q_infer, nondiff=BACKWARD_ONLY, template="attention",
            flops=_attention_flops))
register(Op("causal_attention_grad_kv", "nn", _attention_grad_kv_infer, nondiff=BACKWARD_ONLY, template="attention",
            flops=_attention_flops))


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
    b, t, h, hkv, d = _geometry(qkv)
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
    """The cached attention's query as the operands of _geometry: the packed qkv, or q with k and v
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
    return _heads_spec(qkv)


def _cached_attention_flops(attrs, out, q: Spec, cache: Spec, position) -> int:
    """q k^T and P v over the whole cache, as nanoGPT counts attention (the masked part included)."""
    b, t, h, _, d = _geometry(_decode_query(q, cache))
    return 2 * 2 * b * h * t * cache.shape[1] * d


register(Op("cache_update", "nn", _cache_update_infer, nondiff=DECODE_ONLY, template="kv_cache",
            in_place=True, overwrites=lambda attrs, n_inputs: ((0, 0),)))
register(Op("cached_attention", "nn", _cached_attention_infer, nondiff=DECODE_ONLY, template="kv_cache",
            flops=_cached_attention_flops))


# ---- rotary position embedding (Hugging Face LLaMA's rotate_half convention) ------------------
# x (B, T, H, D), D even, rotated pair by pair: columns i and i + D/2 (i < D/2) by the angle of the
# position and i, read from two float32 tables (rows: positions; columns: D/2), the compiler's
# constant tensors: out[i] = x[i] cos - x[i + D/2] sin, out[i + D/2] = x[i + D/2] cos + x[i] sin.
# The positions are 0..T-1, or position..position+T-1 with an int32 position input (decoding).
# A rotation's transpose is the rotation the other way, so the VJP is this op with the sine
# negated (attrs["inverse"]). Each element pairs with one D/2 columns away, so it is not an
# elementwise op; each thread reads its pair before writing it, so the output may overwrite x.
def _rotary_infer(attrs, x, cos, sin, *position):
    float_spec(x)
    require(len(x.shape) == 4 and x.shape[-1] % 2 == 0, f"needs (B, T, H, D) with D even, got {x.shape}")
    half = x.shape[-1] // 2
    require(cos == sin and cos.dtype == "f32" and len(cos.shape) == 2 and cos.shape[1] == half,
            f"the cos and sin tables {cos.shape}:{cos.dtype} and {sin.shape}:{sin.dtype} are not float32 "
            f"(rows, {half})")
    require(cos.shape[0] >= x.shape[1],
            f"a table of {cos.shape[0]} positions is shorter than the {x.shape[1]} positions of x")
    require(len(position) <= 1 and all(p == Spec((), "i32") for p in position), "the position is one int32 scalar")
    require(isinstance(attrs.get("inverse"), bool), "needs attribute inverse (true or false)")
    return x


def _rotary_vjp(attrs, g, out, x, cos, sin, *position):
    back = g.graph.add("rotary", (g, cos, sin, *position), inverse=not attrs["inverse"])
    return (back, None, None, *(None for _ in position))


register(Op("rotary", "nn", _rotary_infer, vjp=_rotary_vjp, template="rotary",
            overwrites=lambda attrs, n_inputs: ((0, 0),)))


# ---- argmax: the greedy next token ----------------------------------------------------------
# Each row's index of its largest value among its first `limit` columns (the tokenizer's
# vocabulary: a padded one's extra columns are never chosen), the first of equal ones and a NaN
# before any number, as NumPy's argmax: int32. The generation programs give it beside their logits,
# so that a greedy step reads back one id per sequence instead of a row of logits.
def _argmax_infer(attrs, x):
    float_spec(x)
    require(len(x.shape) >= 1 and 1 <= attrs["limit"] <= x.shape[-1],
            f"needs 1 <= limit <= {x.shape[-1] if x.shape else 0} columns, got {attrs['limit']}")
    return Spec(x.shape[:-1], "i32")


register(Op("argmax", "nn", _argmax_infer, nondiff="an index: nothing to differentiate", template="argmax"))


# ---- cross-entropy: mean over all positions of -log softmax(logits)[target] -----------------
def _ce_infer(attrs, logits, targets):
    float_spec(logits)
    require(targets.dtype == "i32", f"targets must be i32, got {targets.dtype}")
    require(logits.shape[:-1] == targets.shape, f"logits {logits.shape} do not match targets {targets.shape}")
    return Spec((), "f32")  # the loss is computed, and kept, in float32 whatever the logits' type


def _ce_grad_infer(attrs, logits, targets, g):
    _ce_infer(attrs, logits, targets)
    require(g.shape == () and g.dtype == "f32", "the incoming gradient must be a float32 scalar")
    return logits


register(Op("cross_entropy", "nn", _ce_infer,
            vjp=lambda a, g, out, z, t: (g.graph.add("cross_entropy_grad", (z, t, g)), None),
            template="cross_entropy", loss=RowLoss(grad="cross_entropy_grad", with_grad="cross_entropy_with_grad")))
register(Op("cross_entropy_grad", "nn", _ce_grad_infer,
            nondiff=BACKWARD_ONLY, template="cross_entropy",
            # a row's statistics are read whole before its gradient is written, each element by
            # the thread that read it: the gradient may go over the logits
            overwrites=lambda attrs, n_inputs: ((0, 0),)))


# Both in one launch, made by the fusion pass where a program computes the loss and its gradient
# of the same logits (training; evaluation keeps the plain forward): the gradient's kernel already
# has each row's max and sum of exponentials, so the row's loss costs one more read of an element,
# not a second pass over the logits. Outputs: the loss, then the gradient, again over the logits.
def _ce_with_grad_infer(attrs, logits, targets, g):
    return [_ce_infer(attrs, logits, targets), _ce_grad_infer(attrs, logits, targets, g)]


register(Op("cross_entropy_with_grad", "nn", _ce_with_grad_infer, nondiff=FUSION_MADE, template="cross_entropy",
            overwrites=lambda attrs, n_inputs: ((1, 0),)))


# ---- embedding: rows of a table gathered by integer ids -------------------------------------
def _emb_infer(attrs, table, ids):
    float_spec(table)
    require(len(table.shape) == 2, f"the table must be 2-D, got {table.shape}")
    require(ids.dtype == "i32", f"ids must be i32, got {ids.dtype}")
    return Spec(ids.shape + table.shape[1:], table.dtype)


def _emb_grad_infer(attrs, ids, g):
    float_spec(g)
    require(ids.dtype == "i32" and g.shape[:-1] == ids.shape, f"ids {ids.shape} do not match {g.shape}")
    return Spec((attrs["rows"], g.shape[-1]), out_dtype(attrs, g.dtype))


register(Op("embedding", "nn", _emb_infer,
            vjp=lambda a, g, out, w, ids: (g.graph.add("embedding_grad", (ids, g), rows=w.shape[0]), None),
            template="embedding"))
register(Op("embedding_grad", "nn", _emb_grad_infer,
            nondiff=BACKWARD_ONLY, template="embedding", stores_any_float=True, scatters_rows=True))


# one_hot(ids): a (rows, ids) matrix of zeros with a one at (id, i) for the i-th id; the embedding
# gradient of a small table is its product with the gradient rows (passes/embedding_grads.py)
def _one_hot_infer(attrs, ids):
    require(ids.dtype == "i32", f"ids must be i32, got {ids.dtype}")
    return Spec((attrs["rows"], prod(ids.shape)), out_dtype(attrs, "f32"))


register(Op("one_hot", "nn", _one_hot_infer, nondiff=BACKWARD_ONLY, template="embedding"))
