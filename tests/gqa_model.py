"""A tiny GPT with grouped-query attention for the tests: n_kv_head key/value heads shared by the
n_head query heads (each of n_head / n_kv_head of them), projected apart from the queries and
handed to causal_attention as q, k and v, which reads them in place."""
import math

from graphgpt.dsl import causal_attention, dropout, embedding, gelu, layer_norm, param, position_rows

CONFIG = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=16, batch_size=2, vocab_size=0, dropout=0.0)


def linear(x, name, n_in, n_out):
    return x @ param(f"{name}.weight", (n_in, n_out)) + param(f"{name}.bias", (n_out,), init="zeros")


def norm(x, name, n):
    return layer_norm(x, param(f"{name}.weight", (n,), init="ones"), param(f"{name}.bias", (n,), init="zeros"))


def attention(x, name, cfg):
    B, T, C = x.shape
    H, Hkv = cfg["n_head"], cfg["n_kv_head"]
    D = C // H
    q = linear(x, f"{name}.q", C, H * D).reshape(B, T, H, D)
    k = linear(x, f"{name}.k", C, Hkv * D).reshape(B, T, Hkv, D)
    v = linear(x, f"{name}.v", C, Hkv * D).reshape(B, T, Hkv, D)
    y = causal_attention(q, k, v, 1.0 / math.sqrt(D), dropout=cfg["dropout"])  # (B, T, H, D)
    return linear(y.reshape(B, T, C), f"{name}.proj", C, C)


def forward(idx, cfg):
    T, C = idx.shape[1], cfg["n_embd"]
    wte = param("wte", (cfg["vocab_size"], C))
    x = dropout(embedding(wte, idx) + position_rows(param("wpe", (cfg["block_size"], C)), T), cfg["dropout"])
    for i in range(cfg["n_layer"]):
        x = x + attention(norm(x, f"h.{i}.ln_1", C), f"h.{i}.attn", cfg)
        x = x + linear(gelu(linear(norm(x, f"h.{i}.ln_2", C), f"h.{i}.fc", C, 4 * C)), f"h.{i}.mlp", 4 * C, C)
    return norm(x, "ln_f", C) @ wte.T
