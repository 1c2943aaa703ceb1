"""Training-state checkpoints: a directory of complete checkpoints that survives kill -9.

Layout of a checkpoint directory DIR (`--save DIR`):

    DIR/latest                  one line: the name of the newest complete checkpoint
    DIR/step_00000010/          one complete checkpoint; the step is zero-padded so names sort by step
        state.json              format, version, step, plan digest, model hash and the trainer's meta
        model.safetensors       the parameters in plan order, dtype as given (resume is bit-exact)
        optimizer.safetensors   the optimizer state tensors, dtype as given
        trained_weights.bin     the parameters in the seed's format, for the seed's C++ program

A checkpoint is written as DIR/.step_00000010.PID.tmp/, every file in it fsynced, then renamed into
place and DIR fsynced; only then is `latest` replaced, itself atomically. So `latest` names a
complete checkpoint at every instant, and a killed writer leaves nothing but temporaries carrying
its pid, which the next save or load clears once that pid is no longer alive.
"""
from __future__ import annotations

import json
import operator
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import hf
from .errors import UserError
from .fsutil import atomic_write_text, fsync_dir, scratch_dir
from .tensor_files import load_safetensors, save_safetensors, save_seed_weights

FORMAT = "graphgpt-checkpoint"
VERSION = 1
POINTER = "latest"
STATE = "state.json"
MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
SEED_EXPORT = "trained_weights.bin"
_TENSOR_FILES = (MODEL, OPTIMIZER, SEED_EXPORT)
_STATE_FIELDS = {"step": int, "plan_digest": str, "model_hash": str, "meta": dict}

_STEP_NAME = re.compile(r"step_(\d{8})")
# `.step_N.PID.tmp`: a checkpoint being written, or one being deleted; `.step_N.PID.old.tmp`: a
# complete checkpoint set aside while a new one of the same step takes its place.
_SCRATCH = re.compile(r"\.(?P<step>step_\d{8})\.(?P<pid>\d+)(?P<old>\.old)?\.tmp")
_POINTER_TEMP = re.compile(rf"\.{POINTER}\.(?P<pid>\d+)\.\w+\.tmp")  # atomic_write_bytes's temporary


@dataclass
class TrainingState:
    """Everything a run needs to continue exactly where it stopped."""
    step: int                        # optimizer updates done
    params: dict[str, np.ndarray]    # plan order
    optimizer: dict[str, np.ndarray]
    meta: dict                       # JSON-serialisable; the trainer's (sampler state, seed, ...)


def step_name(step: int) -> str:
    if not 0 <= step < 10**8:
        raise ValueError(f"checkpoint step {step} does not fit the 8 digits of a step directory name")
    return f"step_{step:08d}"


