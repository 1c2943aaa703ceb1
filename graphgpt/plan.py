"""The plan: everything `run` needs, as data. Saved as `plan.json` beside its kernels and dumps.

plan.json holds the schema version, the model hash, the configuration, the tokenizer, the arena
layout (persistent tensors with their offsets and initialisers, constants) and, per program
("train" or "accumulate" and "update", then "eval", "generate" and, where the model decodes with
key/value caches, "decode", and for a plan in bf16 "cast_weights"), its inputs, outputs and
ordered launches. A launch names its op, its kind, its attributes and its buffers in one arena
(`Buffer`: dtype, byte offset, shape; in plan.json the list [dtype, offset, shape]): `out`, for an
op with several outputs also `outs` (all of them, `out` first), and `in`; its `cuda` record gives
the kernel or library call, grid, block, dynamic shared memory and arguments; `stream` and `waits`
say where it runs (0, the main stream, or 1, the side stream of the gradient branch's kernels) and
which launches of its program, on the other stream, it waits for (passes/streams.py).
`nvrtc_options` are what the kernel files compile with. A backend derives nothing.

Programs, launches and their calls are records (`Program`, `Launch`, `KernelCall`, `GemmCall`),
which the compiler builds and a backend reads by attribute; each has one `from_json` and one
`to_json`, and `to_text` writes them as the JSON they stand for. The rest of plan.json (settings,
arena, tensors, tokenizer) stays as parsed JSON.

A plan directory holds plan.json, report.txt, kernels/, graphs/, where the plan has constant
tensors their float32 values by name (constants.safetensors), and manifest.json, which lists the
others with their sizes and sha256: `save` replaces such a directory, unchanged since it was
written (or an empty or missing one), as a whole, and refuses any other path untouched.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import jsontext
from .dtypes import padded
from .errors import UserError
from .fsutil import fsync_dir, process_alive
from .tensor_files import load_safetensors

ALIGN = 256  # bytes: where every tensor of the arena starts (plan.json's arena "align")


def aligned(nbytes: int) -> int:
    return padded(nbytes, ALIGN)

# 2: one byte-addressed arena, buffers [dtype, byte offset, shape]; 3: the generation programs
# decode with key/value caches (caches, decode, cast_weights) and give their greedy next tokens;
# 4: every program of a bf16 plan reads the weights' copies, which the update keeps current;
# 5: a GEMM's epilogue names its cuBLASLt kind and its aux matrix (GELU's pre-activation);
# 6: a fused_sum may sum several values into several outputs (attrs "results"); 7: fused_normalize
# (LayerNorm's affine part stored by its normalize) and sum_group (column sums in one launch);
# 8: every launch names its stream and the launches it waits for; 9: the NVRTC options of the
# kernel files ("nvrtc_options"); 10: the device the kernels are sized for ("target": its name, SM
# count and shared memory), and constant tensors (consts.tensors), their values in constants.safetensors;
# 11: every launch names its node and where, every program its memory (records shared by the compiler
# and the backends: plan.Program, Launch, KernelCall, GemmCall)
SCHEMA_VERSION = 11
# The float32 values of a plan's constant tensors (rotary embedding's tables), by name: the
# compiler computes them, the backends load them into the arena's constants region.
CONSTANTS_FILE = "constants.safetensors"
# The program that writes every weight's copy in the compute type from the weights: a backend
# runs it before its next program whenever something other than a program wrote the weights.
CAST_WEIGHTS = "cast_weights"
PLAN_FILE = "plan.json"
# Every file of a plan with its size and sha256, written last: `compile --out` replaces only a
# directory that holds exactly these files, unchanged.
MANIFEST = "manifest.json"
# In a staging or set-aside directory (`staging_beside`, `replace_dir`: compile's and export_hf's): a
# directory without it is never removed.
TEMPORARY_MARKER = ".graphgpt-temporary"


class Buffer(NamedTuple):
    """A tensor's place in the arena, as the compiler writes it and a backend reads it. A tuple, so
    plan.json keeps it as the list [dtype, offset, shape]."""
    dtype: str               # a key of dtypes.DTYPES
    offset: int              # bytes from the arena's start
    shape: tuple[int, ...]

    @classmethod
    def from_json(cls, raw) -> "Buffer":
        dtype, offset, shape = raw
        return cls(dtype, offset, tuple(shape))

    @classmethod
    def of_tensor(cls, tensor: dict, grad: bool = False) -> "Buffer":
        """A persistent tensor of the plan's "tensors", or with `grad` its gradient's slot."""
        return cls(tensor["dtype"], tensor["grad"] if grad else tensor["offset"], tuple(tensor["shape"]))

    def to_json(self) -> list:
        return [self.dtype, self.offset, list(self.shape)]


def _optional_buffer(raw) -> Buffer | None:
    return None if raw is None else Buffer.from_json(raw)


def _as_json(obj):
    """The JSON a record stands for (a Buffer its list), within dicts, lists and tuples of JSON and
    records."""
    if hasattr(obj, "to_json"):
        return obj.to_json()
    if isinstance(obj, dict):
        return {k: _as_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_as_json(v) for v in obj]
    return obj


def _fields_json(record) -> dict:
    """A flat record as the JSON object of its fields, in their order."""
    return {f.name: _as_json(getattr(record, f.name)) for f in fields(record)}


@dataclass(frozen=True)
class KernelCall:
    """A launch of one rendered kernel (codegen.py): its name in its kernel file, grid, block, bytes
    of dynamic shared memory and the buffers it takes, outputs first."""
    kernel: str
    file: str                   # "kernels/<family>.cu"
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    smem: int
    args: tuple[Buffer, ...]

    @classmethod
    def from_json(cls, raw: dict) -> "KernelCall":
        return cls(raw["kernel"], raw["file"], tuple(raw["grid"]), tuple(raw["block"]), raw["smem"],
                   tuple(Buffer.from_json(b) for b in raw["args"]))

    def to_json(self) -> dict:
        return _fields_json(self)


@dataclass(frozen=True)
class Gemm:
    """One cuBLAS strided-batched GEMM in cuBLAS's column-major terms (kernels/gemm.py): C = op(A) op(B)."""
    transa: int
    transb: int
    m: int
    n: int
    k: int
    a: Buffer
    lda: int
    stride_a: int
    b: Buffer
    ldb: int
    stride_b: int
    c: Buffer
    ldc: int
    stride_c: int
    batch: int

    @classmethod
    def from_json(cls, raw: dict) -> "Gemm":
        return cls(**{f.name: Buffer.from_json(raw[f.name]) if f.name in ("a", "b", "c") else raw[f.name] for f in fields(cls)})

    def to_json(self) -> dict:
        return _fields_json(self)


