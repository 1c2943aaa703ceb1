"""The tracing frontend: what a model file imports.

A model file defines `CONFIG` (a dict of defaults) and `forward(idx, cfg)`, written with the
functions below and ordinary Python. Parameters are float32 (the master weights the optimizer
updates); when a plan computes in another float type (`--set dtype=bf16`), `param` hands the
model each weight cast to it, so the whole forward and backward run in that type and the
gradients are cast back to float32 where they reach the weights. Tracing calls `forward` once on symbolic `Value`s; every
operation appends a node that records the model file's line, so a shape error reads
"model.py:57: matmul: inner dimensions differ: 384 vs 256 (inputs ...)".

The generation programs are traced with key/value caches (`KvCaches`): there `causal_attention`
also writes each layer's keys and values into a cache of its own, and when decoding one position
at a time it attends over that cache, while `position_rows` gives the current position's row and
`rotary` reads its tables from the current position on.
Their weights, in a narrower compute type, are copies made once per generation (`weight_copy`).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

from .errors import UserError
from .families.shape.ops import contiguous_along
from .ir import FLOAT, INT, Graph, GraphError, Value
from .rope_scaling import rotary_scaling
from .schedule import DROPOUT_COUNTER, DROPOUT_SEED

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_DRIVER = os.path.join(_PACKAGE_DIR, "compiler.py")
_active: "Tracer | None" = None


@dataclass
class KvCaches:
    """A generation program's key/value caches: `length` positions per attention layer. Without a
    `position` the program computes a whole window from position 0 and fills the caches (the
    prefill); with one (the decode program's int32 input) it computes the positions from there on
    against them. After tracing: how many layers made caches, and whether the positions came from
    `position_rows` or `rotary` (a model that slices its position table itself cannot decode)."""
    length: int
    position: Value | None = None
    layers: int = 0
    positioned: bool = False


class Tracer:
    """Builds one graph from one call of a model's `forward`."""

    def __init__(self, dtype: str = FLOAT, training: bool = False, caches: KvCaches | None = None):
        self.graph = Graph(locate=user_line)
        self.params: dict[str, Value] = {}
        self.dtype = dtype        # the type the model computes in
        self.training = training  # dropout drops only in the program that trains
        self.caches = caches      # the generation programs' key/value caches
        self.sites = 0            # dropout sites so far: each draws masks of its own
        self.rng: tuple[Value, Value] | None = None

    def dropout_site(self) -> tuple[int, Value, Value]:
        """A new dropout site's number, and the RNG's seed and counter inputs (made on first use)."""
        if self.rng is None:
            self.rng = (self.input(DROPOUT_SEED, (), INT), self.input(DROPOUT_COUNTER, (), INT))
        self.sites += 1
        return self.sites, *self.rng

    def param(self, name: str, shape, init: str, std: float) -> Value:
        if name in self.params:
            raise GraphError(f"{user_line()}: parameter '{name}' is declared twice")
        if init not in ("normal", "zeros", "ones"):
            raise GraphError(f"{user_line()}: parameter '{name}': unknown init '{init}'")
        v = self.graph.add("param", name=name, shape=tuple(int(d) for d in shape), dtype=FLOAT,
                           init=init, std=float(std) if init == "normal" else 0.0)
        self.params[name] = v
        if self.dtype == FLOAT:
            return v
        # every program reads this cast as the weight's copy (passes/weight_copies.py)
        return self.graph.add("cast", (v,), dtype=self.dtype)

    def input(self, name: str, shape, dtype: str = FLOAT) -> Value:
        return self.graph.add("input", name=name, shape=tuple(shape), dtype=dtype)


def weight_copy(name: str, dtype: str) -> str:
    """The name of a weight's copy in the compute type, which every program of such a plan reads
    (passes/weight_copies.py)."""
    return f"{name}.{dtype}"


def user_line() -> str | None:
    """file:line of the innermost stack frame outside graphgpt: the model author's line.

    The walk stops at the compile driver: nodes it creates itself (the token inputs, the loss)
    belong to no line of the model file.
    """
    f = sys._getframe(1)
    while f is not None:
        path = os.path.abspath(f.f_code.co_filename)
        if path == _DRIVER:
            return None
        if not path.startswith(_PACKAGE_DIR) and not f.f_code.co_filename.startswith("<frozen"):
            return f"{os.path.basename(path)}:{f.f_lineno}"
        f = f.f_back
    return None


def trace(build: Callable[[Tracer], None], dtype: str = FLOAT, training: bool = False,
          caches: KvCaches | None = None) -> Tracer:
    """Run `build(tracer)` with the DSL functions recording into a fresh graph."""
    global _active
    tracer, previous = Tracer(dtype, training, caches), _active
    _active = tracer
    try:
        build(tracer)
    finally:
        _active = previous
    return tracer


def _tracer() -> Tracer:
    if _active is None:
        raise UserError("graphgpt.dsl functions only work while a model is being traced")
    return _active


# ---- the functions a model file uses ----------------------------------------------------------
def param(name: str, shape, init: str = "normal", std: float = 0.02) -> Value:
    """A trainable tensor: init 'normal' (N(0, std)), 'zeros' or 'ones'."""
    return _tracer().param(name, shape, init, std)


def layer_norm(x: Value, weight: Value, bias: Value, eps: float = 1e-5) -> Value:
    normalized, _mean, _rstd = x.graph.add("normalize", (x,), eps=float(eps))  # the statistics: for the backward
    return normalized * weight + bias


def rms_norm(x: Value, weight: Value | None = None, eps: float = 1e-5) -> Value:
    """x * rsqrt(mean(x^2 over the last axis) + eps), times a per-column weight when given."""
    normalized, _rstd = x.graph.add("rms_normalize", (x,), eps=float(eps))  # the statistic: for the backward
    return normalized if weight is None else normalized * weight


def gelu(x: Value) -> Value:
    """GELU, tanh approximation (GPT-2's)."""
    return x.graph.add("gelu", (x,))


def silu(x: Value) -> Value:
    """x * sigmoid(x) (LLaMA's gate)."""
    return x.graph.add("silu", (x,))


def sigmoid(x: Value) -> Value:
    return x.graph.add("sigmoid", (x,))


def relu(x: Value) -> Value:
    return x.graph.add("relu", (x,))


def square(x: Value) -> Value:
    return x.graph.add("square", (x,))


def exp(x: Value) -> Value:
    return x.graph.add("exp", (x,))


def causal_softmax(scores: Value, scale: float) -> Value:
    """softmax(scale * scores) over the last axis with future positions masked out."""
    return scores.graph.add("causal_softmax", (scores,), scale=float(scale))


def causal_attention(*args, **kwargs) -> Value:
    """causal_attention(q, k, v, scale, dropout=0.0) or causal_attention(qkv, scale, dropout=0.0).

    Per query head, softmax(scale * q k^T with future keys masked out) v, as (B, T, H, D): one fused
    op that never stores the (T, T) scores (its log-sum-exp per query is kept for the backward).
    q is (B, T, H, D) and k and v (B, T, Hkv, D), Hkv dividing H: grouped-query attention, query
    head h reading key/value head h // (H / Hkv) in place, never a copy. Or q, k and v packed as
    (B, T, 3, H, D) (the QKV projection's output, reshaped). `dropout` drops attention
    probabilities inside the kernels, in the training program only. In the generation programs the
    keys and values also go to this layer's cache, and decoding attends over it."""
    tracer = _tracer()
    tensors = 0
    while tensors < len(args) and isinstance(args[tensors], Value):
        tensors += 1
    if tensors not in (1, 3):
        raise GraphError(f"{user_line()}: causal_attention takes packed qkv or q, k and v, not {tensors} tensors")
    try:
        scale, dropout = _attention_options(*args[tensors:], **kwargs)
    except TypeError:
        raise GraphError(f"{user_line()}: causal_attention takes (q, k, v, scale, dropout=0.0) or "
                         "(qkv, scale, dropout=0.0)") from None
    qkv, graph = tuple(args[:tensors]), args[0].graph
    if tracer.caches is not None:
        return _cached(tracer, qkv, scale)
    if dropout and tracer.training:
        site, seed, counter = tracer.dropout_site()
        out, _lse = graph.add("causal_attention", (*qkv, seed, counter), scale=scale,
                              dropout=_probability(dropout), site=site)
    else:
        out, _lse = graph.add("causal_attention", qkv, scale=scale)
    return out


def _attention_options(scale: float, dropout: float = 0.0) -> tuple[float, float]:
    return float(scale), dropout


def _cached(tracer: Tracer, qkv: tuple[Value, ...], scale: float) -> Value:
    """causal_attention in a generation program: the new keys and values (of the packed qkv, or k
    and v) are written into this layer's cache of Hkv heads in place (an update of the cache), and
    a decoding step reads them back from it."""
    caches, graph = tracer.caches, qkv[0].graph
    kv = qkv[-1].shape  # (B, T, 3, H, D) or v's (B, T, Hkv, D): the cache's heads and head dim last
    cache = graph.add("cache", name=f"kv_cache.{caches.layers}", shape=(kv[0], caches.length, 2, *kv[-2:]),
                      dtype=qkv[0].dtype)
    caches.layers += 1
    position = () if caches.position is None else (caches.position,)
    written = graph.add("cache_update", (cache, *(qkv if len(qkv) == 1 else qkv[1:]), *position))
    graph.updates[cache.id] = written.id
    if caches.position is None:
        out, _lse = graph.add("causal_attention", qkv, scale=scale)
        return out
    return graph.add("cached_attention", (qkv[0], written, caches.position), scale=scale)


def position_rows(table: Value, t: int) -> Value:
    """The rows of a learned position table for the T positions being computed: table[:T] for a
    whole window (training, evaluation, generation's prefill), table[p] when decoding the token at
    position p (the decode program's position input)."""
    caches = _tracer().caches
    if caches is None or caches.position is None:
        return table[:t]
    if t != 1:
        raise GraphError(f"{user_line()}: position_rows: decoding computes one position at a time, not {t}")
    caches.positioned = True
    return embedding(table, caches.position.reshape(1))


def rotary(x: Value, base: float = 10000.0, scaling: dict | None = None) -> Value:
    """Rotary position embedding of x (B, T, H, D), D even, in Hugging Face LLaMA's convention
    (rotate_half): columns i and i + D/2 are rotated by position * base^(-2i/D). The positions are
    0..T-1, or, in the decode program, from its position input on; the cosines and sines are
    tables the compiler computes (one row per position the program can see: the block, or the
    key/value caches' length). `scaling` scales the frequencies as transformers' rope_type does:
    {"rope_type": "linear", "factor": f} or {"rope_type": "llama3", "factor": f,
    "low_freq_factor": l, "high_freq_factor": h, "original_max_position_embeddings": n}
    (graphgpt/rope_scaling.py)."""
    tracer = _tracer()
    if x.ndim != 4 or x.shape[-1] % 2:
        raise GraphError(f"{user_line()}: rotary: x must be (B, T, H, D) with D even, got {x.shape}")
    if not (isinstance(base, (int, float)) and math.isfinite(base) and base > 0):
        raise GraphError(f"{user_line()}: rotary: base must be a finite number > 0, got {base!r}")
    try:
        scaled = rotary_scaling(scaling)
    except ValueError as e:
        raise GraphError(f"{user_line()}: rotary: {e}") from None
    caches = tracer.caches
    rows = x.shape[1] if caches is None else caches.length
    table = dict(shape=(rows, x.shape[-1] // 2), base=float(base), **scaled)
    cos, sin = (x.graph.const_tensor(name, **table) for name in ("rotary_cos", "rotary_sin"))
    position = ()
    if caches is not None and caches.position is not None:
        caches.positioned = True  # its positions come from the decode program's input
        position = (caches.position,)
    return x.graph.add("rotary", (x, cos, sin, *position), inverse=False)


def dropout(x: Value, p: float) -> Value:
    """Zero each element with probability p and scale the rest by 1 / (1 - p), in the training
    program; the evaluation and generation programs pass x through. The masks come from a
    counter-based RNG (Philox4x32-10) keyed by the run's seed, the micro-batch and the element."""
    tracer = _tracer()
    if not p or not tracer.training:
        return x
    site, seed, counter = tracer.dropout_site()
    return x.graph.add("dropout", (x, seed, counter), p=_probability(p), site=site)


def _probability(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise GraphError(f"{user_line()}: dropout probability {p} is not in [0, 1)")
    return float(p)


def concat(xs, axis: int = -1) -> Value:
    """The values joined along `axis`; they agree on every other axis and in dtype. Where the
    pieces are contiguous runs of the result (every axis before `axis` of extent 1) it is a concat,
    which the plan builds in place, each piece computed into its part of the result; along an inner
    axis each piece is padded with zeros to the result's shape and the pads are added."""
    xs = list(xs)
    if not xs or not all(isinstance(x, Value) for x in xs):
        raise GraphError(f"{user_line()}: concat takes a list of one or more values")
    first = xs[0]
    if not -first.ndim <= axis < first.ndim:
        raise GraphError(f"{user_line()}: concat: axis {axis} is out of range for shape {first.shape}")
    axis %= first.ndim
    rest = [(x.shape[:axis], x.shape[axis + 1:], x.dtype) for x in xs]
    if any(r != rest[0] for r in rest):
        raise GraphError(f"{user_line()}: concat: the values differ outside axis {axis}: "
                         + ", ".join(f"{x.shape}:{x.dtype}" for x in xs))
    if contiguous_along(first.shape, axis):
        return first.graph.add("concat", xs, axis=axis)
    total, start, out = sum(x.shape[axis] for x in xs), 0, None
    for x in xs:
        piece = x.graph.add("pad", (x,), axis=axis, before=start, after=total - start - x.shape[axis])
        start += x.shape[axis]
        out = piece if out is None else out + piece
    return out


def matmul(a: Value, b: Value, ta: bool = False, tb: bool = False) -> Value:
    """op(a) @ op(b), op transposing the last two axes when its flag is set."""
    return a.graph.add("matmul", (a, b), ta=bool(ta), tb=bool(tb))


def embedding(table: Value, ids: Value) -> Value:
    return table.graph.add("embedding", (table, ids))


def cross_entropy(logits: Value, targets: Value) -> Value:
    """Mean over all positions of -log softmax(logits)[target]."""
    return logits.graph.add("cross_entropy", (logits, targets))


__all__ = ["param", "layer_norm", "rms_norm", "gelu", "silu", "sigmoid", "relu", "square", "exp", "causal_softmax",
           "causal_attention", "dropout", "concat", "matmul", "embedding", "position_rows", "rotary", "cross_entropy",
           "Value", "FLOAT", "INT", "trace", "Tracer", "KvCaches"]
