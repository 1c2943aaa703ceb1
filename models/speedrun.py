"""The modded-nanoGPT speedrun's block in graphgpt's DSL.

Pre-RMSNorm blocks (no norm weights); causal attention with rotary positions and QK-norm (q and k
RMS-normalised per head before the rotation); a ReLU² MLP four times as wide; no biases; an
untied lm_head; the attention's and the MLP's output projections start at zero, so every block
starts as the identity. Weights are (in, out): y = x @ W. The defaults train a GPT-2-small-sized
model; every key can be overridden with --set.
"""
from graphgpt.dsl import causal_attention, embedding, param, relu, rms_norm, rotary, square

CONFIG = dict(
    n_layer=12,
    n_head=6,
    n_kv_head=6,         # key/value heads; each serves n_head / n_kv_head query heads
    n_embd=768,
    n_hidden=0,          # the MLP's width; 0: 4 * n_embd
    rope_base=10000.0,
    norm_eps=1e-5,
    vocab_size=50304,    # 0: the tokenizer's vocabulary size
    block_size=1024,
    batch_size=8,
    tie_weights=0,       # 1: lm_head = wte.T
)


def parameters(cfg) -> int:
    """The parameters forward declares, counted from cfg alone (compile refuses a size that cannot
    fit before tracing it)."""
    C, V, H, H_kv = cfg["n_embd"], cfg["vocab_size"], cfg["n_head"], cfg["n_kv_head"]
    D, F = C // H, cfg["n_hidden"] or 4 * C
    layer = 2 * C * H * D + 2 * C * H_kv * D + 2 * C * F  # q and proj, k and v, the MLP
    return V * C + cfg["n_layer"] * layer + (0 if cfg["tie_weights"] else C * V)


def attention(x, i, cfg):
    B, T, C = x.shape
    H, H_kv = cfg["n_head"], cfg["n_kv_head"]
    D, a, eps = C // H, f"h.{i}.attn", cfg["norm_eps"]
    q = (x @ param(f"{a}.q.weight", (C, H * D))).reshape(B, T, H, D)
    k = (x @ param(f"{a}.k.weight", (C, H_kv * D))).reshape(B, T, H_kv, D)
    v = (x @ param(f"{a}.v.weight", (C, H_kv * D))).reshape(B, T, H_kv, D)
    q = rotary(rms_norm(q, eps=eps), cfg["rope_base"])                         # QK-norm, then RoPE
    k = rotary(rms_norm(k, eps=eps), cfg["rope_base"])
    y = causal_attention(q, k, v, D ** -0.5)
    return y.reshape(B, T, C) @ param(f"{a}.proj.weight", (H * D, C), init="zeros")


def mlp(x, i, cfg):
    C = cfg["n_embd"]
    F = cfg["n_hidden"] or 4 * C
    return square(relu(x @ param(f"h.{i}.mlp.fc.weight", (C, F)))) @ param(f"h.{i}.mlp.proj.weight", (F, C), init="zeros")


def forward(idx, cfg):
    """Token ids (B, T) -> logits (B, T, vocab_size)."""
    C, eps = cfg["n_embd"], cfg["norm_eps"]
    wte = param("wte", (cfg["vocab_size"], C))
    x = rms_norm(embedding(wte, idx), eps=eps)
    for i in range(cfg["n_layer"]):
        x = x + attention(rms_norm(x, eps=eps), i, cfg)
        x = x + mlp(rms_norm(x, eps=eps), i, cfg)
    x = rms_norm(x, eps=eps)
    return x @ (wte.T if cfg["tie_weights"] else param("lm_head.weight", (C, cfg["vocab_size"])))
