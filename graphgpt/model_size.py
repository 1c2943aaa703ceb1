"""How large a model is, from its CONFIG alone, before anything is traced.

Tracing a model builds a node per op, so a configuration of absurd size (`n_layer=10**20`,
`n_embd=10**6`) would trace until memory runs out. Its parameters and a lower bound of its arena
are arithmetic on the CONFIG, so such a model is refused at once, naming both numbers and the
memory of the largest device the plan targets. A model file counts its own parameters when it
defines `parameters(cfg)` (models/llama.py does); a CONFIG with GPT-2's keys and no such function
is counted as GPT-2. The compiled plan's exact arena is checked against the same target once it is
known.
"""
from __future__ import annotations

from typing import Callable

from .errors import UserError

# The largest device a plan is compiled for unless --device-memory says otherwise: an H200's 141 GB.
DEFAULT_DEVICE_GB = 141.0
ADAM_BYTES = 16  # per parameter in the arena: the float32 weight, its gradient and Adam's two moments
GPT2_KEYS = ("n_layer", "n_embd", "block_size", "batch_size", "vocab_size")


def parameters(cfg: dict) -> int:
    """GPT-2's parameters: token and position tables, per layer the QKV, projection and 4x MLP
    matrices with their biases and two LayerNorms, the final LayerNorm and an untied lm_head."""
    L, C, T, V = cfg["n_layer"], cfg["n_embd"], cfg["block_size"], cfg["vocab_size"]
    head = 0 if cfg.get("tie_weights") else V * C
    return V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C + head


def arena_lower_bound(cfg: dict, n_params: int | None = None) -> int:
    """Bytes no plan of this configuration can do without: weights, gradients and Adam's moments
    in float32 (of `n_params`, by default GPT-2's count), and one (batch, block, n_embd) activation
    with the token ids and targets."""
    rows = max(cfg["batch_size"], cfg.get("sample_batch", 1)) * cfg["block_size"]
    activation = 2 if cfg.get("dtype") == "bf16" else 4
    n_params = parameters(cfg) if n_params is None else n_params
    return ADAM_BYTES * n_params + rows * cfg["n_embd"] * activation + 2 * rows * 4


def check_fits(cfg: dict, device_bytes: int, count: Callable[[dict], int] | None = None) -> None:
    """Refuse a configuration whose arena cannot fit the device, its parameters counted by `count`
    (the model file's own), else by GPT-2's formula where the CONFIG has every key of GPT2_KEYS;
    other models are checked once compiled (`check_arena`)."""
    if not all(isinstance(cfg.get(key), int) for key in GPT2_KEYS):
        return
    n_params = (count or parameters)(cfg)
    need = arena_lower_bound(cfg, n_params)
    if need > device_bytes:
        raise UserError(f"the model has {n_params:.3g} parameters and needs at least {_gb(need)} of arena, "
                        f"more than the {_gb(device_bytes)} of the largest device it targets (--device-memory)")


def check_arena(arena_bytes: int, device_bytes: int) -> None:
    if arena_bytes > device_bytes:
        raise UserError(f"the plan's arena is {_gb(arena_bytes)}, more than the {_gb(device_bytes)} of the largest "
                        f"device it targets (--device-memory): use a smaller model or batch")


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.4g} GB"
