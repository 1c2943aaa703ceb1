"""What a run shows and records: the progress line, the JSONL metrics log, and a stdout that
survives its reader going away.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

from . import jsontext
from .errors import UserError
from .fsutil import atomic_create_text, atomic_write_text, remove_dead_writers_temporaries, unwritable


class Progress:
    """A bar redrawn in place on a terminal; plain periodic lines in logs and pipes. Each shows the
    time since the first step began and an estimate of the time left."""

    # Steps left out of the estimate: the first ones include one-time work (a CUDA graph's capture,
    # the allocator's first requests) and say little about the steps to come.
    WARMUP_STEPS = 2
    RECENT_STEPS = 50  # the estimate follows the latest steps, as the machine's load changes

    def __init__(self, total: int, stream=None):
        self.total, self.stream = total, stream or sys.stdout
        self.tty = self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self.every = max(1, total // 10)
        self.val_loss: float | None = None  # the last held-out loss, shown on every line after it
        self.started = time.perf_counter()
        self.seen, self.recent_ms = 0, []

    def update(self, m: dict) -> None:
        if "val_loss" in m:
            self.val_loss = m["val_loss"]
        self.seen += 1
        if self.seen > self.WARMUP_STEPS:  # "ms" is the step alone: evaluations and saves are not in it
            self.recent_ms = (self.recent_ms + [m["ms"]])[-self.RECENT_STEPS:]
        text = (f"step {m['step']:>{len(str(self.total))}}/{self.total} | loss {m['loss']:.4f} | "
                + (f"val {self.val_loss:.4f} | " if self.val_loss is not None else "")
                + f"lr {m['lr']:.2e} | norm {m['grad_norm']:.3f} | {m['ms']:.1f} ms | "
                f"{m['tokens_per_s']:,.0f} tok/s | {self.timing(m['step'])}")
        if self.tty:
            done = int(20 * m["step"] / self.total)
            self.stream.write(f"\r[{'#' * done}{'.' * (20 - done)}] {text}\033[K")
            if m["step"] == self.total:
                self.stream.write("\n")
        elif m["step"] == 1 or m["step"] % self.every == 0 or m["step"] == self.total or "val_loss" in m:
            self.stream.write(text + "\n")
        self.stream.flush()

    def timing(self, step: int) -> str:
        """"12.3s elapsed, ETA 1m05s": the steps left at the mean time of the recent steps (before
        there are any past the warm-up, no estimate)."""
        elapsed = f"{duration(time.perf_counter() - self.started)} elapsed"
        left = self.total - step
        if left <= 0 or not self.recent_ms:
            return elapsed
        return f"{elapsed}, ETA {duration(left * sum(self.recent_ms) / len(self.recent_ms) / 1e3)}"


def duration(seconds: float) -> str:
    """12.3s, 1m05s, 2h03m."""
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


LOG_FORMAT = 1  # the header's "graphgpt_log": what the records of this version mean


def new_run_id() -> str:
    """A run's id, made when it starts from step 0 and kept by its checkpoints: the time it
    started, and random digits that tell apart two runs started in the same second."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def log_header(run: str, plan: str, **fields) -> dict:
    """The first record of a log: a graphgpt log (of this format) of run `run` of plan `plan`."""
    return {"graphgpt_log": LOG_FORMAT, "run": run, "plan": plan, **fields}


