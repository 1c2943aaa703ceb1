"""python tools/quickstart.py [--out DIR]: compile a GPT-2, train it with a held-out tenth, sample.

The model is model.py and the text graphgpt's own source (what `graphgpt.run` trains on without
--data), read character by character (the printable-ASCII vocabulary a plan compiled without
--data has). On a GPU (CuPy) it trains model.py's 10.8M parameters, with dropout 0.2 (1000 steps,
half a minute on an H100); on the CPU, where the NumPy backend runs it, a small version of it (2
layers, 128 wide, 64 characters of context) that trains in about a minute on two cores. Both
train with AdamW, warmup and a cosine decay, evaluate on the last tenth of the text as they go,
and generate a sample at the end.

Nothing is hidden: the two commands it runs (tools/compile.py and python -m graphgpt.run) are
printed before they run, with every setting, to be run and changed by hand. The compile report
goes to DIR/plan/report.txt, with one line on screen; DIR/log-N.jsonl holds the run's records
(N counts the quick starts run into DIR).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

from graphgpt import literals, plan as plan_io  # noqa: E402
from graphgpt.errors import ArgumentParser, reported  # noqa: E402
from graphgpt.monitor import GuardedStdout  # noqa: E402
from graphgpt.runtime import cuda_available  # noqa: E402

# What each machine trains: the compile's settings (the model's size and the update's constants)
# and the run's (its length and learning-rate schedule).
# On a GPU the full model learns the source by heart within 1000 steps unless dropout holds it back
# (its held-out loss turned up after 750 steps without).
SMALL_MODEL = ["n_layer=2", "n_head=4", "n_embd=128", "block_size=64", "batch_size=16"]
FULL_MODEL = ["dropout=0.2"]
UPDATE = ["optimizer=adamw", "beta2=0.99", "weight_decay=0.1"]
CPU_RUN = dict(steps=800, eval_every=100, lr=2e-3, warmup=20)
GPU_RUN = dict(steps=1000, eval_every=100, lr=1e-3, warmup=100)


def parse_args(argv):
    p = ArgumentParser(prog="tools/quickstart.py", description=(
        "Compile model.py (a small version of it on the CPU), train it on graphgpt's own source with a "
        "held-out tenth, print the held-out loss as it falls and a sample."))
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), metavar="DIR",
                   help="where the plan and the logs go (default: runs/quickstart/)")
    p.add_argument("--backend", choices=("auto", "numpy", "cuda"), default="auto",
                   help="auto: the GPU when CuPy sees one (the full model), else NumPy (the small one)")
    p.add_argument("--steps", type=literals.integer, metavar="N", help="training steps (default: 800 on the CPU, 1000 on a GPU)")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    if args.backend == "cuda":  # before the compile, which would otherwise be done for nothing
        p.require_gpu("--backend cuda trains on one")
    return args


def main(argv=None) -> int:
    sys.stdout = GuardedStdout(sys.stdout)
    return reported(quickstart, parse_args(sys.argv[1:] if argv is None else argv))


def quickstart(args) -> int:
    gpu = args.backend == "cuda" or (args.backend == "auto" and cuda_available())
    backend = "cuda" if gpu else "numpy"
    settings = dict(GPU_RUN if gpu else CPU_RUN)
    steps = args.steps or settings["steps"]
    plan, log = args.out / "plan", _new_log(args.out)

    sets = [word for pair in (FULL_MODEL if gpu else SMALL_MODEL) + UPDATE for word in ("--set", pair)]
    compile_cmd = [sys.executable, str(ROOT / "tools" / "compile.py"), str(ROOT / "model.py"), "--out", str(plan), *sets]
    run_cmd = [sys.executable, "-m", "graphgpt.run", "--plan", str(plan), "--backend", backend,
               "--val-fraction", "0.1", "--steps", str(steps), "--eval-every", str(min(settings["eval_every"], steps)),
               "--eval-batches", "10", "--lr", str(settings["lr"]), "--min-lr", str(settings["lr"] / 10),
               "--lr-schedule", "cosine", "--warmup-steps", str(min(settings["warmup"], steps - 1)),
               "--log", str(log), "--generate", "300", "--temperature", "0.8", "--top-k", "20", "--prompt", "def "]

    print(f"$ {_shown(compile_cmd)}", flush=True)
    clock = time.perf_counter()
    compiled = subprocess.run(compile_cmd, capture_output=True, text=True)
    if compiled.returncode != 0:
        sys.stderr.write(compiled.stderr)
        return compiled.returncode
    print(_summary(plan, time.perf_counter() - clock), flush=True)

    # On the CPU, one BLAS thread: the small model's matrices gain little from a second, and on a
    # machine busy with other work two threads ran its steps 2 to 5 times slower than one.
    threads = {} if gpu else {"OMP_NUM_THREADS": "1"}
    print(f"$ {''.join(f'{k}={v} ' for k, v in threads.items())}{_shown(run_cmd)}", flush=True)
    # this checkout's graphgpt, installed or not
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **threads)
    trained = subprocess.run(run_cmd, env=env)
    if trained.returncode != 0:
        return trained.returncode
    print(_curve(log))
    print("next: the README's nanoGPT-style recipe (Training) trains a character model for 5000 steps")
    return 0


def _new_log(out: Path) -> Path:
    """DIR/log-N.jsonl, the first N free: a quick start run again keeps the earlier runs' logs (its
    plan, which tools/compile.py writes whole, is compiled again)."""
    n = 1
    while os.path.lexists(out / f"log-{n}.jsonl"):
        n += 1
    return out / f"log-{n}.jsonl"


def _shown(cmd: list[str]) -> str:
    """A command as one would type it: `python` for this interpreter, paths from here."""
    here = Path.cwd()
    words = ["python" if word == sys.executable
             else str(Path(word).relative_to(here)) if Path(word).is_absolute() and Path(word).is_relative_to(here)
             else word for word in cmd]
    return " ".join(shlex.quote(w) for w in words)


def _summary(plan_dir: Path, seconds: float) -> str:
    plan = plan_io.load(plan_dir)
    cfg = plan.config
    n_params = sum(math.prod(t["shape"]) for t in plan.params)
    return (f"compiled model.py in {seconds:.1f} s: {cfg['n_layer']} layers, {cfg['n_embd']} wide, "
            f"{cfg['block_size']} characters of context, {n_params / 1e6:.2f}M parameters; "
            f"report in {plan_dir / 'report.txt'}")


def _curve(log: Path) -> str:
    """The held-out loss at each evaluation, from the run's log."""
    points = [(r["step"], r["val_loss"]) for r in map(json.loads, log.read_text().splitlines()) if "val_loss" in r]
    return "held-out loss: " + ", ".join(f"{loss:.2f} (step {step})" for step, loss in points)


if __name__ == "__main__":
    sys.exit(main())
