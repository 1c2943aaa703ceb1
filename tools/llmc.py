"""llm.c's GPT-2 trainer (train_gpt2cu) as a row of tools/bench.py's table.

`tools/bench.py --plan DIR --llmc BINARY` runs a built `train_gpt2cu` on the plan's GPT-2: llm.c
builds the model from its depth alone (`-e d12`: 12 layers, 768 wide, 12 heads; d24, d36, d48 the
larger GPT-2s), always in bf16 with a tied lm_head and GPT-2's vocabulary padded to 50304, from
random weights, on random tokens this module writes in llm.c's token-file format. Its per-step
lines give the milliseconds of each step; the steps after the warm-up are the row's, as bench's
own timed blocks are. Memory: the device memory llm.c reports in use after allocating everything.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from graphgpt.errors import UserError

SHAPES = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25)}  # depth: (width, heads)
VOCAB, GPT2_TOKENS = 50304, 50257
MAGIC, VERSION = 20240520, 1   # llm.c's token file header
STEP = re.compile(r"^step\s+\d+/\d+ \| loss ([0-9.]+) .*\| ([0-9.]+) ms \|", re.M)
MEMORY = re.compile(r"device memory usage: (\d+) MiB")


def check(plan, binary: Path) -> None:
    """One line for a plan llm.c cannot train, or a binary that is not one, before any work."""
    cfg = plan.config
    names = {t["name"] for t in plan.params}
    shape = SHAPES.get(cfg.get("n_layer"))
    if not {"wte", "wpe"} <= names or shape != (cfg.get("n_embd"), cfg.get("n_head")):
        raise UserError(f"--llmc: llm.c trains GPT-2 of depth {'/'.join(map(str, SHAPES))} with its own width and "
                        f"heads ({', '.join(f'd{d}: {w} wide, {h} heads' for d, (w, h) in SHAPES.items())}); "
                        f"the plan is not one of them")
    for key, want in (("vocab_size", VOCAB), ("tie_weights", 1), ("dtype", "bf16"), ("dropout", 0.0)):
        if cfg.get(key, 0.0 if key == "dropout" else None) != want:
            raise UserError(f"--llmc: llm.c trains with {key}={want}; the plan has {key}={cfg.get(key)}")
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise UserError(f"--llmc {binary}: not an executable file (build llm.c's train_gpt2cu)")


def write_tokens(path: Path, n: int, seed: int) -> None:
    header = np.zeros(256, np.int32)
    header[:3] = MAGIC, VERSION, n
    tokens = np.random.default_rng(seed).integers(0, GPT2_TOKENS, n, dtype=np.uint16)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())


def run(plan, binary: Path, steps: int, warmup: int) -> tuple[list[float], int, float, str]:
    """Train `warmup + steps` steps; returns the ms of each step after the warm-up, the device
    bytes in use, the last step's loss and llm.c's output."""
    cfg = plan.config
    B, T = cfg["batch_size"], cfg["block_size"]
    with tempfile.TemporaryDirectory(prefix="graphgpt-llmc-") as tmp:
        train, val = Path(tmp) / "train.bin", Path(tmp) / "val.bin"
        write_tokens(train, B * T * (warmup + steps + 1) + 1, 0)
        write_tokens(val, B * T + 1, 1)
        done = subprocess.run(
            [str(binary.resolve()), "-i", str(train), "-j", str(val), "-e", f"d{cfg['n_layer']}", "-b", str(B),
             "-t", str(T), "-d", str(B * T), "-x", str(warmup + steps), "-v", "1000000", "-s", "1000000",
             "-h", "0"], cwd=binary.resolve().parent, capture_output=True, text=True)
    out = done.stdout + done.stderr
    found = STEP.findall(out)
    if done.returncode != 0 or len(found) < warmup + steps:
        tail = " | ".join(out.strip().splitlines()[-3:])
        raise UserError(f"--llmc {binary}: exit status {done.returncode}, {len(found)} of {warmup + steps} steps: {tail}")
    memory = MEMORY.search(out)
    return [float(ms) for _, ms in found[warmup:]], int(memory.group(1)) << 20 if memory else 0, float(found[-1][0]), out
