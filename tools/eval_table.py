"""python tools/eval_table.py RUN.jsonl : the evaluations of a run's log as a table.

One row per evaluated step: the training loss of that step's batch, the mean loss on fixed random
windows of the training split (`train_loss`) and of the held-out split (`val_loss`). A model that
learns its training windows by position shows a training loss far below `train_loss`.
"""
import json
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python tools/eval_table.py RUN.jsonl", file=sys.stderr)
        return 2
    try:
        lines = open(argv[0]).read().splitlines()
    except OSError as e:
        print(f"error: cannot read {argv[0]}: {e.strerror or e}", file=sys.stderr)
        return 2
    rows = [r for r in map(json.loads, lines) if "train_loss" in r]
    print(f"{'step':>6} {'batch loss':>10} {'train windows':>13} {'held out':>9}")
    for r in rows:
        batch = f"{r['loss']:.4f}" if "loss" in r else "-"
        val = f"{r['val_loss']:.4f}" if "val_loss" in r else "-"
        print(f"{r['step']:>6} {batch:>10} {r['train_loss']:>13.4f} {val:>9}")
    held = [r for r in rows if "val_loss" in r]
    if held:
        best = min(held, key=lambda r: r["val_loss"])
        print(f"best held-out loss {best['val_loss']:.4f} at step {best['step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
