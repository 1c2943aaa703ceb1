"""What every op computes, in NumPy: the references the op registry names and the NumPy backend runs.

Both halves read this module and nothing else of each other: the compiler's registry (ops/) points
each op's `ref` here, and the NumPy backend looks a launch's op up in `BY_OP`, so the runtime
executes a plan knowing nothing of the compiler. Each function takes the op's attrs and its input
arrays and returns its output (a tuple for an op with several). They compute in the float type
they are given: float32, or float64 in tests (a backend reads narrower floats as float32 first).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .dtypes import DTYPES

BY_OP: dict[str, Callable] = {}
GELU_C = math.sqrt(2.0 / math.pi)


def reference(*names: str):
    """Register a function as the reference of these ops."""
    def register(fn: Callable) -> Callable:
        for name in names:
            assert name not in BY_OP, f"two references for {name}"
            BY_OP[name] = fn
        return fn
    return register


# ---- pointwise --------------------------------------------------------------------------------
UFUNCS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
          "maximum": np.maximum,  # propagates a NaN from either side, as its CUDA expression does
          "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh}
for _name, _ufunc in UFUNCS.items():
    reference(_name)(lambda attrs, *xs, _ufunc=_ufunc: _ufunc(*xs))


@reference("cast")
def cast(attrs, x):
    """Rounding happens where a value is stored: a cast to the compute type (f32) is the identity,
    one to a narrower type rounds to nearest even and stays in the compute type."""
    if attrs["dtype"] == "f32":
        return x
    return x.astype(DTYPES[attrs["dtype"]].numpy).astype(x.dtype)


def _tanh_arg(x):
    return GELU_C * (x + 0.044715 * x * x * x)


@reference("gelu")
def gelu(attrs, x):
    return 0.5 * x * (1.0 + np.tanh(_tanh_arg(x)))


@reference("gelu_grad")
def gelu_grad(attrs, x, g):
    t = np.tanh(_tanh_arg(x))
    return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3 * 0.044715 * x * x))


@reference("sigmoid")
def sigmoid(attrs, x):
    return np.exp(-np.logaddexp(0.0, -x))  # 1 / (1 + exp(-x)), without exp's overflow


@reference("square")
def square(attrs, x):
    return x * x


@reference("silu")
def silu(attrs, x):
    return x * sigmoid(attrs, x)


@reference("silu_grad")
def silu_grad(attrs, x, g):
    s = sigmoid(attrs, x)
    return g * s * (1.0 + x * (1.0 - s))


@reference("relu")
def relu(attrs, x):
    return np.maximum(x, x.dtype.type(0))


@reference("relu_grad")
def relu_grad(attrs, x, g):
    return np.where(x > 0, g, g.dtype.type(0))


def run_program(program, inputs, step: Callable | None = None) -> list:
    """The one walk of a fused chain's program, which the NumPy backend, the registry's shape rules
    and the pointwise kernels' code share: its steps (op, attrs, args) in order, arg k >= 0 naming
    step k's value and -1 - i input i; `step(op, attrs, args)` gives a step's value (by default its
    NumPy reference). Every step's value."""
    step = step or (lambda op, attrs, args: BY_OP[op](attrs, *args))
    values = []
    for op, attrs, args in program:
        values.append(step(op, dict(attrs), [values[a] if a >= 0 else inputs[-1 - a] for a in args]))
    return values


@reference("fused")
def fused(attrs, *arrays):
    out = run_program(attrs["program"], arrays)[-1]
    if "shape" in attrs:
        out = out.reshape(attrs["shape"])
    return out.transpose(attrs["perm"]) if "perm" in attrs else out


# ---- reductions -------------------------------------------------------------------------------
@reference("sum")
def sum_(attrs, x):
    return np.asarray(np.sum(x, axis=tuple(attrs["axes"]), keepdims=attrs["keepdims"]), x.dtype)


@reference("fused_multi")
def fused_multi(attrs, *arrays):
    values = run_program(attrs["program"], arrays)
    return tuple(values[r] for r in attrs["results"])


@reference("fused_sum")
def fused_sum(attrs, *arrays):
    if "results" not in attrs:
        return sum_(attrs, fused(attrs, *arrays))
    values = run_program(attrs["program"], arrays)
    return tuple(sum_(attrs, values[r] if r >= 0 else arrays[-1 - r]) for r in attrs["results"])


@reference("sum_group")
def sum_group(attrs, *arrays):
    """Each member's results, in order: the members read their own inputs, one after another."""
    out, at = [], 0
    for op, member_attrs, n in attrs["members"]:
        result = BY_OP[op](dict(member_attrs), *arrays[at:at + n])
        out += list(result) if isinstance(result, tuple) else [result]
        at += n
    return tuple(out)


@reference("sum_squares")
def sum_squares(attrs, *xs):
    return np.asarray(sum(np.sum(x * x) for x in xs), xs[0].dtype)


# ---- matrix products --------------------------------------------------------------------------
@reference("matmul")
def matmul(attrs, a, b):
    if attrs["tb"]:
        b = np.swapaxes(b, -1, -2)
    if b.ndim == 2 and a.ndim > 2:  # one large GEMM instead of a loop over the batch
        return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))
    if attrs["ta"]:
        a = np.swapaxes(a, -1, -2)
    return np.matmul(a, b)