@dataclass(frozen=True)
class Epilogue:
    """What cuBLASLt adds as it writes a GEMM's product: its kind (a key of runtime.cublas's
    LT_EPILOGUES), the bias vector, the aux matrix (GELU's pre-activation) and the residual."""
    kind: str
    bias: Buffer | None
    aux: Buffer | None
    residual: Buffer | None

    @classmethod
    def from_json(cls, raw: dict) -> "Epilogue":
        return cls(raw["kind"], *(_optional_buffer(raw[key]) for key in ("bias", "aux", "residual")))

    def to_json(self) -> dict:
        return _fields_json(self)


@dataclass(frozen=True)
class Scales:
    """An FP8 product's float32 scalars that undo its operands' scaling, in cuBLAS's names for the
    operands: cuBLASLt multiplies the accumulator by both. `fast`: the sums stay in the FP8 tensor
    cores' accumulator through the whole of k (Transformer Engine's forward products); otherwise
    cuBLASLt moves them into float32 registers every few k-steps (its backward products)."""
    a: Buffer
    b: Buffer
    fast: bool

    @classmethod
    def from_json(cls, raw: dict) -> "Scales":
        # a plan whose FP8 products are all forward ones may leave `fast` out: they all keep their sums
        return cls(Buffer.from_json(raw["a"]), Buffer.from_json(raw["b"]), raw.get("fast", True))

    def to_json(self) -> dict:
        return _fields_json(self)


@dataclass(frozen=True)
class GemmCall:
    """A matrix product's cuBLASLt call: the GEMM, and what it adds as it writes (its epilogue) and
    multiplies by (an FP8 product's scales)."""
    gemm: Gemm
    epilogue: Epilogue | None = None
    scales: Scales | None = None

    @classmethod
    def from_json(cls, raw: dict) -> "GemmCall":
        return cls(Gemm.from_json(raw["gemm"]), Epilogue.from_json(raw["epilogue"]) if "epilogue" in raw else None,
                   Scales.from_json(raw["scales"]) if "scales" in raw else None)

    def to_json(self) -> dict:
        return {"gemm": self.gemm.to_json(), **({"epilogue": self.epilogue.to_json()} if self.epilogue else {}),
                **({"scales": self.scales.to_json()} if self.scales else {})}


