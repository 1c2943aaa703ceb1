"""Training-state checkpoints: a directory of complete checkpoints that survives kill -9.

Layout of a checkpoint directory DIR (`--save DIR`):

    DIR/latest                  one line: the name of the newest complete checkpoint
    DIR/step_00000010/          one complete checkpoint; the step is zero-padded so names sort by step
        .graphgpt-checkpoint    the marker: written first, so every directory graphgpt makes holds it
        state.json              format, version, step, plan digest, model hash, the run's id and the
                                trainer's meta
        model.safetensors       the parameters in plan order, dtype as given (resume is bit-exact)
        optimizer.safetensors   the optimizer state tensors, dtype as given
        trained_weights.bin     the parameters in the seed's format, for the seed's C++ program

A checkpoint is written as DIR/.step_00000010.PID.tmp/, every file in it fsynced, then renamed into
place and DIR fsynced; only then is `latest` replaced, itself atomically. So `latest` names a
complete checkpoint at every instant, and a killed writer leaves nothing but temporaries carrying
its pid, which the next save or load clears once that pid is no longer alive. A directory is
cleared only if it holds the marker, or nothing at all (a writer killed between making it and
marking it): one that merely has a temporary's name is the user's. A marked directory is removed
marker last, so a kill midway leaves one that is still marked, or empty.

Reading is strict: a checkpoint is resumed from only if every file is whole and matches the plan
(tensor names, shapes, dtypes; state.json's fields). A damaged latest checkpoint is never skipped
silently: a resume takes an older whole one with a warning naming both, or refuses.
"""
from __future__ import annotations

import json
import operator
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import hf, jsontext
from .dtypes import DTYPES
from .errors import UserError
from .fsutil import atomic_write_text, fsync_dir, lock_exclusively, process_alive, scratch_dir, unwritable
from .tensor_files import load_safetensors, save_safetensors, save_seed_weights

FORMAT = "graphgpt-checkpoint"
VERSION = 1
POINTER = "latest"
STATE = "state.json"
MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
SEED_EXPORT = "trained_weights.bin"
MARKER = ".graphgpt-checkpoint"
_TENSOR_FILES = (MODEL, OPTIMIZER, SEED_EXPORT)
_STATE_FIELDS = {"step": int, "plan_digest": str, "model_hash": str, "meta": dict}
_OPTIONAL_STATE_FIELDS = {"run": str}  # absent from checkpoints written before runs had an id

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
    run: str | None = None           # the id of the run that saved it (CheckpointDir.run)