@reference("fused_matmul")
def fused_matmul(attrs, a, b, *rest):
    """The epilogue on the unrounded product, as cuBLASLt applies it to its accumulator."""
    out, rest = matmul(attrs, a, b), list(rest)
    if attrs["bias"]:
        out = out + rest.pop(0)
    if attrs.get("gelu"):
        return gelu({}, out), out
    if attrs.get("gelu_grad"):
        return gelu_grad({}, rest.pop(0), out)
    return out + rest.pop(0) if attrs["residual"] else out


# ---- row normalisers: LayerNorm without its affine part, RMSNorm without its weight ------------
@reference("normalize")
def normalize(attrs, x):
    """The normalised rows, and each row's mean and rstd."""
    mean = x.mean(-1)
    xc = x - mean[..., None]
    rstd = 1.0 / np.sqrt((xc * xc).mean(-1) + attrs["eps"])
    return xc * rstd[..., None], mean, rstd


@reference("rms_normalize")
def rms_normalize(attrs, x):
    """The rows divided by their root mean square (not centred), and each row's rstd."""
    rstd = 1.0 / np.sqrt((x * x).mean(-1) + attrs["eps"])
    return x * rstd[..., None], rstd


@reference("normalize_grad")
def normalize_grad(attrs, x, g, mean, rstd):
    xhat = (x - mean[..., None]) * rstd[..., None]
    return rstd[..., None] * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))


@reference("rms_normalize_grad")
def rms_normalize_grad(attrs, x, g, rstd):
    xhat = x * rstd[..., None]
    return rstd[..., None] * (g - xhat * (g * xhat).mean(-1, keepdims=True))


def _with_epilogue(plain: Callable) -> Callable:
    """A normaliser's outputs, and its chain of the normalised rows as they are before rounding."""
    def fused(attrs, x, *operands):
        outs = plain(attrs, x)
        return (*outs, run_program(attrs["program"], (outs[0], *operands))[-1])
    return fused


def _scaled_and_accumulated(grad: Callable, n_statistics: int) -> Callable:
    """A normaliser's backward with g scaled by gamma (attrs "scaled") and the residual's gradient
    added (attrs "accumulate"). Inputs: x, g, the statistics, [gamma], [residual]."""
    def fused(attrs, x, g, *rest):
        statistics, rest = rest[:n_statistics], list(rest[n_statistics:])
        if attrs["scaled"]:
            g = g * rest.pop(0)
        dx = grad(attrs, x, g, *statistics)
        return dx + rest.pop(0) if attrs["accumulate"] else dx
    return fused


reference("fused_normalize")(_with_epilogue(normalize))
reference("fused_rms_normalize")(_with_epilogue(rms_normalize))
reference("fused_normalize_grad")(_scaled_and_accumulated(normalize_grad, 2))
reference("fused_rms_normalize_grad")(_scaled_and_accumulated(rms_normalize_grad, 1))


