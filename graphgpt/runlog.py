"""Reading a run's JSONL log (what `--log` and tools/recipe_torch.py write) for the tools that
show it: tools/plot.py and tools/eval_table.py.

A log is one JSON object per line. Records with a `step` are the run's; a record without one (the
header a log may open with, `{"graphgpt_log": ...}`) describes the run and is kept apart. A last
line without its newline was being written when the run was killed: it is left out and counted,
so a crashed run's log still reads. Anything else that is not such a log is one line naming the
file and line.
"""
from __future__ import annotations

import json
import math
import stat
from dataclasses import dataclass, field
from pathlib import Path

from . import jsontext
from .errors import UserError

HEADER = "graphgpt_log"  # the key of a log's header record
METRICS = ("loss", "lr", "grad_norm", "ms", "tokens_per_s", "train_loss", "val_loss")
MAX_STEP = 2 ** 53  # past it, floats no longer tell steps apart: no run gets there


@dataclass
class RunLog:
    path: Path
    header: dict = field(default_factory=dict)  # the header record, when the log has one
    records: list[dict] = field(default_factory=list)  # the step records, in the file's order
    cut_short: bool = False  # the last line was cut short and is left out

    def values(self, metric: str, x: str = "step") -> tuple[list[float], list[float]]:
        """(x, value) of every record that has `metric`; x is `step` or `seconds` (wall_seconds)."""
        xs = self.wall_seconds() if x == "seconds" else [r["step"] for r in self.records]
        pairs = [(t, r[metric]) for t, r in zip(xs, self.records) if metric in r]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def wall_seconds(self) -> list[float]:
        """Each record's training time since the first step: the sum of its and the earlier
        records' step times (`ms`); an evaluation-only record adds nothing."""
        total, out = 0.0, []
        for r in self.records:
            ms = r.get("ms", 0.0)
            total += ms if math.isfinite(ms) else 0.0
            out.append(total / 1e3)
        return out

    def has(self, metric: str) -> bool:
        return any(metric in r for r in self.records)


def read(path: str | Path) -> RunLog:
    """The log at `path`, checked: a regular UTF-8 file of JSON objects, with at least one step
    record, whose steps are whole numbers up to MAX_STEP and whose metrics are numbers, read as floats."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{path} is {'a directory' if stat.S_ISDIR(mode) else 'not a regular file'}, not a run's log")
    log = RunLog(path)
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                record = _parse(path, number, line)
                if record is None:
                    log.cut_short = True
                elif "step" in record:
                    log.records.append(record)
                elif HEADER in record and not log.records:
                    log.header = record
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text, not a run's log") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if not log.records:
        raise UserError(f"{path} has no records with a step: not a run's log")
    return log


def _parse(path: Path, number: int, line: str) -> dict | None:
    """The record on line `number`; None for a last line cut short."""
    where = f"{path}:{number}"
    try:
        record = jsontext.loads(line)
    except json.JSONDecodeError as e:
        if not line.endswith("\n") and line.strip():
            return None
        raise UserError(f"{where}: not JSON ({e.msg}), not a run's log") from None
    if not isinstance(record, dict):
        raise UserError(f"{where}: a JSON {type(record).__name__}, where a run's log has objects")
    if "step" in record and not (_is_int(record["step"]) and 0 <= record["step"] <= MAX_STEP):
        raise UserError(f"{where}: step {json.dumps(record['step'])[:40]} is not a whole number from 0 to 2**53")
    for name in METRICS:
        if name in record:
            if not (isinstance(record[name], (int, float)) and not isinstance(record[name], bool)):
                raise UserError(f"{where}: {name} {json.dumps(record[name])} is not a number")
            record[name] = _as_float(record[name])
    return record


def _as_float(value: int | float) -> float:
    """A metric as the float the tools compute with; an integer beyond float's range is the
    infinity of its sign, which they show as a value not finite."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
