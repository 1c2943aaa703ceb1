"""A tiny pre-norm residual MLP language model normalised by RMSNorm (LLaMA's norm, no attention):
the tests' model of a normaliser with one statistic and a weight but no bias."""
from graphgpt.dsl import embedding, gelu, param, rms_norm

CONFIG = dict(n_layer=2, n_embd=16, block_size=8, batch_size=2, vocab_size=0)


def forward(idx, cfg):
    C = cfg["n_embd"]
    x = embedding(param("wte", (cfg["vocab_size"], C)), idx)
    for i in range(cfg["n_layer"]):
        norm = param(f"h.{i}.norm.weight", (C,), init="ones")
        fc, proj = param(f"h.{i}.fc.weight", (C, 4 * C)), param(f"h.{i}.proj.weight", (4 * C, C))
        x = x + gelu(rms_norm(x, norm) @ fc) @ proj
    return rms_norm(x, param("norm.weight", (C,), init="ones")) @ param("lm_head.weight", (C, cfg["vocab_size"]))
