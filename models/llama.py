"""LLaMA 3's architecture in graphgpt's DSL.

Pre-RMSNorm blocks; grouped-query causal attention (n_kv_head key/value heads shared by the n_head
query heads) with rotary positions on q and k; a SwiGLU MLP; no biases unless attention_bias=1
(q, k, v and o projections) or mlp_bias=1 (gate, up and down); an lm_head of its own unless
tie_weights=1. Weights are (in, out): y = x @ W. The defaults are LLaMA 3 8B's; train a small one
with `python tools/compile.py models/llama.py --set n_layer=12 n_head=12 n_kv_head=4 n_embd=768 ...`.
rope_scaling=linear or llama3 scales the rotary frequencies as transformers does (LLaMA 3.1 to 3.3
are "llama3" with rope_factor 8 or 32, low 1, high 4, original 8192), and head_dim sets the heads'
width apart from n_embd / n_head (q_proj is then (n_embd, n_head head_dim)).

Parameters carry the names of Hugging Face's LlamaForCausalLM without its "model." prefix, so
`--init-from` and `tools/export_hf.py` move each weight under the same name, transposed.
"""
from graphgpt.dsl import causal_attention, embedding, param, rms_norm, rotary, silu

CONFIG = dict(
    n_layer=32,
    n_head=32,
    n_kv_head=8,         # key/value heads; each serves n_head / n_kv_head query heads
    n_embd=4096,
    head_dim=0,          # a head's width; 0: n_embd / n_head
    n_hidden=0,          # the MLP's width; 0: LLaMA's rounding of 8/3 n_embd (below)
    rope_base=500000.0,  # the rotary positions' base (theta)
    rope_scaling="none",  # or "linear" (rope_factor) or "llama3" (the four rope_ keys below)
    rope_factor=8.0,     # the scaled frequencies' divisor (transformers' factor)
    rope_low_freq_factor=1.0,   # llama3: wavelengths over original / low are divided by rope_factor,
    rope_high_freq_factor=4.0,  # those under original / high kept, those between blended
    rope_original_max_position=8192,  # llama3: the context the model was first trained for
    attention_bias=0,    # 1: the q, k, v and o projections add biases
    mlp_bias=0,          # 1: the gate, up and down projections add biases
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


def head_dim(cfg) -> int:
    return cfg["head_dim"] or cfg["n_embd"] // cfg["n_head"]


def rope_scaling(cfg) -> dict | None:
    """rotary's scaling (transformers' rope_parameters) for cfg's rope_ keys; None: unscaled."""
    if cfg["rope_scaling"] == "none":
        return None
    scaling = {"rope_type": cfg["rope_scaling"], "factor": cfg["rope_factor"]}
    if cfg["rope_scaling"] == "llama3":
        scaling |= {"low_freq_factor": cfg["rope_low_freq_factor"], "high_freq_factor": cfg["rope_high_freq_factor"],
                    "original_max_position_embeddings": cfg["rope_original_max_position"]}
    return scaling


def parameters(cfg) -> int:
    """The parameters forward declares, counted from cfg alone (compile refuses a size that cannot
    fit before tracing it)."""
    C, V, H, H_kv, F = cfg["n_embd"], cfg["vocab_size"], cfg["n_head"], cfg["n_kv_head"], hidden_size(cfg)
    D = head_dim(cfg)
    layer = 2 * C + 2 * C * H * D + 2 * C * H_kv * D + 3 * C * F  # norms, q and o, k and v, MLP
    layer += cfg["attention_bias"] * (H * D + 2 * H_kv * D + C) + cfg["mlp_bias"] * (2 * F + C)
    return V * C + cfg["n_layer"] * layer + C + (0 if cfg["tie_weights"] else C * V)


def linear(x, name, shape, bias):
    """x @ W, plus a bias where `bias` (Hugging Face's nn.Linear named `name`)."""
    y = x @ param(f"{name}.weight", shape)
    return y + param(f"{name}.bias", shape[1:], init="zeros") if bias else y


def attention(x, i, cfg):
    B, T, C = x.shape
    H, H_kv, D, bias = cfg["n_head"], cfg["n_kv_head"], head_dim(cfg), cfg["attention_bias"]
    a, scaling = f"layers.{i}.self_attn", rope_scaling(cfg)
    q = linear(x, f"{a}.q_proj", (C, H * D), bias).reshape(B, T, H, D)
    k = linear(x, f"{a}.k_proj", (C, H_kv * D), bias).reshape(B, T, H_kv, D)
    v = linear(x, f"{a}.v_proj", (C, H_kv * D), bias).reshape(B, T, H_kv, D)
    q, k = rotary(q, cfg["rope_base"], scaling), rotary(k, cfg["rope_base"], scaling)
    y = causal_attention(q, k, v, D ** -0.5)                                  # (B, T, H, D)
    return linear(y.reshape(B, T, H * D), f"{a}.o_proj", (H * D, C), bias)


def mlp(x, i, cfg):
    C, F, m, bias = cfg["n_embd"], hidden_size(cfg), f"layers.{i}.mlp", cfg["mlp_bias"]
    gate = silu(linear(x, f"{m}.gate_proj", (C, F), bias))
    return linear(gate * linear(x, f"{m}.up_proj", (C, F), bias), f"{m}.down_proj", (F, C), bias)


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