class CheckpointDir:
    """The checkpoints under one directory; at most `keep` of them stay (0: all). One writer at a
    time, and one save at a time in that writer's process."""

    def __init__(self, path: str | os.PathLike, keep: int = 3):
        if keep < 0:
            raise ValueError(f"keep must be 0 (keep all) or positive, not {keep}")
        self.path = Path(path)
        self.keep = keep

    def check_writable(self) -> None:
        """Create the directory if needed and prove a file can be made in it, before any training
        time is spent. The probe is an anonymous temporary file, so even kill -9 leaves nothing."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except FileExistsError:
            raise UserError(f"{self.path}: exists and is not a directory") from None
        except OSError as e:
            raise UserError(f"{self.path}: not a writable directory ({e.strerror or e})") from None

    def checkpoints(self) -> list[int]:
        """Steps of the complete checkpoints present, ascending."""
        return sorted(step for entry in self._entries() if (step := _complete_step(entry)) is not None)

    def latest(self) -> Path | None:
        """The checkpoint `latest` names; if that is missing or incomplete (a disk that lost
        fsynced writes, or a kill midway through replacing it, which the next save or load
        undoes), the newest complete checkpoint; None if there is none."""
        named = self._pointed()
        if named is not None and _complete_step(named) is not None:
            return named
        steps = self.checkpoints()
        return self.path / step_name(steps[-1]) if steps else None

    def save(self, state: TrainingState, plan_digest: str, model_hash: str,
             seed_export: list[np.ndarray]) -> Path:
        """Write `state` as a complete checkpoint, point `latest` at it, prune to `keep`; returns
        the checkpoint's directory. On any exception nothing of this save is left behind."""
        step = operator.index(state.step)
        target = self.path / step_name(step)
        self.path.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temps()
        if os.path.lexists(target) and _complete_step(target) is None:
            raise UserError(f"{target}: exists and is not a complete graphgpt checkpoint of step {step}; "
                            f"not replacing it")
        with scratch_dir(self._scratch(target.name)) as staging:
            _write_checkpoint(staging, step, state, plan_digest, model_hash, seed_export)
            self._put_in_place(staging, target)
        atomic_write_text(self.path / POINTER, target.name + "\n")
        self._prune(spare=target)
        return target

    def load(self, plan_digest: str, path: str | os.PathLike | None = None) -> TrainingState:
        """The training state of checkpoint `path` (default: latest()), which must belong to the
        plan whose digest is `plan_digest`."""
        self.remove_stale_temps()
        checkpoint = Path(path) if path is not None else self.latest()
        if checkpoint is None:
            raise UserError(f"{self.path}: no complete checkpoint to resume from")
        record = read_state(checkpoint)
        if record["plan_digest"] != plan_digest:
            raise UserError(f"{checkpoint}: checkpoint of plan {record['plan_digest'][:12]}, not of this "
                            f"plan {plan_digest[:12]}")
        return TrainingState(record["step"], load_safetensors(checkpoint / MODEL),
                             load_safetensors(checkpoint / OPTIMIZER), record["meta"])

    def remove_stale_temps(self) -> list[Path]:
        """Clear the temporaries of writers that are no longer alive (killed mid-save); a
        checkpoint set aside for a replacement that never arrived is moved back rather than
        removed. Returns the temporaries cleared."""
        cleared = []
        for entry, pid, home in self._temporaries():
            if _writer_alive(pid):
                continue
            if home is not None:
                _settle_set_aside(entry, home)
            elif entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            cleared.append(entry)
        return cleared

    def _entries(self) -> list[Path]:
        try:
            return list(self.path.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _pointed(self) -> Path | None:
        try:
            name = (self.path / POINTER).read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return self.path / name if _STEP_NAME.fullmatch(name) else None

    def _scratch(self, name: str, kind: str = "") -> Path:
        return self.path / f".{name}.{os.getpid()}{kind}.tmp"

    def _temporaries(self) -> Iterator[tuple[Path, int, Path | None]]:
        """Each temporary a writer makes in DIR, with the writer's pid and, for a set-aside
        checkpoint, its home: the step directory it was moved from. Nothing else in DIR is ever
        touched."""
        for entry in self._entries():
            if entry.is_symlink():
                continue
            if (match := _SCRATCH.fullmatch(entry.name)) and entry.is_dir():
                yield entry, int(match["pid"]), self.path / match["step"] if match["old"] else None
            elif (match := _POINTER_TEMP.fullmatch(entry.name)) and entry.is_file():
                yield entry, int(match["pid"]), None

    def _put_in_place(self, staging: Path, target: Path) -> None:
        """Rename the written `staging` to `target` and make that durable. An existing `target`
        (a complete checkpoint of the same step: save() checked) is replaced as a whole: a
        directory cannot be renamed over a non-empty one, so the old one is set aside first, then
        settled whatever happens."""
        aside = self._scratch(target.name, ".old") if os.path.lexists(target) else None
        if aside is not None:
            os.rename(target, aside)
        try:
            os.rename(staging, target)
            fsync_dir(self.path)  # the checkpoint's entry is on disk before `latest` may name it
        finally:
            if aside is not None:
                _settle_set_aside(aside, target)

    def _prune(self, spare: Path) -> None:
        """Delete the oldest complete checkpoints beyond `keep`, never `spare` (the one just
        written). Each is renamed to a scratch name first, so a kill midway through the deletion
        leaves a stale temporary rather than a damaged checkpoint."""
        if self.keep == 0:
            return
        others = [step for step in self.checkpoints() if step_name(step) != spare.name]
        for step in others[:max(0, len(others) - (self.keep - 1))]:
            doomed = self._scratch(step_name(step))
            os.rename(self.path / step_name(step), doomed)
            shutil.rmtree(doomed)


def read_state(checkpoint: str | os.PathLike) -> dict:
    """The state.json of a complete checkpoint directory, checked; one UserError line otherwise."""
    checkpoint = Path(checkpoint)
    try:
        record = json.loads((checkpoint / STATE).read_text("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{checkpoint}: not a graphgpt checkpoint (no {STATE})") from None
    except OSError as e:
        raise UserError(f"{checkpoint}: cannot read {STATE}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{checkpoint}: {STATE} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UserError(f"{checkpoint}: not a graphgpt checkpoint ({STATE} lacks format {FORMAT!r})")
    if record.get("version") != VERSION:
        raise UserError(f"{checkpoint}: checkpoint version {record.get('version')!r}; this graphgpt "
                        f"reads version {VERSION}")
    for field, kind in _STATE_FIELDS.items():
        value = record.get(field)
        if not isinstance(value, kind) or isinstance(value, bool) or (field == "step" and value < 0):
            raise UserError(f"{checkpoint}: {STATE} has an invalid {field!r} ({type(value).__name__})")
    missing = [name for name in _TENSOR_FILES if not (checkpoint / name).is_file()]
    if missing:
        raise UserError(f"{checkpoint}: incomplete checkpoint, missing {', '.join(missing)}")
    return record


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parameters for --init-from: a .safetensors file, a checkpoint step directory, or a
    checkpoint directory (its latest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_file():
        return load_safetensors(path)
    checkpoint = path if (path / STATE).exists() else CheckpointDir(path).latest()
    if checkpoint is None:
        raise UserError(f"{path}: neither a .safetensors file, a checkpoint nor a directory of checkpoints")
    read_state(checkpoint)
    return load_safetensors(checkpoint / MODEL)


def initial_weights(path, plan) -> dict[str, np.ndarray]:
    """--init-from's weights: a .safetensors file, a checkpoint (or a directory of them) or a
    Hugging Face GPT-2 directory, which must hold exactly the plan's parameters."""
    try:
        weights = hf.load(path, plan.config) if hf.is_hf_dir(path) else load_weights(path)
    except UserError as e:
        raise UserError(f"--init-from {e}") from None
    expected = {t["name"]: tuple(t["shape"]) for t in plan.params}
    missing = [n for n in expected if n not in weights]
    extra = [n for n in weights if n not in expected]
    wrong = [f"{n} {tuple(weights[n].shape)} (plan: {expected[n]})" for n in expected
             if n in weights and tuple(weights[n].shape) != expected[n]]
    for what, names in (("lacks tensors of this plan", missing), ("has tensors this plan does not", extra),
                        ("has other shapes than this plan", wrong)):
        if names:
            raise UserError(f"--init-from {path} {what}: {', '.join(names[:5])}"
                            + (", ..." if len(names) > 5 else ""))
    return weights


def _complete_step(checkpoint: Path) -> int | None:
    """The step of `checkpoint` if it is a complete checkpoint: a real directory (not a link) named
    for a step, whose state.json is valid and records that step, and whose files are all there."""
    match = _STEP_NAME.fullmatch(checkpoint.name)
    if not match or checkpoint.is_symlink() or not checkpoint.is_dir():
        return None
    try:
        recorded = read_state(checkpoint)["step"]
    except UserError:
        return None
    return recorded if recorded == int(match[1]) else None


def _write_checkpoint(directory: Path, step: int, state: TrainingState, plan_digest: str,
                      model_hash: str, seed_export: list[np.ndarray]) -> None:
    """Every file of a checkpoint. Each write fsyncs its file and then `directory` after renaming
    the file into it, so the directory is durable once the last one returns."""
    record = {"format": FORMAT, "version": VERSION, "step": step, "plan_digest": plan_digest,
              "model_hash": model_hash, "meta": state.meta}
    atomic_write_text(directory / STATE, json.dumps(record, indent=1) + "\n")
    save_safetensors(directory / MODEL, state.params, metadata={"model_hash": model_hash})
    save_safetensors(directory / OPTIMIZER, state.optimizer)
    save_seed_weights(directory / SEED_EXPORT, seed_export)


def _settle_set_aside(aside: Path, home: Path) -> None:
    """A checkpoint set aside for its replacement is garbage once the replacement is in `home`;
    until then it is still the checkpoint of its step, so it goes back."""
    if os.path.lexists(home):
        shutil.rmtree(aside)
    else:
        os.rename(aside, home)


def _writer_alive(pid: int) -> bool:
    """Whether the process that named a temporary with `pid` may still be using it. Our own pid
    counts as dead: this process makes one checkpoint at a time and clears its temporaries on any
    exception, so one with our pid was left by an earlier process that had the same pid (a
    container's first process, restarted)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass  # another user's live process, or a number no process has: not ours to remove either way
    return True


def describe_weights(path, weights: dict[str, np.ndarray]) -> str:
    """The line that confirms what --init-from loaded: how many parameters, from what kind of
    source, and what identifies it (a checkpoint's step, a Hugging Face config's sizes)."""
    path = Path(path)
    count = f"loaded {sum(int(w.size) for w in weights.values()) / 1e6:.2f}M parameters"
    if hf.is_hf_dir(path):
        config = json.loads((path / hf.CONFIG).read_text("utf-8"))  # checked when it was loaded
        sizes = ", ".join(f"{k} {config[k]}" for k in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions"))
        return f"{count} from a Hugging Face GPT-2 directory {path} ({sizes})"
    if path.is_file():
        return f"{count} from a .safetensors file {path}"
    checkpoint = path if (path / STATE).exists() else CheckpointDir(path).latest()
    return f"{count} from the checkpoint at step {read_state(checkpoint)['step']}, {checkpoint}"
