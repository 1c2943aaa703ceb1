"""GPT-2 and its training step in PyTorch, computing what a plan compiled from model.py computes.

The reference point for graphgpt: tests check it against the NumPy backend in float64, and
tools/bench.py times it beside the CUDA backend. Everything mirrors model.py and graphgpt/optim.py:
pre-LN blocks, LayerNorm eps 1e-5, one fused qkv projection split as (B, T, 3, H, D), causal
attention scaled by 1/sqrt(D), a 4x tanh-GELU MLP, learned positions, an untied lm_head without
bias, weights stored (in, out) so y = x @ W + b, and parameter names equal to the plan's. The
loss is the mean cross-entropy; the step clips the global gradient norm and applies Adam or AdamW.

Decoding keeps a static key/value cache (`KvCache`, preallocated to the block as HF's StaticCache
is, so a decode step has fixed shapes and torch.compile captures it once): `prefill` fills it
from a whole window, `decode_step` writes one position's keys and values at a position tensor
and attends over the cache with the later positions masked out.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from graphgpt import optim, schedule

PRECISIONS = ("fp32", "tf32", "bf16")
OPTIMIZERS = ("exact", "torch")


class Linear(nn.Module):
    """y = x @ W + b with W stored (in, out), as model.py and the seed's checkpoints store it."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(0.0, 0.02))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight
        return y if self.bias is None else y + self.bias


class Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.c_attn = Linear(n_embd, 3 * n_embd)
        self.c_proj = Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor, cache: tuple | None = None, pos: torch.Tensor | None = None) -> torch.Tensor:
        """cache: this layer's (keys, values), (B, H, L, D) each, filled from position 0 (pos None)
        or at the one position `pos` (a 0-d tensor), over which the new query then attends."""
        B, T, C = x.shape
        D = C // self.n_head
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, D).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if cache is not None and pos is not None:
            keys, values = cache
            keys.index_copy_(2, pos.view(1), k.to(keys.dtype))
            values.index_copy_(2, pos.view(1), v.to(values.dtype))
            seen = (torch.arange(keys.shape[2], device=x.device) <= pos).view(1, 1, 1, -1)
            y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=seen)
        else:
            if cache is not None:
                cache[0][:, :, :T], cache[1][:, :, :T] = k, v
            # scaled_dot_product_attention's default scale is 1/sqrt(D), model.py's; it picks the
            # fastest kernel (flash, memory-efficient or plain math), as an idiomatic baseline would.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        return F.dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float = 0.0):
        super().__init__()
        self.c_fc = Linear(n_embd, 4 * n_embd)
        self.c_proj = Linear(4 * n_embd, n_embd)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        # Registered in model.py's declaration order, so parameters() follows the plan's order.
        self.ln_1 = nn.LayerNorm(n_embd, eps=1e-5)
        self.ln_2 = nn.LayerNorm(n_embd, eps=1e-5)
        self.attn = Attention(n_embd, n_head, dropout)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x: torch.Tensor, cache: tuple | None = None, pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, pos)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int,
                 dropout: float = 0.0, tie_weights: bool = False):
        super().__init__()
        self.dropout = dropout  # where model.py drops: embeddings, attention probabilities, residual branches
        if n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
        self.wte = nn.Parameter(torch.empty(vocab_size, n_embd).normal_(0.0, 0.02))
        self.wpe = nn.Parameter(torch.empty(block_size, n_embd).normal_(0.0, 0.02))
        self.h = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, eps=1e-5)
        # tied: the logits are x @ wte.T (GPT-2's), with no lm_head of its own
        self.lm_head = None if tie_weights else Linear(n_embd, vocab_size, bias=False)

    @classmethod
    def from_config(cls, cfg: dict) -> GPT2:
        """The model of a plan's config (model.py's CONFIG keys; batch_size is not the model's)."""
        return cls(*(cfg[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")),
                   dropout=cfg.get("dropout", 0.0), tie_weights=bool(cfg.get("tie_weights", 0)))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KvCache | None = None,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, V), or the mean cross-entropy when targets are given.
        With a cache: a window from position 0 fills it, or one token per row at `pos` reads it.

        The loss lives inside forward so that torch.compile fuses it with the lm_head.
        """
        positions = self.wpe[: idx.shape[1]] if pos is None else F.embedding(pos.view(1), self.wpe)
        x = F.dropout(F.embedding(idx, self.wte) + positions, self.dropout, self.training)
        for i, block in enumerate(self.h):
            x = block(x, None if cache is None else cache.layers[i], pos)
        x = self.ln_f(x)
        logits = x @ self.wte.T if self.lm_head is None else self.lm_head(x)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class KvCache:
    """Every layer's keys and values, (B, H, block_size, D) each, allocated once."""

    def __init__(self, model: GPT2, batch: int, dtype: torch.dtype, device):
        n_head, (block, n_embd) = model.h[0].attn.n_head, model.wpe.shape
        shape = (batch, n_head, block, n_embd // n_head)
        self.layers = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                       for _ in model.h]


@torch.no_grad()
def prefill(model: nn.Module, idx: torch.Tensor, cache: KvCache) -> torch.Tensor:
    """The logits of a window (B, T) from position 0, its keys and values left in the cache."""
    return model(idx, cache=cache)


@torch.no_grad()
def decode_step(model: nn.Module, token: torch.Tensor, pos: torch.Tensor, cache: KvCache) -> torch.Tensor:
    """The logits (B, 1, V) of one token per row (B, 1) at position `pos` (a 0-d int64 tensor)."""
    return model(token, cache=cache, pos=pos)


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself; torch.compile's wrapper prefixes every parameter name with _orig_mod."""
    return getattr(model, "_orig_mod", model)


def load_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Copy graphgpt's weights (plan names, (in, out) layout) into the model, in its dtype."""
    params = dict(unwrap(model).named_parameters())
    if params.keys() != weights.keys():
        missing, extra = sorted(params.keys() - weights.keys()), sorted(weights.keys() - params.keys())
        raise ValueError(f"weight names differ from the model's: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, p in params.items():
            value = torch.from_numpy(np.asarray(weights[name]))
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)}, the model's is {tuple(p.shape)}")
            p.copy_(value)