def _call_from_json(raw: dict) -> KernelCall | GemmCall:
    return GemmCall.from_json(raw) if "gemm" in raw else KernelCall.from_json(raw)


@dataclass(frozen=True, kw_only=True)
class Launch:
    """One step of a program: its op, kind and attributes, the buffers it writes and reads, where it
    came from, its CUDA call (None for a collective, which a backend runs itself) and its stream and
    the launches of its program it waits for. A launch built only to lower one kernel may leave
    kind, node and where out."""
    op: str
    kind: str = ""
    out: Buffer
    outs: tuple[Buffer, ...] | None = None  # an op with several outputs: all of them, `out` first
    ins: tuple[Buffer, ...]                 # plan.json's "in"
    attrs: dict = field(default_factory=dict)  # op-specific, as its NumPy reference reads them
    node: int = 0                           # the graph node it runs
    where: str | None = None                # the model file's line, or what else made it (None: nothing to say)
    cuda: KernelCall | GemmCall | None = None
    stream: int = 0
    waits: tuple[int, ...] = ()

    @property
    def outputs(self) -> tuple[Buffer, ...]:
        """Every buffer the launch writes, `out` first."""
        return self.outs or (self.out,)

    @classmethod
    def from_json(cls, raw: dict) -> "Launch":
        return cls(op=raw["op"], kind=raw["kind"], out=Buffer.from_json(raw["out"]),
                   outs=tuple(Buffer.from_json(b) for b in raw["outs"]) if "outs" in raw else None,
                   ins=tuple(Buffer.from_json(b) for b in raw["in"]), attrs=raw["attrs"], node=raw["node"],
                   where=raw["where"], cuda=_call_from_json(raw["cuda"]) if "cuda" in raw else None,
                   stream=raw["stream"], waits=tuple(raw["waits"]))

    def to_json(self) -> dict:
        raw = {"op": self.op, "kind": self.kind, "out": self.out.to_json()}
        if self.outs is not None:
            raw["outs"] = _as_json(self.outs)
        raw.update({"in": _as_json(self.ins), "attrs": _as_json(self.attrs), "node": self.node, "where": self.where})
        if self.cuda is not None:
            raw["cuda"] = self.cuda.to_json()
        return {**raw, "stream": self.stream, "waits": list(self.waits)}


@dataclass(frozen=True, kw_only=True)
class Program:
    """One program of the plan: its inputs and outputs by name, its launches in order, the bytes of
    work region it needs (work_peak; work_sum and work_lower_bound beside it, for the report) and
    the FLOPs of its matrix products per run (for MFU)."""
    inputs: dict[str, Buffer] = field(default_factory=dict)
    outputs: dict[str, Buffer] = field(default_factory=dict)
    launches: tuple[Launch, ...] = ()
    memory: dict[str, int] = field(default_factory=dict)
    matmul_flops: int = 0

    @classmethod
    def from_json(cls, raw: dict) -> "Program":
        return cls(inputs={name: Buffer.from_json(b) for name, b in raw["inputs"].items()},
                   outputs={name: Buffer.from_json(b) for name, b in raw["outputs"].items()},
                   launches=tuple(Launch.from_json(launch) for launch in raw["launches"]),
                   memory=raw["memory"], matmul_flops=raw["matmul_flops"])

    def to_json(self) -> dict:
        return {"inputs": {name: b.to_json() for name, b in self.inputs.items()},
                "outputs": {name: b.to_json() for name, b in self.outputs.items()},
                "launches": [launch.to_json() for launch in self.launches],
                "memory": self.memory, "matmul_flops": self.matmul_flops}


@dataclass
class Plan:
    data: dict
    digest: str  # sha256 of plan.json's bytes: equal plans, equal digests
    kernels: dict[str, str] = field(default_factory=dict)  # "kernels/<family>.cu" -> CUDA source
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # a constant tensor's name -> float32 values

    def constant_buffers(self) -> list[tuple[Buffer, np.ndarray]]:
        """Where each constant tensor goes in the arena, and its values."""
        return [(Buffer(t["dtype"], t["offset"], tuple(t["shape"])), self.constants[t["name"]])
                for t in self.data["consts"].get("tensors", [])]

    @property
    def config(self) -> dict:
        return self.data["config"]

    @property
    def optimizer(self) -> dict:
        return self.data["optimizer"]

    @property
    def tokenizer(self) -> dict:
        return self.data["tokenizer"]

    @property
    def tensors(self) -> list[dict]:
        return self.data["tensors"]

    @property
    def params(self) -> list[dict]:
        return [t for t in self.tensors if t["kind"] == "param"]

    @property
    def programs(self) -> dict[str, Program]:
        return self.data["programs"]

    def program(self, name: str) -> Program:
        return self.programs[name]


