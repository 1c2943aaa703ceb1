"""python tools/eval_table.py RUN.jsonl : the evaluations of a run's log as a table.

One row per evaluated step: the training loss of that step's batch, the mean loss on fixed random
windows of the training split (`train_loss`) and of the held-out split (`val_loss`). A model that
learns its training windows by position shows a training loss far below `train_loss`.
"""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

from graphgpt import runlog  # noqa: E402
from graphgpt.errors import ArgumentParser, reported  # noqa: E402
from graphgpt.monitor import GuardedStdout  # noqa: E402


def table(path: Path) -> None:
    log = runlog.read(path)
    rows = [r for r in log.records if "train_loss" in r]
    print(f"{'step':>6} {'batch loss':>10} {'train windows':>13} {'held out':>9}")
    for r in rows:
        batch = f"{r['loss']:.4f}" if "loss" in r else "-"
        val = f"{r['val_loss']:.4f}" if "val_loss" in r else "-"
        print(f"{r['step']:>6} {batch:>10} {r['train_loss']:>13.4f} {val:>9}")
    held = [r for r in rows if "val_loss" in r and math.isfinite(r["val_loss"])]
    if held:
        best = min(held, key=lambda r: r["val_loss"])
        print(f"best held-out loss {best['val_loss']:.4f} at step {best['step']}")
    elif not rows:
        print(f"no evaluations in {path} (graphgpt.run evaluates with --eval-every N or held-out data)")
    if log.cut_short:
        print(f"{path}: its last line was cut short (a run killed while writing it) and is left out")


def main(argv=None) -> int:
    sys.stdout = GuardedStdout(sys.stdout)
    p = ArgumentParser(prog="tools/eval_table.py", description=(
        "Show the evaluations in a run's JSONL log (graphgpt.run --log, tools/recipe_torch.py --log) as a "
        "table: each evaluated step's batch loss, loss on training windows and held-out loss, and the best."))
    p.add_argument("log", type=Path, metavar="RUN.jsonl", help="the run's log")
    args = p.parse_args(argv)
    return reported(table, args.log)


if __name__ == "__main__":
    sys.exit(main())
