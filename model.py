"""GPT-2 in graphgpt's DSL, configured as the seed workload.

Pre-LayerNorm blocks, causal self-attention (one fused op by default), a 4x MLP with tanh GELU,
learned positions and an lm_head of its own (tie_weights=1: the token embedding's transpose, as
GPT-2's); dropout (off by default) where nanoGPT drops. Weights are (in, out): y = x @ W + b.
Override any CONFIG key at compile time: `python tools/compile.py model.py --set n_layer=2`.
"""
import math

from graphgpt.dsl import causal_attention, causal_softmax, dropout, embedding, gelu, layer_norm, matmul, param, position_rows

CONFIG = dict(
    n_layer=6,
    n_head=6,
    n_embd=384,
    block_size=256,   # the sequence length trained on and the generation window
    batch_size=16,
    vocab_size=0,     # 0: the tokenizer's vocabulary size
    attention="fused",  # fused: one kernel, no (T, T) scores in memory; softmax: scores, softmax, GEMMs
    dropout=0.0,      # where nanoGPT drops: embeddings, attention probabilities, both residual branches
    tie_weights=0,    # 1: lm_head = wte.T (GPT-2's), its gradient summed into wte's
)


def norm_params(name, n):
    return param(f"{name}.weight", (n,), init="ones"), param(f"{name}.bias", (n,), init="zeros")


def linear_params(name, n_in, n_out):
    return param(f"{name}.weight", (n_in, n_out)), param(f"{name}.bias", (n_out,), init="zeros")


def linear(x, weight_and_bias):
    weight, bias = weight_and_bias
    return x @ weight + bias


def attention(x, c_attn, c_proj, cfg):
    B, T, C = x.shape
    H = cfg["n_head"]
    D, scale = C // H, 1.0 / math.sqrt(C // H)
    qkv = linear(x, c_attn).reshape(B, T, 3, H, D)
    if cfg["attention"] == "fused":
        y = causal_attention(qkv, scale, dropout=cfg["dropout"])             # (B, T, H, D)
    else:
        heads = qkv.transpose(2, 0, 3, 1, 4)                                 # (3, B, H, T, D)
        q, k, v = heads[0], heads[1], heads[2]
        att = dropout(causal_softmax(matmul(q, k, tb=True), scale), cfg["dropout"])  # (B, H, T, T), in memory
        y = (att @ v).transpose(0, 2, 1, 3)
    return dropout(linear(y.reshape(B, T, C), c_proj), cfg["dropout"])


def block(x, i, cfg):
    C, h = cfg["n_embd"], f"h.{i}"
    # Declared in the seed's checkpoint order: ln_1, ln_2, attention, its projection, the MLP.
    ln_1, ln_2 = norm_params(f"{h}.ln_1", C), norm_params(f"{h}.ln_2", C)
    c_attn, attn_proj = linear_params(f"{h}.attn.c_attn", C, 3 * C), linear_params(f"{h}.attn.c_proj", C, C)
    c_fc, mlp_proj = linear_params(f"{h}.mlp.c_fc", C, 4 * C), linear_params(f"{h}.mlp.c_proj", 4 * C, C)
    x = x + attention(layer_norm(x, *ln_1), c_attn, attn_proj, cfg)
    return x + dropout(linear(gelu(linear(layer_norm(x, *ln_2), c_fc)), mlp_proj), cfg["dropout"])


def forward(idx, cfg):
    """Token ids (B, T) -> logits (B, T, vocab_size)."""
    T, C = idx.shape[1], cfg["n_embd"]
    wte = param("wte", (cfg["vocab_size"], C))
    wpe = param("wpe", (cfg["block_size"], C))
    x = dropout(embedding(wte, idx) + position_rows(wpe, T), cfg["dropout"])  # wpe[:T]; when decoding, the position's row
    for i in range(cfg["n_layer"]):
        x = block(x, i, cfg)
    ln_f = norm_params("ln_f", C)
    lm_head = wte.T if cfg["tie_weights"] else param("lm_head.weight", (C, cfg["vocab_size"]))
    return layer_norm(x, *ln_f) @ lm_head