def to_text(data: dict) -> str:
    """Deterministic JSON: one launch or tensor per line, so plans diff well in git. A record (a
    Program, a Buffer) is written as the JSON it stands for."""
    def dump(obj, indent: str) -> str:
        if isinstance(obj, dict) and obj and not _is_leaf(obj):
            inner = indent + " "
            items = [f"{inner}{json.dumps(k)}: {dump(v, inner)}" for k, v in obj.items()]
            return "{\n" + ",\n".join(items) + "\n" + indent + "}"
        if isinstance(obj, (list, tuple)) and obj and not _is_leaf(obj):
            inner = indent + " "
            return "[\n" + ",\n".join(inner + dump(v, inner) for v in obj) + "\n" + indent + "]"
        return json.dumps(obj, separators=(",", ":"))
    return dump(_as_json(data), "") + "\n"


def _is_leaf(obj) -> bool:
    """Small records (a launch, a buffer, a shape) stay on one line."""
    if isinstance(obj, (list, tuple)):
        return all(not isinstance(v, (dict, list, tuple)) or _is_leaf(v) for v in obj) and len(obj) <= 8
    return "op" in obj or "kind" in obj or all(not isinstance(v, (dict, list, tuple)) for v in obj.values())


def check_out(out_dir) -> None:
    """Refuse an output path that `save` would lose work at: it may be missing, an empty directory
    or a directory that holds exactly what a graphgpt compile wrote there (its manifest says what).
    A plan a killed compile had set aside is put back first."""
    out_dir = Path(out_dir)
    put_back(out_dir)
    if out_dir.is_symlink():
        raise UserError(f"--out {out_dir} is a symbolic link: name the directory itself")
    if not out_dir.exists():
        parent = next(p for p in out_dir.absolute().parents if p.exists())
        if not parent.is_dir():
            raise UserError(f"--out {out_dir}: {parent} is not a directory")
        return
    if not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a plan directory; it is left as it is")
    if not any(out_dir.iterdir()):
        return
    differs = _differs_from_manifest(out_dir)
    if differs:
        raise UserError(f"--out {out_dir} is not a graphgpt plan as compiled ({differs}); it is left as it is "
                        f"(--out takes a new or empty directory or a plan directory graphgpt wrote)")


def _differs_from_manifest(path: Path) -> str | None:
    """How the directory differs from what its manifest lists (None: not at all): every file listed,
    of its size and sha256, and nothing else, no symbolic link, no folder of its own."""
    try:
        listed = jsontext.loads((path / MANIFEST).read_bytes())["files"]
        sizes = {rel: int(f["bytes"]) for rel, f in listed.items()}
        hashes = {rel: str(f["sha256"]) for rel, f in listed.items()}
    except FileNotFoundError:
        return f"it holds no {MANIFEST}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"its {MANIFEST} cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})"
    folders = {str(parent) for rel in listed for parent in Path(rel).parents} - {"."}
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            entry = Path(root, name)
            rel = str(entry.relative_to(path))
            if entry.is_symlink():
                return f"{rel} is a symbolic link"
            if name in dirs and rel not in folders or name in files and rel not in listed and rel != MANIFEST:
                return f"{rel} is not a file of the plan"
    for rel in listed:
        entry = path / rel
        if not entry.is_file():
            return f"{rel} is missing"
        if entry.stat().st_size != sizes[rel] or hashlib.sha256(entry.read_bytes()).hexdigest() != hashes[rel]:
            return f"{rel} was changed after it was compiled"
    return None


def plan_files(data: dict, files: dict[str, str | bytes]) -> dict[str, bytes]:
    """Every file of a plan directory (relative path -> bytes): plan.json, `files` and, last, the
    manifest, which lists the others with their sizes and sha256."""
    contents = {rel: c.encode() if isinstance(c, str) else c for rel, c in {PLAN_FILE: to_text(data), **files}.items()}
    listed = {rel: {"bytes": len(c), "sha256": hashlib.sha256(c).hexdigest()} for rel, c in sorted(contents.items())}
    return {**contents, MANIFEST: (json.dumps({"files": listed}, indent=1) + "\n").encode()}


