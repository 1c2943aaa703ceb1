"""LLaMA 3's block in PyTorch, computing what a plan compiled from models/llama.py computes.

tools/bench.py times it beside the CUDA backend, as tools/torch_gpt2.py's GPT-2 for model.py: an
idiomatic baseline with the plan's parameter names and (in, out) weights. RMSNorm (`F.rms_norm`),
rotary positions in Hugging Face's rotate_half convention, grouped-query attention through
`F.scaled_dot_product_attention(..., enable_gqa=True)` (no copies of K or V), a SwiGLU MLP; the
plan's head width, biases and rotary scaling (the frequencies graphgpt/rope_scaling.py computes).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from graphgpt.rope_scaling import inverse_frequencies, rotary_scaling
from tools.torch_gpt2 import Linear


def model_file():
    """models/llama.py as a module: its rules for the head width, the MLP's width and the scaling."""
    spec = importlib.util.spec_from_file_location("llama_model", Path(__file__).resolve().parent.parent / "models" / "llama.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rope_tables(block_size: int, head_dim: int, base: float, scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * inv_freq (base^(-2i/D), scaled), each (T, D) with the D/2 angles repeated."""
    inv_freq = torch.from_numpy(inverse_frequencies(head_dim // 2, base, **rotary_scaling(scaling)))
    angles = torch.outer(torch.arange(block_size, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated pairwise: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def is_llama(plan) -> bool:
    """Whether a plan was compiled from models/llama.py (its parameters carry LLaMA's names)."""
    return any(t["name"] == "layers.0.self_attn.q_proj.weight" for t in plan.params)


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(n)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, n_kv_head: int, d: int, bias: bool):
        super().__init__()
        self.n_head, self.n_kv_head, self.d = n_head, n_kv_head, d
        self.q_proj = Linear(n_embd, n_head * d, bias=bias)
        self.k_proj = Linear(n_embd, n_kv_head * d, bias=bias)
        self.v_proj = Linear(n_embd, n_kv_head * d, bias=bias)
        self.o_proj = Linear(n_head * d, n_embd, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        D = self.d
        q = self.q_proj(x).view(B, T, self.n_head, D).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, D).transpose(1, 2)
        q, k = rotate(q, cos, sin).to(v.dtype), rotate(k, cos, sin).to(v.dtype)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * D))


class MLP(nn.Module):
    def __init__(self, n_embd: int, n_hidden: int, bias: bool):
        super().__init__()
        self.gate_proj = Linear(n_embd, n_hidden, bias=bias)
        self.up_proj = Linear(n_embd, n_hidden, bias=bias)
        self.down_proj = Linear(n_hidden, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: dict, n_hidden: int, head_dim: int):
        super().__init__()
        # Registered in models/llama.py's declaration order, so parameters() follows the plan's order.
        self.input_layernorm = RMSNorm(cfg["n_embd"], cfg["norm_eps"])
        self.post_attention_layernorm = RMSNorm(cfg["n_embd"], cfg["norm_eps"])
        self.self_attn = Attention(cfg["n_embd"], cfg["n_head"], cfg["n_kv_head"], head_dim, bool(cfg.get("attention_bias")))
        self.mlp = MLP(cfg["n_embd"], n_hidden, bool(cfg.get("mlp_bias")))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        llama = model_file()
        C, V, D = cfg["n_embd"], cfg["vocab_size"], llama.head_dim(cfg)
        self.embed_tokens = nn.Module()
        self.embed_tokens.weight = nn.Parameter(torch.empty(V, C).normal_(0.0, 0.02))
        self.layers = nn.ModuleList(Block(cfg, llama.hidden_size(cfg), D) for _ in range(cfg["n_layer"]))
        self.norm = RMSNorm(C, cfg["norm_eps"])
        self.lm_head = None if cfg.get("tie_weights") else Linear(C, V, bias=False)
        cos, sin = rope_tables(cfg["block_size"], D, cfg["rope_base"], llama.rope_scaling(cfg))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @classmethod
    def from_plan(cls, plan) -> Llama:
        """The model of a plan compiled from models/llama.py: its settings are the plan's config."""
        return cls(plan.config)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, V), or the mean cross-entropy when targets are given."""
        T = idx.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = F.embedding(idx, self.embed_tokens.weight)
        for block in self.layers:
            x = block(x, cos, sin)
        x = self.norm(x)
        logits = x @ self.embed_tokens.weight.T if self.lm_head is None else self.lm_head(x)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
