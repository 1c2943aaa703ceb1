"""LLaMA 3's architecture in graphgpt's DSL.

Pre-RMSNorm blocks; grouped-query causal attention (n_kv_head key/value heads shared by the n_head
query heads) with rotary positions on q and k; a SwiGLU MLP; no biases; an lm_head of its own unless
tie_weights=1. Weights are (in, out): y = x @ W. The defaults are LLaMA 3 8B's; train a small one
with `python tools/compile.py models/llama.py --set n_layer=12 n_head=12 n_kv_head=4 n_embd=768 ...`.

Parameters carry the names of Hugging Face's LlamaForCausalLM without its "model." prefix, so
`--init-from` and `tools/export_hf.py` move each weight under the same name, transposed.
"""
from graphgpt.dsl import causal_attention, embedding, param, rms_norm, rotary, silu

CONFIG = dict(
    n_layer=32,
    n_head=32,
    n_kv_head=8,         # key/value heads; each serves n_head / n_kv_head query heads
    n_embd=4096,
    n_hidden=0,          # the MLP's width; 0: LLaMA's rounding of 8/3 n_embd (below)
    rope_base=500000.0,  # the rotary positions' base (theta)
    norm_eps=1e-5,
    vocab_size=128256,   # 0: the tokenizer's vocabulary size
    block_size=8192,     # the sequence length trained on and the generation window
    batch_size=1,
    tie_weights=0,       # 1: lm_head = embed_tokens.T
)
FFN_MULTIPLIER, MULTIPLE_OF = 1.3, 1024  # LLaMA 3's hidden-size rounding


def hidden_size(cfg) -> int:
    """The SwiGLU width: cfg's n_hidden, or LLaMA's rule (2/3 of 4 n_embd, times the multiplier,
    rounded up to a multiple of MULTIPLE_OF): 14336 for n_embd 4096."""
    if cfg["n_hidden"]:
        return cfg["n_hidden"]
    hidden = int(FFN_MULTIPLIER * int(2 * 4 * cfg["n_embd"] / 3))
    return MULTIPLE_OF * -(-hidden // MULTIPLE_OF)


def parameters(cfg) -> int:
    """The parameters forward declares, counted from cfg alone (compile refuses a size that cannot
    fit before tracing it)."""
    C, V, H, H_kv = cfg["n_embd"], cfg["vocab_size"], cfg["n_head"], cfg["n_kv_head"]
    D = C // H
    layer = 2 * C + 2 * C * H * D + 2 * C * H_kv * D + 3 * C * hidden_size(cfg)  # norms, q and o, k and v, MLP
    return V * C + cfg["n_layer"] * layer + C + (0 if cfg["tie_weights"] else C * V)


def attention(x, i, cfg):
    B, T, C = x.shape
    H, H_kv = cfg["n_head"], cfg["n_kv_head"]
    D, a = C // H, f"layers.{i}.self_attn"
    q = (x @ param(f"{a}.q_proj.weight", (C, H * D))).reshape(B, T, H, D)
    k = (x @ param(f"{a}.k_proj.weight", (C, H_kv * D))).reshape(B, T, H_kv, D)
    v = (x @ param(f"{a}.v_proj.weight", (C, H_kv * D))).reshape(B, T, H_kv, D)
    q, k = rotary(q, cfg["rope_base"]), rotary(k, cfg["rope_base"])
    y = causal_attention(q, k, v, D ** -0.5)                                  # (B, T, H, D)
    return y.reshape(B, T, C) @ param(f"{a}.o_proj.weight", (H * D, C))


def mlp(x, i, cfg):
    C, F, m = cfg["n_embd"], hidden_size(cfg), f"layers.{i}.mlp"
    gate = silu(x @ param(f"{m}.gate_proj.weight", (C, F)))
    return (gate * (x @ param(f"{m}.up_proj.weight", (C, F)))) @ param(f"{m}.down_proj.weight", (F, C))


def block(x, i, cfg):
    C, eps = cfg["n_embd"], cfg["norm_eps"]
    ln_1 = param(f"layers.{i}.input_layernorm.weight", (C,), init="ones")
    ln_2 = param(f"layers.{i}.post_attention_layernorm.weight", (C,), init="ones")
    x = x + attention(rms_norm(x, ln_1, eps), i, cfg)
    return x + mlp(rms_norm(x, ln_2, eps), i, cfg)


def forward(idx, cfg):
    """Token ids (B, T) -> logits (B, T, vocab_size)."""
    C = cfg["n_embd"]
    wte = param("embed_tokens.weight", (cfg["vocab_size"], C))
    x = embedding(wte, idx)
    for i in range(cfg["n_layer"]):
        x = block(x, i, cfg)
    x = rms_norm(x, param("norm.weight", (C,), init="ones"), cfg["norm_eps"])
    return x @ (wte.T if cfg["tie_weights"] else param("lm_head.weight", (C, cfg["vocab_size"])))