@dataclass(frozen=True)
class Layout:
    """What a checkpoint of one plan holds: per tensor file, each tensor's shape and dtype, and
    the fields (with their types) that the trainer's meta must have."""
    tensors: dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]]
    meta: dict[str, type | tuple[type, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, plan, meta: dict[str, type | tuple[type, ...]] | None = None) -> Layout:
        def tensors(kind: str) -> dict:
            return {t["name"]: (tuple(t["shape"]), DTYPES[t["dtype"]].numpy) for t in plan.tensors
                    if t["kind"] == kind}
        return cls({MODEL: tensors("param"), OPTIMIZER: tensors("state")}, meta or {})


class ForeignCheckpoint(UserError):
    """A whole checkpoint that this run must not use (another plan, another format version): a
    resume refuses it rather than fall back to an older one."""


def step_name(step: int) -> str:
    if not 0 <= step < 10**8:
        raise ValueError(f"checkpoint step {step} does not fit the 8 digits of a step directory name")
    return f"step_{step:08d}"


class CheckpointDir:
    """The checkpoints under one directory; at most `keep` of them stay (0: all). One writer at a
    time, and one save at a time in that writer's process."""

    def __init__(self, path: str | os.PathLike, keep: int = 3, run: str | None = None):
        if keep < 0:
            raise ValueError(f"keep must be 0 (keep all) or positive, not {keep}")
        self.path = Path(path)
        self.keep = keep
        self.run = run  # the id of the run that saves here, recorded in each checkpoint

    def check_writable(self) -> None:
        """Prove, before any training time is spent, that a checkpoint can be written: a file can be
        made in the directory, or, while it is yet to be made (by the first save, so that a run
        refused later leaves no directory behind), in the one that will hold it. The probe is an
        anonymous temporary file, so even kill -9 leaves nothing."""
        if os.path.lexists(self.path) and not self.path.is_dir():
            raise UserError(f"{self.path}: exists and is not a directory")
        if not self.path.exists():
            if problem := unwritable(self.path):
                raise UserError(f"{self.path}: cannot be made ({problem})")
            return
        try:
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as e:
            raise UserError(f"{self.path}: not a writable directory ({e.strerror or e})") from None

    def hold(self) -> None:
        """Make the directory and keep it this process's until it ends: a second run saving here
        at the same time would write over this one's checkpoints and prune them. The hold is an
        advisory lock on the directory itself (flock), which the kernel lets go when the process
        ends, by kill -9 too, so it leaves nothing behind."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise UserError(f"{self.path}: cannot be made ({e.strerror or e})") from None
        try:
            held = lock_exclusively(fd)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.path}: another run is saving checkpoints here now; "
                            "one run at a time saves into a directory") from None
        if not held:
            print(f"warning: {self.path}: its filesystem keeps no locks, so nothing stops another run "
                  "saving here at the same time", file=sys.stderr)
        self._held = fd  # open for the process's life: closing it would let the lock go

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
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.remove_stale_temps()
            if os.path.lexists(target) and _complete_step(target) is None:
                raise UserError(f"{target}: exists and is not a complete graphgpt checkpoint of step "
                                f"{step}; not replacing it")
            with scratch_dir(self._scratch(target.name)) as staging:
                _mark(staging)
                _write_checkpoint(staging, step, state, plan_digest, model_hash, self.run, seed_export)
                self._put_in_place(staging, target)
            atomic_write_text(self.path / POINTER, target.name + "\n")
            self._prune(spare=target)
        except OSError as e:  # a full disk, a directory made read-only: nothing of this save is left
            kept = self.latest()
            raise UserError(f"{target}: cannot write the checkpoint ({e.strerror or e}); "
                            + (f"the latest checkpoint, {kept}, is intact" if kept else "no checkpoint was saved")
                            ) from None
        return target

    def load(self, plan_digest: str, path: str | os.PathLike | None = None,
             layout: Layout | None = None, continuing: bool = False) -> TrainingState:
        """The training state of checkpoint `path`, which must be whole and belong to the plan
        whose digest is `plan_digest` (and match its `layout`, if given). Without `path`, the
        latest checkpoint, or, if that one is damaged, the newest whole one, with a warning.
        `continuing`: the run will save into this directory again, so a damaged checkpoint it
        passes is renamed out of the way of those saves (`set_aside`), not left for a save to
        refuse after the training it would have kept."""
        self.remove_stale_temps()
        if path is not None:
            return read_checkpoint(path, plan_digest, layout)
        state = self.newest_whole(lambda c: read_checkpoint(c, plan_digest, layout), "resuming from",
                                  set_aside=continuing)
        if state is None:
            raise UserError(f"{self.path}: no complete checkpoint to resume from")
        return state

    def step_entries(self) -> list[Path]:
        """Every entry named like a checkpoint (whole, damaged, or not a directory at all): the
        latest first (the one `latest` names, else the highest step), then by step, descending."""
        entries = sorted((e for e in self._entries() if _STEP_NAME.fullmatch(e.name)), reverse=True)
        named = self._pointed()
        if named in entries:
            entries.remove(named)
            entries.insert(0, named)
        return entries

    def newest_whole(self, read: Callable[[Path], object], verb: str, set_aside: bool = False):
        """`read` of the latest checkpoint; if that raises UserError (damage), `read` of the newest
        other one that does not, after a warning on stderr that names both. None if DIR holds no
        checkpoint at all; one UserError line if none is whole. A ForeignCheckpoint is raised as
        it is: a checkpoint of another plan is not damage to work around. With `set_aside`, the
        damaged checkpoints passed are renamed `step_N.damaged` (kept, never removed)."""
        damaged, passed = None, []
        for checkpoint in self.step_entries():
            try:
                value = read(checkpoint)
            except ForeignCheckpoint:
                raise
            except UserError as e:
                damaged = damaged or e
                passed.append(checkpoint)
                continue
            if damaged is not None:
                kept = [self._set_aside(c) for c in passed] if set_aside else []
                print(f"warning: {damaged}; {verb} {checkpoint}, the newest whole checkpoint, instead"
                      + (f" (kept as {', '.join(k.name for k in kept)})" if kept else ""),
                      file=sys.stderr, flush=True)
            return value
        if damaged is not None:
            raise UserError(f"{damaged}; no other checkpoint in {self.path} is whole either")
        return None

    def _set_aside(self, checkpoint: Path) -> Path:
        """Rename a damaged checkpoint that graphgpt wrote to a name no save uses; one that is not
        graphgpt's (no marker, or a link) is refused, since a save would have to replace it."""
        if checkpoint.is_symlink() or not _is_marked(checkpoint):
            raise UserError(f"{checkpoint} is damaged and holds no {MARKER}, so it is not renamed or "
                            "replaced; move it out of the way to resume here")
        aside = checkpoint.with_name(checkpoint.name + ".damaged")
        n = 1
        while os.path.lexists(aside):
            n += 1
            aside = checkpoint.with_name(f"{checkpoint.name}.damaged.{n}")
        os.rename(checkpoint, aside)
        fsync_dir(self.path)
        return aside

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
                _remove_marked(entry)
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
        checkpoint, its home: the step directory it was moved from. A directory counts only if it
        holds the marker (or nothing), a file only if it holds what `latest` holds (or nothing
        yet): nothing else in DIR is ever touched, whatever its name."""
        for entry in self._entries():
            if entry.is_symlink():
                continue
            if (match := _SCRATCH.fullmatch(entry.name)) and (_is_marked(entry) or _is_empty_dir(entry)):
                yield entry, int(match["pid"]), self.path / match["step"] if match["old"] else None
            elif (match := _POINTER_TEMP.fullmatch(entry.name)) and _is_pointer_temp(entry):
                yield entry, int(match["pid"]), None

    def _put_in_place(self, staging: Path, target: Path) -> None:
        """Rename the written `staging` to `target` and make that durable. An existing `target`
        (a complete checkpoint of the same step: save() checked) is replaced as a whole: a
        directory cannot be renamed over a non-empty one, so the old one is set aside first, then
        settled whatever happens."""
        aside = self._scratch(target.name, ".old") if os.path.lexists(target) else None
        if aside is not None:
            _mark(target)  # a checkpoint of an earlier version lacks it: the cleaner needs it
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
            _mark(self.path / step_name(step))
            os.rename(self.path / step_name(step), doomed)
            _remove_marked(doomed)


def read_state(checkpoint: str | os.PathLike) -> dict:
    """The state.json of a complete checkpoint directory, checked; one UserError line otherwise."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_symlink():
        raise UserError(f"{checkpoint}: a symbolic link, not a checkpoint directory graphgpt wrote")
    if os.path.lexists(checkpoint) and not checkpoint.is_dir():
        raise UserError(f"{checkpoint}: not a directory, so not a graphgpt checkpoint")
    state = checkpoint / STATE
    try:
        record = jsontext.loads(state.read_text("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{checkpoint}: not a graphgpt checkpoint (no {STATE})") from None
    except OSError as e:
        raise UserError(f"{state}: cannot read it: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{state}: not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise UserError(f"{state}: not a JSON object, so not a graphgpt checkpoint's")
    if record.get("format") != FORMAT:
        raise UserError(f"{state}: lacks format {FORMAT!r}, so not a graphgpt checkpoint's")
    if record.get("version") != VERSION:
        raise ForeignCheckpoint(f"{state}: checkpoint version {record.get('version')!r}; this graphgpt "
                                f"reads version {VERSION}")
    _check_fields(state, record, _STATE_FIELDS, required=True)
    _check_fields(state, record, _OPTIONAL_STATE_FIELDS, required=False)
    if (match := _STEP_NAME.fullmatch(checkpoint.name)) and int(match[1]) != record["step"]:
        raise UserError(f"{state}: records step {record['step']}, but its directory is named for step "
                        f"{int(match[1])}")
    missing = [name for name in _TENSOR_FILES if not (checkpoint / name).is_file()]
    if missing:
        raise UserError(f"{checkpoint}: incomplete checkpoint, missing {', '.join(missing)}")
    return record


def _check_fields(where: Path, record: dict, fields: dict, required: bool, prefix: str = "") -> None:
    """Each of `fields` present in `record` with its type (a whole number >= 0 where int); one
    UserError line naming the first field that is not."""
    for name, kind in fields.items():
        if name not in record:
            if required:
                raise UserError(f"{where}: lacks the field {prefix + name!r}")
            continue
        value = record[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
                or (isinstance(value, int) and not isinstance(value, bool) and value < 0)):
            wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise UserError(f"{where}: field {prefix + name!r} is {json.dumps(value)[:40]}, not {wanted}"
                            + (" >= 0" if int in kinds else ""))


def read_checkpoint(checkpoint: str | os.PathLike, plan_digest: str, layout: Layout | None = None) -> TrainingState:
    """The training state of one checkpoint directory, every file checked against the plan whose
    digest is `plan_digest` (and against `layout`, if given); one UserError line otherwise."""
    checkpoint = Path(checkpoint)
    record = read_state(checkpoint)
    if record["plan_digest"] != plan_digest:
        raise ForeignCheckpoint(f"{checkpoint}: checkpoint of plan {record['plan_digest'][:12]}, not of "
                                f"this plan {plan_digest[:12]}")
    if layout is not None:
        _check_fields(checkpoint / STATE, record["meta"], layout.meta, required=True, prefix="meta.")
    tensors = {}
    for name in (MODEL, OPTIMIZER):
        tensors[name] = load_safetensors(checkpoint / name)
        if layout is not None and (problem := _mismatch(tensors[name], layout.tensors[name])):
            raise UserError(f"{checkpoint / name} {problem}")
    return TrainingState(record["step"], tensors[MODEL], tensors[OPTIMIZER], record["meta"], record.get("run"))


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parameters for --init-from: a .safetensors file, a checkpoint step directory, or a
    checkpoint directory (its latest checkpoint; an older whole one, with a warning, if that one is
    damaged)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_file():
        return load_safetensors(path)
    if (path / STATE).exists() or _STEP_NAME.fullmatch(path.name):
        return _checkpoint_weights(path)
    weights = CheckpointDir(path).newest_whole(_checkpoint_weights, "loading")
    if weights is None:
        raise UserError(f"{path}: neither a .safetensors file, a checkpoint nor a directory of checkpoints")
    return weights


def _checkpoint_weights(checkpoint: Path) -> dict[str, np.ndarray]:
    read_state(checkpoint)
    return load_safetensors(checkpoint / MODEL)


def initial_weights(path, plan) -> dict[str, np.ndarray]:
    """--init-from's weights: a .safetensors file, a checkpoint (or a directory of them) or a
    Hugging Face GPT-2 or LLaMA directory, which must hold exactly the plan's parameters."""
    shapes = {t["name"]: tuple(t["shape"]) for t in plan.params}
    try:
        weights = hf.load(path, plan.config, shapes) if hf.is_hf_dir(path) else load_weights(path)
    except UserError as e:
        raise UserError(f"--init-from {e}") from None
    if problem := _mismatch(weights, {name: (shape, None) for name, shape in shapes.items()}):
        raise UserError(f"--init-from {path} {problem}")
    return weights


def _mismatch(tensors: dict[str, np.ndarray], expected: dict[str, tuple]) -> str | None:
    """How `tensors` differ from `expected` (name -> (shape, dtype or None for any)), in words,
    or None if they do not."""
    def listed(names: list[str]) -> str:
        return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    missing = [n for n in expected if n not in tensors]
    extra = [n for n in tensors if n not in expected]
    shapes = [f"{n} {tuple(tensors[n].shape)} (plan: {shape})" for n, (shape, _) in expected.items()
              if n in tensors and tuple(tensors[n].shape) != shape]
    dtypes = [f"{n} {tensors[n].dtype} (plan: {dtype})" for n, (_, dtype) in expected.items()
              if n in tensors and dtype is not None and tensors[n].dtype != dtype]
    for what, names in (("lacks tensors of this plan", missing), ("has tensors this plan does not", extra),
                        ("has other shapes than this plan", shapes), ("has other dtypes than this plan", dtypes)):
        if names:
            return f"{what}: {listed(names)}"
    return None


def checkpoints_home(path: Path | None) -> Path | None:
    """Where a run resumed from `path` saves: `path` itself, or, for a step directory
    (DIR/step_00000004), the directory of checkpoints that holds it."""
    if path is not None and _STEP_NAME.fullmatch(path.name):
        return path.parent
    return path


def _complete_step(checkpoint: Path) -> int | None:
    """The step of `checkpoint` if it is a complete checkpoint: a real directory (not a link) named
    for a step, whose state.json is valid and records that step, and whose files are all there."""
    if not _STEP_NAME.fullmatch(checkpoint.name):
        return None
    try:
        return read_state(checkpoint)["step"]
    except UserError:
        return None


def _write_checkpoint(directory: Path, step: int, state: TrainingState, plan_digest: str,
                      model_hash: str, run: str | None, seed_export: list[np.ndarray]) -> None:
    """Every file of a checkpoint. Each write fsyncs its file and then `directory` after renaming
    the file into it, so the directory is durable once the last one returns."""
    record = {"format": FORMAT, "version": VERSION, "step": step, "plan_digest": plan_digest,
              "model_hash": model_hash, **({"run": run} if run is not None else {}),
              "meta": state.meta}
    atomic_write_text(directory / STATE, json.dumps(record, indent=1) + "\n")
    save_safetensors(directory / MODEL, state.params, metadata={"model_hash": model_hash})
    save_safetensors(directory / OPTIMIZER, state.optimizer)
    save_seed_weights(directory / SEED_EXPORT, seed_export)


def _mark(directory: Path) -> None:
    """Write the marker that makes `directory` one of graphgpt's own, which a cleaner may remove
    once it has a temporary's name. One create, not a temporary and a rename: a temporary left in
    an unmarked directory would make it look like the user's for good."""
    if not _is_marked(directory):
        with open(directory / MARKER, "x") as f:
            f.write(f"graphgpt checkpoint, written by pid {os.getpid()}\n")


def _is_marked(directory: Path) -> bool:
    marker = directory / MARKER
    return directory.is_dir() and not marker.is_symlink() and marker.is_file()


def _is_empty_dir(entry: Path) -> bool:
    try:
        with os.scandir(entry) as entries:
            return next(entries, None) is None
    except OSError:  # not a directory, or not one we may read
        return False


def _remove_marked(directory: Path) -> None:
    """Remove a directory graphgpt made, its marker last (see the module's docstring)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name == MARKER:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    if os.path.lexists(directory / MARKER):
        os.unlink(directory / MARKER)
    os.rmdir(directory)


def _is_pointer_temp(entry: Path) -> bool:
    """A temporary of `latest` holds a step directory's name, or nothing yet (its writer died
    before writing)."""
    try:
        if not entry.is_file() or entry.stat().st_size > 64:
            return False
        text = entry.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return text == "" or _STEP_NAME.fullmatch(text.removesuffix("\n")) is not None


def _settle_set_aside(aside: Path, home: Path) -> None:
    """A checkpoint set aside for its replacement is garbage once the replacement is in `home`;
    until then it is still the checkpoint of its step, so it goes back."""
    if os.path.lexists(home):
        _remove_marked(aside)
    else:
        os.rename(aside, home)


def _writer_alive(pid: int) -> bool:
    """Whether the process that named a temporary with `pid` may still be using it. Our own pid
    counts as dead: this process makes one checkpoint at a time and clears its temporaries on any
    exception, so one with our pid was left by an earlier process that had the same pid (a
    container's first process, restarted)."""
    return pid != os.getpid() and process_alive(pid)


def describe_weights(path, weights: dict[str, np.ndarray]) -> str:
    """The line that confirms what --init-from loaded: how many parameters, from what kind of
    source, and what identifies it (a checkpoint's step, a Hugging Face config's sizes)."""
    path = Path(path)
    count = f"loaded {sum(int(w.size) for w in weights.values()) / 1e6:.2f}M parameters"
    if hf.is_hf_dir(path):
        return f"{count} from {hf.describe(path)}"
    if path.is_file():
        return f"{count} from a .safetensors file {path}"
    checkpoint = path if (path / STATE).exists() else CheckpointDir(path).latest()
    return f"{count} from the checkpoint at step {read_state(checkpoint)['step']}, {checkpoint}"
