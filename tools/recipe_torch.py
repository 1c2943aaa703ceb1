"""python tools/recipe_torch.py --plan DIR --data TEXT: a plan's training run, in PyTorch.

What `python -m graphgpt.run --plan DIR --data TEXT --val-fraction F` trains, trained instead by
tools/torch_gpt2.py's model (torch.compile, the plan's precision under autocast) and
torch.optim.AdamW (or Adam for optimizer=adam): the same weights to start from (graphgpt's
initialisation, seed --seed), the same held-out split, the same random training windows, the
plan's learning-rate schedule (decaying over --steps, as graphgpt.run's does by default), betas,
eps, weight decay (tensors of rank >= 2) and gradient clipping, and dropout where the plan's
model drops. Every --eval-every steps (and at the last) it
scores the mean loss over the same fixed random windows of each split as graphgpt's evaluation
does (and before the first step), and writes graphgpt's log records (JSONL: step, loss, train_loss, val_loss), so
tools/eval_table.py shows both runs alike.

This is the reference a graphgpt run's held-out loss is held against: nanoGPT's recipe, run by
PyTorch on the same text. It prints the best held-out loss and the median ms a step between
evaluations (the first interval, which compiles, left out).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from graphgpt import literals, plan as plan_io  # noqa: E402
from graphgpt.data import EVAL_STREAMS, RandomSampler, load_dataset, make_sampler, split_heldout  # noqa: E402
from graphgpt.errors import ArgumentParser, UserError, reported  # noqa: E402
from graphgpt.monitor import MetricsLog, log_header, new_run_id  # noqa: E402
from graphgpt.tokenizer import Tokenizer  # noqa: E402
from graphgpt.train import init_params  # noqa: E402


def parse_args(argv: list[str]):
    p = ArgumentParser(prog="tools/recipe_torch.py", description=(
        "Train a compiled plan's model on a text with PyTorch (torch.compile, AdamW, the plan's schedule), "
        "evaluating on a held-out split as graphgpt.run does."))
    p.add_argument("--plan", type=Path, required=True, help="a compiled plan directory (tools/compile.py)")
    p.add_argument("--data", type=Path, required=True,
                   help="the text, token file or prepared directory graphgpt.run trains on")
    p.add_argument("--val-fraction", type=literals.number,
                   help="the held-out tail of the data (default: a prepared directory's val.bin, else 0.1)")
    p.add_argument("--steps", type=literals.integer, default=5000, help="training steps (default 5000)")
    p.add_argument("--eval-every", type=literals.integer, default=250, help="steps between evaluations (default 250)")
    p.add_argument("--eval-batches", type=literals.integer, default=200, help="batches of fixed windows per split (default 200)")
    p.add_argument("--seed", type=literals.integer, default=0, help="initial weights and windows, as graphgpt.run's --seed")
    p.add_argument("--log", type=Path, help="write the evaluations here, as graphgpt.run's --log (JSONL)")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when PyTorch sees a GPU")
    p.add_argument("--no-compile", action="store_true", help="eager PyTorch instead of torch.compile")
    args = p.parse_args(argv)
    for name in ("steps", "eval_every", "eval_batches"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.val_fraction is not None and not 0.0 < args.val_fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1 (a held-out split to score), got {args.val_fraction}")
    return args


def main(argv: list[str] | None = None) -> int:
    return reported(lambda: train(parse_args(sys.argv[1:] if argv is None else argv)))


def train(args) -> int:
    plan = plan_io.load(args.plan)
    cfg = plan.config
    opt = {**plan.optimizer, "decay_steps": args.steps}  # graphgpt.run's default: the rate reaches min_lr at the end
    if opt["grad_accum"] != 1:
        raise UserError(f"the plan accumulates {opt['grad_accum']} micro-batches a step; this tool trains one a step")
    log = MetricsLog(args.log)
    log.check(resuming=False)
    try:
        import torch
        from torch_gpt2 import GPT2, load_weights, make_optimizer, use_precision
    except ImportError:
        raise UserError("tools/recipe_torch.py trains with PyTorch: install torch") from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: PyTorch sees no GPU")
    tokenizer = Tokenizer.from_json(plan.tokenizer)
    train_tokens, val_tokens, source = load_dataset(args.data, tokenizer, cfg["vocab_size"])
    if val_tokens is None or args.val_fraction is not None:  # as graphgpt.run splits it
        train_tokens, val_tokens = split_heldout(train_tokens, args.val_fraction or 0.1)
    B, T = cfg["batch_size"], cfg["block_size"]
    for name, split in (("training", train_tokens), ("held-out", val_tokens)):
        if len(split) < T + 1:
            raise UserError(f"the {name} data has {len(split)} tokens; one window needs block_size + 1 = {T + 1}")
    sampler = make_sampler("random", train_tokens, B, T, 0, 1, args.seed)

    torch.manual_seed(args.seed)  # dropout's masks
    model = GPT2.from_config(cfg).to(device)
    load_weights(model, init_params(plan, args.seed))
    autocast = use_precision("bf16" if cfg.get("dtype") == "bf16" else "fp32")
    step_fn = model if args.no_compile else torch.compile(model)
    optimizer = make_optimizer(model, "torch", opt)  # torch.optim.AdamW (or Adam), fused on the GPU

    def loss_of(x: np.ndarray, y: np.ndarray):
        with torch.autocast(device_type=device, dtype=autocast or torch.float32, enabled=autocast is not None):
            return step_fn(torch.from_numpy(x).to(device, torch.long), torch.from_numpy(y).to(device, torch.long))

    @torch.no_grad()
    def scores() -> dict[str, float]:
        model.eval()
        out = {}
        for name, split in (("train", train_tokens), ("val", val_tokens)):
            windows = RandomSampler(split, B, T, 0, 1, seed=args.seed, stream=EVAL_STREAMS[name])
            out[f"{name}_loss"] = float(np.mean([loss_of(*windows.next_batch()).item()
                                                 for _ in range(args.eval_batches)]))
        model.train()
        return out

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    print(f"tools/recipe_torch.py: {plan.data['model_file']} in PyTorch on {device}"
          f" ({'eager' if args.no_compile else 'torch.compile'}, {cfg.get('dtype', 'f32')}), "
          f"{opt['optimizer']}, {args.steps} steps of {B} x {T} from {source}", flush=True)
    log.open(log_header(new_run_id(), plan.digest, seed=args.seed, tool="tools/recipe_torch.py"))
    first = {"step": 0, **scores()}  # before the first step, as graphgpt.run evaluates
    log.write(first)
    print(f"step      0 | train {first['train_loss']:.4f} | val {first['val_loss']:.4f}", flush=True)
    model.train()
    best, intervals, started = {"val_loss": first["val_loss"], "step": 0}, [], time.perf_counter()
    interval_start, interval_steps = started, 0
    for step in range(1, args.steps + 1):
        loss = loss_of(*sampler.next_batch())
        loss.backward()
        optimizer.step()  # clips, then updates at the schedule's learning rate for this step
        optimizer.zero_grad()
        interval_steps += 1
        if step % args.eval_every and step != args.steps:
            continue
        sync()
        intervals.append((time.perf_counter() - interval_start) * 1e3 / interval_steps)
        record = {"step": step, "loss": float(loss.item()), **scores()}
        log.write(record)
        if record["val_loss"] < best["val_loss"]:
            best = {"val_loss": record["val_loss"], "step": step}
        print(f"step {step:>6} | loss {record['loss']:.4f} | train {record['train_loss']:.4f} | "
              f"val {record['val_loss']:.4f} | {intervals[-1]:.2f} ms/step", flush=True)
        interval_start, interval_steps = time.perf_counter(), 0
    log.close()
    timed = intervals[1:] or intervals
    print(f"best val loss {best['val_loss']:.4f} at step {best['step']}; {statistics.median(timed):.2f} ms/step "
          f"(median over {len(timed)} interval(s) between evaluations"
          f"{', the first left out' if len(intervals) > 1 else ''}); {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