def use_precision(precision: str) -> torch.dtype | None:
    """Set the float32 matmul mode of `precision`; return its autocast dtype (None: no autocast).

    fp32 and bf16 keep full-precision float32 matmuls (bf16 autocasts the matmuls themselves);
    tf32 lets float32 matmuls run on tensor cores.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    return torch.bfloat16 if precision == "bf16" else None


class ExactAdam:
    """graphgpt's update (optim.add_update) on all parameters at once with torch._foreach_* ops.

    g = grad * clip / max(norm, clip); m += (g - m)(1 - b1); v += (g² - v)(1 - b2). Adam, the
    seed's rule: p -= step_size * m / (sqrt(v) + eps), eps on the uncorrected sqrt(v) (torch.optim.Adam
    adds it after bias correction). AdamW: p -= lr * (m * bias1 / (sqrt(v) * bias2 + eps) + wd * p),
    the decay on tensors of rank >= 2 only. The scalars come from graphgpt's own schedule.
    """

    def __init__(self, params, cfg: dict):
        self.params, self.cfg = list(params), check_optimizer(cfg)
        decays = cfg["optimizer"] == "adamw" and cfg["weight_decay"] > 0
        self.decayed = [decays and p.ndim >= 2 for p in self.params]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.updates_done = 0

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Clip, update, count; returns the gradient norm before clipping, without a host sync."""
        cfg, grads = self.cfg, [p.grad for p in self.params]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if cfg["grad_clip"] > 0:
            grads = torch._foreach_mul(grads, cfg["grad_clip"] / torch.clamp(norm, min=cfg["grad_clip"]))
        torch._foreach_lerp_(self.m, grads, 1.0 - cfg["beta1"])  # m + (g - m) * (1 - b1)
        torch._foreach_lerp_(self.v, torch._foreach_mul(grads, grads), 1.0 - cfg["beta2"])
        scalars = schedule.step_scalars(cfg, self.updates_done)
        denom = torch._foreach_sqrt(self.v)
        if cfg["optimizer"] == "adam":
            torch._foreach_add_(denom, cfg["eps"])
            torch._foreach_addcdiv_(self.params, self.m, denom, value=-scalars["step_size"])
        else:
            torch._foreach_mul_(denom, scalars["bias2"])
            torch._foreach_add_(denom, cfg["eps"])
            steps = torch._foreach_div(torch._foreach_mul(self.m, scalars["bias1"]), denom)
            # the decay reads the weights before this update, as graphgpt's graph does
            steps = [s + p * cfg["weight_decay"] if decayed else s
                     for s, p, decayed in zip(steps, self.params, self.decayed)]
            torch._foreach_add_(self.params, steps, alpha=-scalars["lr"])
        self.updates_done += 1
        return norm

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


