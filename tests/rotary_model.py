"""A tiny LLaMA-style attention model for the rotary tests: separate q, k and v projections, rotary
position embedding on q and k (no position table), and the fused causal attention of the three.
Pre-LayerNorm blocks with a GELU MLP, as model.py's."""
import math

from graphgpt.dsl import causal_attention, embedding, gelu, param, rotary
from tests.gqa_model import linear, norm

CONFIG = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, batch_size=2, vocab_size=0, rotary_base=10000.0)


def attention(x, name, cfg):
    B, T, C = x.shape
    H = cfg["n_head"]
    D = C // H
    q, k, v = (linear(x, f"{name}.{part}", C, C).reshape(B, T, H, D) for part in ("q", "k", "v"))
    q, k = rotary(q, cfg["rotary_base"]), rotary(k, cfg["rotary_base"])
    y = causal_attention(q, k, v, 1.0 / math.sqrt(D))
    return linear(y.reshape(B, T, C), f"{name}.proj", C, C)


def forward(idx, cfg):
    C = cfg["n_embd"]
    wte = param("wte", (cfg["vocab_size"], C))
    x = embedding(wte, idx)
    for i in range(cfg["n_layer"]):
        x = x + attention(norm(x, f"h.{i}.ln_1", C), f"h.{i}.attn", cfg)
        x = x + linear(gelu(linear(norm(x, f"h.{i}.ln_2", C), f"h.{i}.fc", C, 4 * C)), f"h.{i}.mlp", 4 * C, C)
    return norm(x, "ln_f", C) @ param("lm_head.weight", (C, cfg["vocab_size"]))
