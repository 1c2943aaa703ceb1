"""Text generation with the plan's "generate" program, and `python -m graphgpt.sample`.

Greedy as the seed, or sampled (temperature, top-k, top-p). The program has a static shape
(1 x block_size). A window shorter than the block is padded on the right; causal attention keeps
the padding from influencing the positions that are read.

`python -m graphgpt.sample --plan DIR --init-from PATH` generates from a checkpoint, a
.safetensors file or a Hugging Face GPT-2 directory, with no training.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np


def generate(backend, prompt: list[int], n_new: int, block_size: int, vocab_in_use: int, eos_id: int,
             temperature: float = 0.0, top_k: int = 0, rng: np.random.Generator | None = None,
             top_p: float = 1.0) -> list[int]:
    """Up to n_new token ids following `prompt`; stops after EOS."""
    ids = list(prompt) or [eos_id]
    new: list[int] = []
    window = np.zeros((1, block_size), np.int32)
    for _ in range(n_new):
        context = ids[-block_size:]
        window[0, :len(context)] = context
        window[0, len(context):] = 0
        logits = backend.run("generate", {"tokens": window})["logits"][0, len(context) - 1]
        token = pick(logits[:vocab_in_use].astype(np.float64), temperature, top_k, rng, top_p)
        ids.append(token)
        new.append(token)
        if token == eos_id:
            break
    return new


def pick(logits: np.ndarray, temperature: float, top_k: int, rng, top_p: float = 1.0) -> int:
    """The next token: the most likely at temperature 0, else drawn from softmax(logits /
    temperature) restricted to the top_k most likely (0: all) and then to the fewest most likely
    whose probabilities reach top_p (1: all)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    logits = logits / temperature
    if 0 < top_k < logits.size:
        cutoff = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < cutoff, -np.inf, logits)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        n = int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1  # the first n reach top_p
        p[order[n:]] = 0.0
        p /= p.sum()
    return int(rng.choice(logits.size, p=p))


def add_sampling_arguments(group) -> None:
    """--temperature, --top-k and --top-p, for every command that generates."""
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, as the seed (default)")
    group.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    group.add_argument("--top-p", type=float, default=1.0,
                       help="sample from the fewest most likely tokens whose probabilities reach p (1 = all)")


def check_sampling_arguments(p, args) -> None:
    """One line and exit status 2 (p.error) for a sampling setting out of range."""
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        p.error(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_k < 0:
        p.error(f"--top-k must not be negative, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        p.error(f"--top-p must be in (0, 1], got {args.top_p}")


def parse_args(argv):
    from .errors import ArgumentParser
    p = ArgumentParser(prog="python -m graphgpt.sample", description=(
        "Generate text from a plan's weights, with no training: greedy, or sampled with temperature, "
        "top-k and top-p."))
    p.add_argument("--plan", required=True, help="the compiled plan (its generate program and tokenizer)")
    p.add_argument("--init-from", required=True, metavar="PATH",
                   help="the weights: a checkpoint (or a directory of them), a .safetensors file, or a "
                        "Hugging Face GPT-2 directory")
    p.add_argument("--prompt", default="", help="the text to continue (default: none, start after end-of-text)")
    p.add_argument("--tokens", type=int, default=100, metavar="N", help="tokens to generate (default 100)")
    p.add_argument("--samples", type=int, default=1, metavar="K", help="independent samples (default 1)")
    add_sampling_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    p.add_argument("--backend", choices=("auto", "numpy", "cuda"), default="auto")
    args = p.parse_args(argv)
    for name in ("tokens", "samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    check_sampling_arguments(p, args)
    return args


def main(argv=None) -> int:
    from . import plan as plan_io
    from .checkpoint import initial_weights
    from .errors import UserError
    from .runtime import make_backend
    from .tokenizer import Tokenizer
    args = parse_args(argv)
    try:
        plan = plan_io.load(args.plan)
        tokenizer = Tokenizer.from_json(plan.tokenizer)
        prompt = tokenizer.encode(args.prompt, eos=False, source="--prompt").tolist()
        weights = initial_weights(args.init_from, plan)
        backend = make_backend(args.backend, plan)
        for name, value in weights.items():
            backend.set_tensor(name, value)
        rng = np.random.default_rng(args.seed)
        for k in range(args.samples):
            clock = time.perf_counter()
            new = generate(backend, prompt, args.tokens, plan.config["block_size"], len(tokenizer.vocab),
                           tokenizer.eos_id, args.temperature, args.top_k, rng, args.top_p)
            seconds = time.perf_counter() - clock
            print(f"sample {k + 1} ({len(new)} tokens, {len(new) / seconds:.1f} tokens/s): "
                  f"{tokenizer.decode(prompt + new)}", flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
