"""Text generation with the plan's "generate" and "decode" programs, and `python -m graphgpt.sample`.

Greedy as the seed, or sampled (temperature, top-k, top-p), for the plan's sample_batch sequences
at once, all continuing the same prompt. The programs have static shapes. "generate" computes a
whole window (sample_batch x block_size; a shorter one is padded on the right, and causal attention
keeps the padding from influencing the positions that are read) and fills the key/value caches on
the way; "decode" then computes one new position per sequence against them, so each further token
costs one position's work instead of a window's. A plan that computes in bf16 reads the weights'
bf16 copies, which the backend keeps current. Learned positions cannot slide: once a sequence
outgrows block_size, every token reruns the window of the last block_size tokens (as the seed's
generator always does, and as --no-kv-cache does from the start).

`python -m graphgpt.sample --plan DIR --init-from PATH` generates from a checkpoint, a
.safetensors file or a Hugging Face GPT-2 or LLaMA directory, with no training.
"""
from __future__ import annotations

import math
import sys
import time

import argparse

import numpy as np

from . import literals
from .schedule import DECODE_POSITION, NEXT_TOKEN


def generate(backend, prompt: list[int], n_new: int, vocab_in_use: int, eos_id: int,
             temperature: float = 0.0, top_k: int = 0, rng: np.random.Generator | None = None,
             top_p: float = 1.0, kv_cache: bool = True) -> list[list[int]]:
    """Up to n_new token ids following `prompt`, for each of the plan's sample_batch sequences; a
    sequence stops after its EOS. kv_cache: decode against the caches where the plan has a decode
    program (else every token reruns the window)."""
    plan = backend.plan
    rows, block = plan.program("generate").inputs["tokens"].shape
    decode = kv_cache and "decode" in plan.programs
    fetch = (NEXT_TOKEN,) if temperature <= 0 else ("logits",)  # greedy: the programs' own choice
    ids = np.array([list(prompt) or [eos_id]] * rows, np.int32)
    new: list[list[int]] = [[] for _ in range(rows)]
    done = np.zeros(rows, bool)
    cached = 0  # positions of the sequences the caches hold
    window = np.zeros((rows, block), np.int32)
    for _ in range(n_new):
        length = ids.shape[1]
        if decode and 0 < cached == length - 1 < block:  # the caches hold all but the newest token
            out = backend.run("decode", {"tokens": ids[:, -1:], DECODE_POSITION: length - 1}, fetch)
            last = 0
            cached = length
        else:
            context = ids[:, -block:]
            window[:, :context.shape[1]] = context
            window[:, context.shape[1]:] = 0
            out = backend.run("generate", {"tokens": window}, fetch)
            last = context.shape[1] - 1
            cached = length if length <= block else 0  # a slid window's positions are not the sequence's
        if temperature <= 0:
            tokens = out[NEXT_TOKEN][:, last]
        else:
            tokens = np.array([pick(row[:vocab_in_use].astype(np.float64), temperature, top_k, rng, top_p)
                               for row in out["logits"][:, last]], np.int32)
        for r in np.flatnonzero(~done):
            new[r].append(int(tokens[r]))
        done |= tokens == eos_id
        ids = np.concatenate([ids, tokens[:, None]], axis=1)
        if done.all():
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
    group.add_argument("--temperature", type=literals.number, default=0.0, help="0 = greedy, as the seed (default)")
    group.add_argument("--top-k", type=literals.integer, default=0, help="sample from the k most likely tokens (0 = all)")
    group.add_argument("--top-p", type=literals.number, default=1.0,
                       help="sample from the fewest most likely tokens whose probabilities reach p (1 = all)")
    group.add_argument("--kv-cache", action=argparse.BooleanOptionalAction, default=True,
                       help="decode one position per token against key/value caches (default); "
                            "--no-kv-cache reruns the whole window for every token")


def check_sampling_arguments(p, args) -> None:
    """One line and exit status 2 (p.error) for a sampling setting out of range."""
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        p.error(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_k < 0:
        p.error(f"--top-k must not be negative, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        p.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature == 0 and (args.top_k or args.top_p < 1):
        p.error(f"--{'top-k' if args.top_k else 'top-p'} narrows sampling, which --temperature T > 0 turns on "
                "(the default, 0, is greedy)")


def parse_args(argv):
    from .errors import ArgumentParser
    p = ArgumentParser(prog="python -m graphgpt.sample", description=(
        "Generate text from a plan's weights, with no training: greedy, or sampled with temperature, "
        "top-k and top-p."))
    p.add_argument("--plan", required=True, help="the compiled plan (its generate program and tokenizer)")
    p.add_argument("--init-from", required=True, metavar="PATH",
                   help="the weights: a checkpoint (or a directory of them), a .safetensors file, or a "
                        "Hugging Face GPT-2 or LLaMA directory")
    p.add_argument("--prompt", default="", help="the text to continue (default: none, start after end-of-text)")
    p.add_argument("--tokens", type=literals.integer, default=100, metavar="N", help="tokens to generate (default 100)")
    p.add_argument("--samples", type=literals.integer, default=1, metavar="K",
                   help="independent samples (default 1), computed the plan's sample_batch at a time")
    add_sampling_arguments(p)
    p.add_argument("--seed", type=literals.integer, default=0, help="seed of the sampling (default 0)")
    p.add_argument("--backend", choices=("auto", "numpy", "cuda"), default="auto")
    args = p.parse_args(argv)
    for name in ("tokens", "samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.seed < 0:
        p.error(f"--seed must not be negative, got {args.seed}")
    check_sampling_arguments(p, args)
    return args


def main(argv=None) -> int:
    from . import plan as plan_io
    from .checkpoint import describe_weights, initial_weights
    from .errors import REFUSALS, in_words
    from .runtime import make_backend
    from .monitor import GuardedStdout
    from .tokenizer import Tokenizer, encode_prompt
    args = parse_args(argv)
    sys.stdout = GuardedStdout(sys.stdout)  # `| head -1` ends the reading, not the tool with a traceback
    try:
        plan = plan_io.load(args.plan)
        tokenizer = Tokenizer.from_json(plan.tokenizer)
        prompt = encode_prompt(tokenizer, args.prompt).tolist()
        weights = initial_weights(args.init_from, plan)
        print(describe_weights(args.init_from, weights), flush=True)
        backend = make_backend(args.backend, plan)
        for name, value in weights.items():
            backend.set_tensor(name, value)
        rng = np.random.default_rng(args.seed)
        done = 0
        while done < args.samples and not sys.stdout.broken:  # no more samples once nobody reads
            clock = time.perf_counter()
            batch = generate(backend, prompt, args.tokens, len(tokenizer.vocab), tokenizer.eos_id,
                             args.temperature, args.top_k, rng, args.top_p, args.kv_cache)
            rate = sum(map(len, batch)) / (time.perf_counter() - clock)
            for new in batch[:args.samples - done]:
                done += 1
                print(f"sample {done} ({len(new)} tokens, {rate:.1f} tokens/s over {len(batch)} sequences): "
                      f"{tokenizer.decode(prompt + new)}", flush=True)
    except REFUSALS as e:
        print(f"error: {in_words(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