# ---- causal softmax ---------------------------------------------------------------------------
@reference("causal_softmax")
def causal_softmax(attrs, x):
    t = x.shape[-1]
    s = np.where(np.tri(t, dtype=bool), x * attrs["scale"], -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@reference("causal_softmax_grad")
def causal_softmax_grad(attrs, y, g):
    return attrs["scale"] * y * (g - (g * y).sum(-1, keepdims=True))


# ---- dropout: Philox4x32-10 masks ------------------------------------------------------------
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


# ---- fused causal attention: packed (B, T, 3, H, D) q, k, v, or q (B, T, H, D), k, v (B, T, Hkv, D)
def _heads(x):
    """(B, T, H, D) -> (B, H, T, D) and back: the per-head matrices."""
    return np.swapaxes(x, 1, 2)


def _split_qkv(xs):
    """q, k, v of an attention's inputs (packed: one 5-D array; separate: three), and the rest."""
    if xs[0].ndim == 5:
        return tuple(xs[0][:, :, i] for i in range(3)), xs[1:]
    return tuple(xs[:3]), xs[3:]


def _grouped(x, h: int):
    """Key/value heads (B, Hkv, ..., D) as the H query heads read them: query head i reads head i // (H / Hkv)."""
    return np.repeat(x, h // x.shape[1], axis=1)


def _group_sums(x, hkv: int):
    """Per-query-head gradients (B, H, T, D) summed over each key/value head's group."""
    b, h, t, d = x.shape
    return x.reshape(b, hkv, h // hkv, t, d).sum(2)


def _attention_probs(attrs, q, k, v, lse=None):
    """Per query head: q, k, v (the key/value heads repeated over their groups), the scaled causal
    scores' softmax (through the saved log-sum-exp when given) and the log-sum-exp."""
    q = _heads(q)
    k, v = (_grouped(_heads(x), q.shape[1]) for x in (k, v))
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
    return _heads((p * _attention_dropout(attrs, p, rng)) @ v), lse


@reference("causal_attention_grad_q")
def causal_attention_grad_q(attrs, *xs):
    qkv, (out, lse, g, *rng) = _split_qkv(xs)
    _, k, v, p, _ = _attention_probs(attrs, *qkv, lse)
    g = _heads(g)
    delta = (g * _heads(out)).sum(-1)
    return _heads(attrs["scale"] * (_score_grads(attrs, p, v, g, delta, rng) @ k)), delta


@reference("causal_attention_grad_kv")
def causal_attention_grad_kv(attrs, *xs):
    """Separate: dk, dv (B, T, Hkv, D). Packed: the query gradient (its last input) with them, as dqkv."""
    packed = xs[0].ndim == 5
    qkv, (lse, g, delta, *rest) = _split_qkv(xs)
    dq, rng = (rest[0], rest[1:]) if packed else (None, rest)
    q, _, v, p, _ = _attention_probs(attrs, *qkv, lse)
    g = _heads(g)
    dk = attrs["scale"] * (np.swapaxes(_score_grads(attrs, p, v, g, delta, rng), -1, -2) @ q)
    dv = np.swapaxes(p * _attention_dropout(attrs, p, rng), -1, -2) @ g
    dk, dv = (_heads(_group_sums(x, qkv[1].shape[2])) for x in (dk, dv))
    return np.stack([dq, dk, dv], axis=2) if packed else (dk, dv)


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
    q = _heads(q)
    k, v = (_grouped(_heads(cache[:, :keys, i]), q.shape[1]) for i in range(2))
    s = attrs["scale"] * (q @ np.swapaxes(k, -1, -2))                     # (B, H, T, keys)
    s = np.where(np.arange(keys) > p + np.arange(t)[:, None], -np.inf, s)
    e = np.exp(s - s.max(-1, keepdims=True))
    return _heads((e / e.sum(-1, keepdims=True)) @ v)


@reference("rotary")
def rotary(attrs, x, cos, sin, *position):
    """Pairs (i, i + D/2) of x (B, T, H, D) rotated by the tables' rows p..p+T-1 (p: the position
    input, else 0); with attrs["inverse"] the other way."""
    t, half, p = x.shape[1], x.shape[-1] // 2, int(position[0]) if position else 0
    c, s = cos[None, p:p + t, None, :], sin[None, p:p + t, None, :]
    if attrs["inverse"]:
        s = -s
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


@reference("argmax")
def argmax(attrs, x):
    return np.argmax(x[..., :attrs["limit"]], axis=-1).astype(np.int32)


# ---- cross-entropy ----------------------------------------------------------------------------
def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@reference("cross_entropy")
def cross_entropy(attrs, logits, targets):
    lp = np.take_along_axis(_log_softmax(logits), targets[..., None].astype(np.int64), -1)
    return np.asarray(-lp.mean(), logits.dtype)


@reference("cross_entropy_grad")
def cross_entropy_grad(attrs, logits, targets, g):
    p = np.exp(_log_softmax(logits))
    at = targets[..., None].astype(np.int64)
    np.put_along_axis(p, at, np.take_along_axis(p, at, -1) - 1.0, -1)
    return p * (g / targets.size)


@reference("cross_entropy_with_grad")
def cross_entropy_with_grad(attrs, logits, targets, g):
    """The loss and its gradient of one pass over the logits: what the two ops compute apart."""
    return cross_entropy(attrs, logits, targets), cross_entropy_grad(attrs, logits, targets, g)


# ---- embedding --------------------------------------------------------------------------------
@reference("embedding")
def embedding(attrs, table, ids):
    return table[ids]


@reference("embedding_grad")
def embedding_grad(attrs, ids, g):
    out = np.zeros((attrs["rows"], g.shape[-1]), g.dtype)
    np.add.at(out, ids.reshape(-1), g.reshape(-1, g.shape[-1]))
    return out


@reference("one_hot")
def one_hot(attrs, ids):
    return (np.arange(attrs["rows"])[:, None] == ids.reshape(1, -1)).astype(np.float32)


# ---- data movement ----------------------------------------------------------------------------
reference("reshape")(lambda attrs, x: x.reshape(attrs["shape"]))
reference("transpose")(lambda attrs, x: np.transpose(x, attrs["perm"]))
reference("broadcast_to")(lambda attrs, x: np.broadcast_to(x, attrs["shape"]))
reference("concat")(lambda attrs, *xs: np.concatenate(xs, axis=attrs["axis"]))
reference("copy")(lambda attrs, x: x.copy())


@reference("slice")
def slice_(attrs, x):
    index = [slice(None)] * x.ndim
    index[attrs["axis"]] = slice(attrs["start"], attrs["stop"])
    return x[tuple(index)]


@reference("pad")
def pad(attrs, x):
    widths = [(0, 0)] * x.ndim
    widths[attrs["axis"]] = (attrs["before"], attrs["after"])
    return np.pad(x, widths)


# ---- the rest ---------------------------------------------------------------------------------
reference("allreduce_mean")(lambda attrs, x: x)  # one process: the mean over ranks is the identity
reference("output")(lambda attrs, t: t[attrs["index"]])  # one output of an op with several