def save(data: dict, out_dir: Path, files: dict[str, str | bytes]) -> None:
    """Write the plan's files (`plan_files`) into out_dir, replacing it whole. Everything is written to a fresh staging directory beside out_dir first,
    so a failure leaves the old plan as it was. A failure to write is one line (UserError)."""
    out_dir = Path(out_dir)
    check_out(out_dir)  # again: the path may have changed while the plan was compiled
    contents = plan_files(data, files)
    try:
        with staging_beside(out_dir) as plan_dir:
            for rel, content in contents.items():  # in order: the manifest last
                _write_synced(plan_dir / rel, content)
            for folder in {(plan_dir / rel).parent for rel in contents}:
                fsync_dir(folder)
            replace_dir(plan_dir, out_dir)
    except OSError as e:
        kept = "the old plan is kept" if out_dir.exists() else "nothing was written"
        raise UserError(f"cannot write the plan to {out_dir}: {e.strerror or e}; {kept}") from None


def _write_synced(path: Path, content: bytes) -> None:
    """A file of the staging directory, on disk before the directory is swapped in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def staging_beside(target: Path) -> Iterator[Path]:
    """A new empty directory to fill and `replace_dir` in place of `target`, inside a marked
    temporary beside it that is removed on the way out, whatever happened. What killed writers
    left beside `target` is cleared up first (`_remove_leftovers`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    staging = _temporary_dir(target, ".staging")
    try:
        new = staging / target.name  # a folder of its own: mkdtemp's is private (0700), the result is not
        new.mkdir()
        yield new
    finally:
        _remove_temporary(staging)


def _temporary_dir(beside: Path, suffix: str) -> Path:
    """A fresh directory beside `beside`, `.NAME.RANDOM.SUFFIX`, holding graphgpt's marker: only a
    directory with the marker is ever removed as a temporary."""
    path = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", suffix=suffix, dir=beside.parent))
    try:
        (path / TEMPORARY_MARKER).write_text(f"graphgpt temporary beside {beside.name}, pid {os.getpid()}\n")
    except BaseException:
        (path / TEMPORARY_MARKER).unlink(missing_ok=True)  # cut short by a full disk: nothing else is in it
        path.rmdir()
        raise
    return path


def _remove_temporary(path: Path) -> None:
    """Remove a marked temporary directory, its marker last: one whose removal a kill or an error
    cut short is still marked, and a later run removes the rest."""
    marker = path / TEMPORARY_MARKER
    if not marker.is_file() or marker.is_symlink():
        return
    with contextlib.suppress(OSError):
        for entry in path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry != marker:
                entry.unlink()
        marker.unlink()
        path.rmdir()


def put_back(target: Path) -> None:
    """Where `target` is missing because a writer was killed in `replace_dir` between its two
    renames, rename the old directory it had set aside back to `target`. The old copy, not the new
    one: it was whole when it was moved aside in one rename, and the killed run never said it had
    finished. A live writer's set-aside copy is its own business."""
    if os.path.lexists(target):
        return
    for aside in _dead_writers(target):
        old = aside / target.name
        if aside.name.endswith(".old") and old.is_dir() and not old.is_symlink():
            try:
                os.replace(old, target)
                fsync_dir(target.parent)
            except OSError as e:
                raise UserError(f"{target} is missing: a run killed while replacing it set the old one aside "
                                f"as {old}, which cannot be moved back ({e.strerror or e})") from None
            _remove_temporary(aside)
            return


def _remove_leftovers(target: Path) -> None:
    """Put back an old directory a killed writer had set aside (`put_back`), then remove the rest
    of what killed writers left beside `target`: staging directories, old copies set aside once the
    new one was in place, and either one's remains where a kill cut its removal short."""
    put_back(target)
    for path in _dead_writers(target):  # none holds the only copy of `target` any more: it is back
        _remove_temporary(path)


def _dead_writers(target: Path) -> list[Path]:
    """The temporary directories beside `target` whose marker names `target` and a writer that is gone."""
    found = []
    for path in target.parent.glob(f".{glob.escape(target.name)}.*"):
        writer = _writer(path, target)
        if writer is not None and not process_alive(writer):
            found.append(path)
    return found


def _writer(path: Path, target: Path) -> int | None:
    """The pid in a temporary directory's marker; None where there is no marker of graphgpt's for `target`."""
    marker = path / TEMPORARY_MARKER
    try:
        found = re.fullmatch(rf"graphgpt temporary beside {re.escape(target.name)}, pid (\d+)\n", marker.read_text())
    except (OSError, UnicodeDecodeError):
        return None
    return int(found.group(1)) if found and not marker.is_symlink() else None


def replace_dir(new: Path, target: Path) -> None:
    """Swap a fully written directory `new` in place of `target` (missing, empty or a plan). The old
    directory moves aside into a marked temporary directory and is removed only once the new one
    is in place; if the swap fails, it is moved back, and if the process is killed between the two
    renames, the next run of a tool puts it back (`put_back`)."""
    if not target.exists():
        os.replace(new, target)
        fsync_dir(target.parent)
        return
    aside = _temporary_dir(target, ".old")
    old = aside / target.name
    try:
        os.replace(target, old)
        os.replace(new, target)
    except BaseException:
        # Where it was cut short is read from the disk: a signal's exception can arrive just after
        # a rename that took place.
        if not os.path.lexists(target) and old.is_dir():
            os.replace(old, target)  # should this fail too, the old one stays in `aside` for `put_back`
        _remove_temporary(aside)
        raise
    fsync_dir(target.parent)
    _remove_temporary(aside)


def load(plan_dir) -> Plan:
    plan_dir = Path(plan_dir)
    path = plan_dir / PLAN_FILE
    put_back(plan_dir)
    if not plan_dir.is_dir():
        if plan_dir.exists():
            raise UserError(f"plan directory {plan_dir} is not a directory: name the directory tools/compile.py wrote")
        raise UserError(f"plan directory {plan_dir} does not exist (compile one: python tools/compile.py model.py --out {plan_dir})")
    if not path.is_file():
        raise UserError(f"{plan_dir} holds no {PLAN_FILE}: not a compiled plan")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path} cannot be read: {e.strerror}") from None
    try:
        data = jsontext.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise UserError(f"{path} has schema version {version}; this graphgpt reads version "
                        f"{SCHEMA_VERSION}: recompile it with tools/compile.py")
    kernels = {}
    for kernel in sorted((plan_dir / "kernels").glob("*.cu")):
        try:
            kernels[f"kernels/{kernel.name}"] = kernel.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{kernel} cannot be read as CUDA source ({getattr(e, 'strerror', None) or e})") from None
    from . import plan_schema  # here: the schema names the runtime's ops, and the runtime imports this module
    try:
        plan_schema.check(data, kernels)
    except plan_schema.PlanError as e:
        raise UserError(f"{path}: {e} (recompile it with tools/compile.py)") from None
    digest = hashlib.sha256(raw).hexdigest()
    if _edited(plan_dir, digest):
        raise UserError(f"{path} was changed after it was compiled (its {MANIFEST} lists other bytes): "
                        f"a plan's parts are made together, so recompile it with tools/compile.py")
    constants = _constants(plan_dir, data["consts"].get("tensors", []))
    data["programs"] = {name: Program.from_json(program) for name, program in data["programs"].items()}
    return Plan(data, digest, kernels, constants)


