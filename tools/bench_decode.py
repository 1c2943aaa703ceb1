"""python tools/bench_decode.py --plan DIR: generation with key/value caches, graphgpt against PyTorch.

Every method continues one random prompt of --prompt tokens by --tokens more, greedily, for the
plan's sample_batch sequences at once, from graphgpt's initial weights (the same in every method):
  graphgpt kv cache    graphgpt.sample.generate: the generate program fills the caches from the
                       prompt, then one decode program per token (each replayed as a CUDA graph);
                       the next tokens are picked on the host
  graphgpt windowed    the same with --no-kv-cache: the whole window per token (--windowed)
  torch eager          tools/torch_gpt2.py with a static key/value cache, the next tokens picked
                       on the GPU
  torch.compile        the same decode step under torch.compile(mode="reduce-overhead"), which
                       replays it as a CUDA graph (--compile)
In the plan's type: bf16 plans run PyTorch under bf16 autocast with bf16 caches. Each method
generates once to warm up (kernel loading, graph capture, compilation), then --repeat times; the
table shows the median's tokens per second (sequences x new tokens / seconds, the prefill
included) and for how many tokens each method's sequences equal graphgpt's kv-cache ones (random
weights give nearly flat logits, where bf16's rounding soon picks another of near-equal tokens).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from graphgpt import literals, plan as plan_io  # noqa: E402
from graphgpt.errors import ArgumentParser, UserError, reported  # noqa: E402
from graphgpt.fsutil import atomic_write_text  # noqa: E402
from graphgpt.runtime import cuda_available, make_backend  # noqa: E402
from graphgpt.sample import generate  # noqa: E402
from graphgpt.train import init_params  # noqa: E402
from tools.bench import check_json_out  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="tools/bench_decode.py", description=(
        "Time greedy generation with key/value caches on the GPU: graphgpt's decode program "
        "against PyTorch with a static KV cache, eager and under torch.compile."))
    p.add_argument("--plan", type=Path, required=True, help="plan directory (tools/compile.py --out)")
    p.add_argument("--prompt", type=literals.integer, default=64, metavar="P", help="prompt tokens (default: 64)")
    p.add_argument("--tokens", type=literals.integer, default=256, metavar="N", help="new tokens per sequence (default: 256)")
    p.add_argument("--repeat", type=literals.integer, default=3, metavar="R", help="timed generations; the median is shown (default: 3)")
    p.add_argument("--windowed", action="store_true", help="also time graphgpt without the cache (slow)")
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True, help="time PyTorch too (default)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="of the PyTorch rows, also torch.compile's (default; it compiles for a minute or more)")
    p.add_argument("--json", type=Path, metavar="OUT",
                   help="write every number, the device and the command here: a new file or an earlier report of "
                        "this tool's")
    args = p.parse_args(argv)
    for name in ("prompt", "tokens", "repeat"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    check_json_out(args.json, "tools/bench_decode.py")
    return args


def time_runs(run, repeat: int) -> tuple[float, list[list[int]]]:
    """Median seconds of `repeat` runs after one untimed run, and the last run's tokens."""
    tokens = run()
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        tokens = run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), tokens


def graphgpt_runs(plan, weights: dict, prompt: list[int], n: int, windowed: bool):
    backend = make_backend("cuda", plan)
    for name, value in weights.items():
        backend.set_tensor(name, value)
    vocab = plan.config["vocab_size"]
    kinds = [("graphgpt kv cache", True)] + ([("graphgpt windowed", False)] if windowed else [])
    # eos_id -1: no sequence stops early, every method generates exactly n tokens
    return {label: (lambda kv=kv: generate(backend, prompt, n, vocab, -1, kv_cache=kv)) for label, kv in kinds}


def torch_runs(plan, weights: dict, prompt: list[int], n: int, compile_step: bool):
    import torch
    from tools.torch_gpt2 import GPT2, KvCache, decode_step, load_weights, prefill
    bf16 = plan.config.get("dtype") == "bf16"
    rows = plan.config["sample_batch"]
    model = GPT2.from_config(plan.config).cuda().eval()
    load_weights(model, {k: np.asarray(v, np.float32) for k, v in weights.items()})
    dtype = torch.bfloat16 if bf16 else torch.float32
    context = torch.tensor([prompt] * rows, device="cuda")
    positions = [torch.tensor(p, device="cuda") for p in range(len(prompt) + n)]  # no upload per token

    def make(step):
        def run():
            cache = KvCache(model, rows, dtype, "cuda")
            if step is not decode_step:  # the compiled step replays over fixed addresses
                for keys, values in cache.layers:
                    torch._dynamo.mark_static_address(keys)
                    torch._dynamo.mark_static_address(values)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                token = prefill(model, context, cache)[:, -1:].argmax(-1)
                out = [token]
                for p in range(len(prompt), len(prompt) + n - 1):
                    token = step(model, token, positions[p], cache)[:, -1:].argmax(-1)
                    out.append(token)
            return torch.cat(out, 1).cpu().tolist()
        return run
    runs = {"torch eager": make(decode_step)}
    if compile_step:
        runs["torch.compile"] = make(torch.compile(decode_step, mode="reduce-overhead"))
    return runs


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not cuda_available():
        raise UserError("tools/bench_decode.py needs an NVIDIA GPU with CuPy")
    plan = plan_io.load(args.plan)
    if "decode" not in plan.programs:
        raise UserError(f"{args.plan} has no decode program (its model does not decode with caches)")
    block, rows = plan.config["block_size"], plan.config["sample_batch"]
    if args.prompt + args.tokens > block:
        raise UserError(f"--prompt {args.prompt} + --tokens {args.tokens} exceed block_size {block}: "
                        "past it every method reruns the window")
    weights = init_params(plan, 0)
    prompt = np.random.default_rng(0).integers(0, plan.config["vocab_size"], args.prompt).tolist()
    runs = graphgpt_runs(plan, weights, prompt, args.tokens, args.windowed)
    if args.torch:
        runs |= torch_runs(plan, weights, prompt, args.tokens, args.compile)
    results, reference = {}, None
    for label, run in runs.items():
        print(f"{label} ...", file=sys.stderr, flush=True)
        try:
            seconds, tokens = time_runs(run, args.repeat)
        except Exception as e:  # a baseline that cannot run here is reported, not fatal
            results[label] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
            continue
        reference = reference or tokens
        differ = np.flatnonzero((np.array(tokens) != np.array(reference)).any(axis=0))
        results[label] = {"seconds": seconds, "tokens_per_s": rows * args.tokens / seconds,
                          "equal_tokens": int(differ[0]) if differ.size else args.tokens}
    print(f"generation: batch {rows}, prompt {args.prompt}, {args.tokens} new tokens, "
          f"{plan.config.get('dtype', 'f32')} (median of {args.repeat})")
    print(f"{'method':<20} {'tokens/s':>10} {'ms/token':>9} {'equal for':>10}")
    for label, r in results.items():
        if "error" in r:
            print(f"{label:<20} failed: {r['error']}")
        else:
            print(f"{label:<20} {r['tokens_per_s']:>10,.0f} {1e3 * r['seconds'] / args.tokens:>9.3f} {r['equal_tokens']:>10}")
    if args.json:
        import cupy
        atomic_write_text(args.json, json.dumps({
            "date": datetime.date.today().isoformat(), "device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
            "command": shlex.join(["python", "tools/bench_decode.py", *argv]), "plan": str(args.plan),
            "batch": rows, "prompt": args.prompt, "tokens": args.tokens, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(reported(main, sys.argv[1:]))
