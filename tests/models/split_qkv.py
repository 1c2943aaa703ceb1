"""A tiny model that splits one projection's last axis into q, k and v pieces and joins pieces with
concat, with a SiLU-gated MLP and the other pointwise functions (no attention): the tests' model of
the DSL's slicing, concat and pointwise activations."""
from graphgpt.dsl import concat, embedding, exp, param, relu, rms_norm, sigmoid, silu, square

CONFIG = dict(n_layer=1, n_embd=16, block_size=8, batch_size=2, vocab_size=0)


def forward(idx, cfg):
    C = cfg["n_embd"]
    x = embedding(param("wte", (cfg["vocab_size"], C)), idx)
    for i in range(cfg["n_layer"]):
        qkv = rms_norm(x) @ param(f"h.{i}.qkv.weight", (C, 3 * C))
        q, k, v = qkv[..., :C], qkv[:, :, C:2 * C], qkv[..., -C:]
        x = x + concat([sigmoid(q) * v, relu(k)], axis=-1) @ param(f"h.{i}.mix.weight", (2 * C, C))
        gate_up = rms_norm(x, param(f"h.{i}.norm.weight", (C,), init="ones")) @ param(f"h.{i}.fc.weight", (C, 8 * C))
        gate, up = gate_up[..., :4 * C], gate_up[..., 4 * C:]
        x = x + (silu(gate) * up + square(up) * exp(-square(gate))) @ param(f"h.{i}.proj.weight", (4 * C, C))
    return rms_norm(x) @ param("lm_head.weight", (C, cfg["vocab_size"]))