class TorchAdam:
    """The idiomatic baseline: clip_grad_norm_ and torch.optim.Adam, or AdamW with weight decay
    on tensors of rank >= 2 (nanoGPT's groups), fused on the GPU; graphgpt's schedule.

    Not bit-for-bit graphgpt's: the clip divides by norm + 1e-6, and torch.optim.Adam adds eps
    after bias correction (graphgpt's Adam before; its AdamW after, as torch does). Both shift
    updates by far less than float32 training noise.
    """

    def __init__(self, params, cfg: dict):
        self.params, self.cfg = list(params), check_optimizer(cfg)
        adamw = cfg["optimizer"] == "adamw"
        groups = [{"params": [p for p in self.params if p.ndim >= 2],
                   "weight_decay": cfg["weight_decay"] if adamw else 0.0},
                  {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0}]
        fast = {"fused": True} if self.params[0].is_cuda else {"foreach": True}
        self.adam = (torch.optim.AdamW if adamw else torch.optim.Adam)(
            [g for g in groups if g["params"]], lr=schedule.lr_at(cfg, 0), betas=(cfg["beta1"], cfg["beta2"]),
            eps=cfg["eps"], **fast)
        self.updates_done = 0

    def step(self) -> torch.Tensor:
        if self.cfg["grad_clip"] > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg["grad_clip"], foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params], foreach=True)
        for group in self.adam.param_groups:
            group["lr"] = schedule.lr_at(self.cfg, self.updates_done)
        self.adam.step()
        self.updates_done += 1
        return norm

    def zero_grad(self) -> None:
        self.adam.zero_grad(set_to_none=True)


def check_optimizer(cfg: dict) -> dict:
    if cfg["optimizer"] not in ("adam", "adamw"):
        raise ValueError(f"a plan's optimizer is adam or adamw, not {cfg['optimizer']}")
    return cfg


def make_optimizer(model: nn.Module, kind: str, cfg: dict | None = None) -> ExactAdam | TorchAdam:
    """kind 'exact' (graphgpt's formula) or 'torch' (torch.optim.Adam or AdamW); cfg: a plan's
    optimizer config (default: graphgpt's, the seed's Adam 0.9/0.95/1e-8, clipping at 1.0)."""
    cfg = dict(optim.DEFAULTS) if cfg is None else cfg
    params = unwrap(model).parameters()
    if kind == "exact":
        return ExactAdam(params, cfg)
    if kind == "torch":
        return TorchAdam(params, cfg)
    raise ValueError(f"optimizer kind must be one of {', '.join(OPTIMIZERS)}, not '{kind}'")


def train_step(model: nn.Module, optimizer: ExactAdam | TorchAdam, tokens: torch.Tensor,
               targets: torch.Tensor, autocast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: loss, backward, clip, update. Returns (loss, grad norm) as tensors: no host sync."""
    with torch.autocast(device_type=tokens.device.type, dtype=autocast, enabled=autocast is not None):
        loss = model(tokens, targets)
    loss.backward()
    norm = optimizer.step()
    optimizer.zero_grad()
    return loss.detach(), norm


__all__ = ["GPT2", "KvCache", "prefill", "decode_step", "load_weights", "make_optimizer", "train_step", "use_precision", "unwrap",
           "ExactAdam", "TorchAdam", "PRECISIONS", "OPTIMIZERS"]
