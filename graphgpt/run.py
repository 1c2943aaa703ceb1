"""python -m graphgpt.run --plan compiled/ : train a compiled plan, save it, generate text."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import optim
from . import plan as plan_io
from .data import DataLoader, default_corpus, read_corpus
from .errors import UserError
from .runtime import make_backend
from .runtime.dist import check_same_plan, current_world
from .sample import generate
from .tokenizer import Tokenizer
from .train import MetricsLog, Progress, Trainer, save_weights


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m graphgpt.run", description=(
        "Train a compiled GPT-2 plan, then save its weights and generate text."))
    p.add_argument("--plan", type=Path, default=Path("compiled"), help="plan directory (default: compiled/)")
    p.add_argument("--data", type=Path, help="training text (default: graphgpt's own source files)")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and sampling")
    p.add_argument("--log", type=Path, metavar="FILE", help="write one JSON object per step here")
    p.add_argument("--save", type=Path, metavar="DIR",
                   help="save model.safetensors and the seed's trained_weights.bin here")
    p.add_argument("--generate", type=int, default=30, metavar="N", help="tokens to generate after training")
    p.add_argument("--prompt", help="generation prompt (default: the first block of the training data)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, as the seed")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    p.add_argument("--backend", choices=("auto", "numpy", "cuda"), default="auto")
    p.add_argument("--no-graph", action="store_true",
                   help="CUDA: run launches one by one instead of replaying a CUDA graph (debugging)")
    p.add_argument("--tf32", action="store_true", help="CUDA: TF32 tensor cores for the GEMMs")
    p.add_argument("--profile", action="store_true",
                   help="CUDA: after training, print each kernel's time per step against the device's ceilings")
    args = p.parse_args(argv)
    for name in ("steps", "generate", "top_k"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    world = current_world()
    try:
        return run(args, world)
    except UserError as e:
        prefix = f"rank {world.rank}: " if world.size > 1 else ""
        print(f"error: {prefix}{e}", file=sys.stderr, flush=True)
        if world.size > 1:
            world.abort(2)  # the other ranks would wait for this one forever
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def run(args, world) -> int:
    plan = plan_io.load(args.plan)
    check_same_plan(world, plan.digest)
    lead = world.rank == 0  # only rank 0 prints, logs, saves and generates
    say = print if lead else (lambda *a, **k: None)
    tokenizer = Tokenizer.from_json(plan.tokenizer)
    cfg = plan.config
    B, T = cfg["batch_size"], cfg["block_size"]
    if args.data:
        text, source = read_corpus(args.data), str(args.data)
    else:
        text, source = default_corpus()
    tokens = tokenizer.encode(text)
    if tokenizer.pad_id is not None:  # the plan was compiled from data shorter than a batch
        tokens = tokenizer.pad_to(tokens, B * T * world.size + 1)
    loader = DataLoader(tokens, B, T, world.rank, world.size)
    backend = make_backend(args.backend, plan, graph=not args.no_graph, tf32=args.tf32, world=world)
    if args.profile and backend.name != "cuda":
        raise UserError("--profile times CUDA kernels: it needs the CUDA backend (--backend cuda)")
    n_params = sum(int(np.prod(t["shape"])) for t in plan.params)
    ranks = f", {world.size} ranks: global batch {B * world.size} x {T}" if world.size > 1 else ""
    if world.size > 1:  # launchers report a dead process by pid: this names its rank
        pids = world.gather(os.getpid())
        say("ranks: " + ", ".join(f"{r}=pid {p}" for r, p in enumerate(pids)), flush=True)
    say(f"plan {args.plan} ({n_params / 1e6:.2f}M parameters, batch {B} x {T}{ranks}), backend {backend.name}, "
        f"data {source} ({len(tokens):,} tokens, vocabulary {len(tokenizer.vocab)})")

    trainer = Trainer(plan, backend, loader, seed=args.seed, world=world)
    progress, log = Progress(args.steps), MetricsLog(args.log if lead else None)
    start, losses = time.perf_counter(), []
    try:
        for m in trainer.steps(args.steps):
            losses.append(m["loss"])
            if lead:
                progress.update(m)
            log.write(m)
    finally:
        log.close()
    if losses:
        say(f"trained {len(losses)} steps in {time.perf_counter() - start:.1f} s: "
            f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    if args.profile and lead:
        from .runtime.profile import ceilings, format_profile, profile
        x, y = loader.next_batch()
        feeds = {"tokens": x, "targets": y, **{k: 0.0 for k in optim.scalar_inputs(plan.optimizer)}}
        print(format_profile(profile(backend, "train", feeds), ceilings(backend)))
    if args.save and lead:
        for path in save_weights(args.save, trainer.weights(), plan):
            print(f"saved {path}")
    if args.generate and lead:
        prompt = (tokenizer.encode(args.prompt, eos=False) if args.prompt is not None
                  else tokens[:min(256, len(tokens), T)])
        start = time.perf_counter()
        new = generate(backend, list(map(int, prompt)), args.generate, T, len(tokenizer.vocab),
                       tokenizer.eos_id, args.temperature, args.top_k, np.random.default_rng(args.seed))
        print(f"sample ({len(new)} tokens, {time.perf_counter() - start:.1f} s): {tokenizer.decode(new)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
