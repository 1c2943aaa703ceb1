"""Text generation with the plan's "generate" program: greedy as the seed, or sampled.

The program has a static shape (1 x block_size). A window shorter than the block is padded on
the right; causal attention keeps the padding from influencing the positions that are read.
"""
from __future__ import annotations

import numpy as np


def generate(backend, prompt: list[int], n_new: int, block_size: int, vocab_in_use: int, eos_id: int,
             temperature: float = 0.0, top_k: int = 0, rng: np.random.Generator | None = None) -> list[int]:
    """Up to n_new token ids following `prompt`; stops after EOS."""
    ids = list(prompt) or [eos_id]
    new: list[int] = []
    window = np.zeros((1, block_size), np.int32)
    for _ in range(n_new):
        context = ids[-block_size:]
        window[0, :len(context)] = context
        window[0, len(context):] = 0
        logits = backend.run("generate", {"tokens": window})["logits"][0, len(context) - 1]
        token = pick(logits[:vocab_in_use].astype(np.float64), temperature, top_k, rng)
        ids.append(token)
        new.append(token)
        if token == eos_id:
            break
    return new


def pick(logits: np.ndarray, temperature: float, top_k: int, rng) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    logits = logits / temperature
    if 0 < top_k < logits.size:
        cutoff = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < cutoff, -np.inf, logits)
    p = np.exp(logits - logits.max())
    return int(rng.choice(logits.size, p=p / p.sum()))