def _edited(plan_dir: Path, digest: str) -> bool:
    """Whether the plan's manifest lists plan.json with another sha256 than `digest`. Its buffers, shapes
    and launches are consistent only as compiled; the kernels may be edited, and a plan without a
    readable manifest is taken as it is."""
    try:
        listed = jsontext.loads((plan_dir / MANIFEST).read_bytes())["files"][PLAN_FILE]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return listed != digest


def _constants(plan_dir: Path, listed: list[dict]) -> dict[str, np.ndarray]:
    """The constant tensors plan.json lists (plan_schema has checked the list), from the plan's
    CONSTANTS_FILE: each there, float32 and of its shape."""
    if not listed:
        return {}
    path = plan_dir / CONSTANTS_FILE
    if not path.is_file():
        raise UserError(f"{plan_dir} holds no {CONSTANTS_FILE}, which its plan's constant tensors are read from "
                        f"(recompile it with tools/compile.py)")
    values = load_safetensors(path)
    for t in listed:
        found = values.get(t["name"])
        if found is None or found.dtype != np.float32 or list(found.shape) != t["shape"]:
            got = "missing" if found is None else f"{found.dtype} of shape {list(found.shape)}"
            raise UserError(f"{path}: constant {t['name']!r} is {got}, not float32 of shape {t['shape']} "
                            f"(recompile it with tools/compile.py)")
    return {t["name"]: values[t["name"]] for t in listed}