class MetricsLog:
    """One JSON object per line, appended and flushed as each record is made, so a crash keeps
    everything written before it. The first line is a header (`log_header`) naming the run.

    A fresh run refuses an existing file rather than overwrite it. A resumed run appends only to
    the log of the same run (its header says so) and first drops the records after the step it
    resumes from (written by the interrupted run after its last checkpoint; the resumed run writes
    them again), so the file reads like an uninterrupted run's. Anything else, a symbolic link
    included, is refused in one line and left as it is.
    """

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self.file = None
        self.previous: dict | None = None  # the header of the run's log being continued

    def check(self, header: dict | None = None, resuming: bool = False) -> None:
        """Before any work: the file can be written, a fresh run would not overwrite one, and a
        resumed run's file is its own log: one written by run `header["run"]`, or, for a run that
        starts from step 0 again because it never saved a checkpoint, by a run of the same plan
        into the same checkpoint directory (`header["save"]`)."""
        if self.path is None:
            return
        if self.path.is_symlink():
            raise UserError(f"--log {self.path} is a symbolic link; give the file itself")
        if self.path.is_dir():
            raise UserError(f"--log {self.path} is a directory; give a file name")
        if os.path.lexists(self.path) and not self.path.is_file():
            raise UserError(f"--log {self.path} is not a regular file")
        if self.path.exists() and not resuming:
            raise UserError(f"--log {self.path} already exists; a new run does not overwrite it "
                            "(remove it, choose another name, or --resume to continue that run)")
        # the directory is made by open(), once every other check of the run has passed
        if problem := unwritable(self.path.parent):
            raise UserError(f"--log {self.path}: {problem}")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise UserError(f"--log {self.path} is not writable")
        if self.path.exists():
            self.previous = self._own_header(header or {})

    def _own_header(self, header: dict) -> dict:
        """The header of the existing file, if it is this run's log; one UserError line if not."""
        try:
            with open(self.path, "rb") as f:
                first = f.readline(1 << 16)
            found = jsontext.loads(first)
        except OSError as e:
            raise UserError(f"--log {self.path}: cannot read it: {e.strerror or e}") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            found = None
        if not isinstance(found, dict) or found.get("graphgpt_log") != LOG_FORMAT:
            raise UserError(f"--log {self.path} is not a graphgpt log (its first line is no graphgpt_log "
                            f"{LOG_FORMAT} header); a resumed run appends only to its own log, so it leaves "
                            "this file as it is: choose another name")
        same_run = found.get("run") == header.get("run")
        restarted = (header.get("save") is not None
                     and all(found.get(k) == header.get(k) for k in ("plan", "save")))
        if not (same_run or restarted):
            raise UserError(f"--log {self.path} is the log of run {found.get('run')!r}, not of this run "
                            f"{header.get('run')!r}; a resumed run appends only to its own log: "
                            "choose another name")
        return found

    def open(self, header: dict, keep_through: int | None = None) -> None:
        """Start appending, after `header` if the file is new. A resumed run first keeps only the
        header and the records up to step `keep_through` of its own log (checked by `check`); a
        run restarted from step 0 keeps its new header alone."""
        if self.path is None:
            return
        try:
            remove_dead_writers_temporaries(self.path)  # a rewrite that a kill cut short
            if self.previous is not None and keep_through is not None:
                kept_header = self.previous if self.previous.get("run") == header.get("run") else header
                kept = [line for line in self.path.read_text("utf-8", errors="replace").splitlines(keepends=True)[1:]
                        if (step := _step_of(line)) is not None and step <= keep_through]
                atomic_write_text(self.path, json.dumps(kept_header) + "\n" + "".join(kept))
            else:  # a new file, made whole, and only where no other run has made one since check()
                atomic_create_text(self.path, json.dumps(header) + "\n")
            self.file = open(self.path, "ab", buffering=0)
        except FileExistsError:
            raise UserError(f"--log {self.path} was made by another run meanwhile; a new run does not "
                            "overwrite it (choose another name)") from None
        except OSError as e:
            raise UserError(f"--log {self.path}: cannot write it ({e.strerror or e}); it is as it was") from None

    def write(self, m: dict) -> None:
        """Append one record whole: if the disk takes only part of it, the part is cut off again,
        so the file keeps only whole records."""
        if not self.file:
            return
        data = (json.dumps(m) + "\n").encode("utf-8")
        end = self.file.seek(0, os.SEEK_END)
        try:
            done = 0
            while done < len(data):
                done += self.file.write(data[done:])
        except OSError as e:
            self.file.truncate(end)
            raise UserError(f"--log {self.path}: cannot write step {m.get('step')}'s record "
                            f"({e.strerror or e}); the records before it are intact") from None

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None


def _step_of(line: str) -> int | None:
    try:
        return int(jsontext.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash


class GuardedStdout:
    """sys.stdout that goes quiet when its reader has gone (`| head`) instead of raising, so a
    closed pipe never stops training or a save. Once the pipe is broken, file descriptor 1 is
    pointed at /dev/null so that nothing, not even the interpreter's last flush, fails on it."""

    def __init__(self, stream):
        self._stream, self.broken = stream, False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._go_quiet()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._go_quiet()

    def _go_quiet(self) -> None:
        self.broken = True
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())
        os.close(null)

    def __getattr__(self, name):
        return getattr(self._stream, name)
