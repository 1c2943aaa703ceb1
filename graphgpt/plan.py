"""The plan: everything `run` needs, as data. Saved as `plan.json` beside its kernels and dumps.

plan.json holds the schema version, the model hash, the configuration, the tokenizer, the arena
layout (persistent tensors with their offsets and initialisers, constants) and, per program
("train" or "accumulate" and "update", then "eval", "generate" and, where the model decodes with
key/value caches, "decode", and for a plan in bf16 "cast_weights"), its inputs, outputs and
ordered launches. A launch names its op, its kind, its attributes and its buffers as [dtype, byte
offset, shape] in one arena: `out`, for an op with several outputs also `outs` (all of them, `out`
first), and `in`; its `cuda` record gives the kernel or library call, grid, block, dynamic shared
memory and arguments; `stream` and `waits` say where it runs (0, the main stream, or 1, the side
stream of the gradient branch's kernels) and which launches of its program, on the other stream,
it waits for (passes/streams.py). `nvrtc_options` are what the kernel files compile with. A backend
derives nothing.

A plan directory holds plan.json, report.txt, kernels/ and graphs/, and nothing else: `save` replaces
such a directory (or an empty or missing one) as a whole, and refuses any other path untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

# 2: one byte-addressed arena, buffers [dtype, byte offset, shape]; 3: the generation programs
# decode with key/value caches (caches, decode, cast_weights) and give their greedy next tokens;
# 4: every program of a bf16 plan reads the weights' copies, which the update keeps current;
# 5: a GEMM's epilogue names its cuBLASLt kind and its aux matrix (GELU's pre-activation);
# 6: a fused_sum may sum several values into several outputs (attrs "results"); 7: fused_normalize
# (LayerNorm's affine part stored by its normalize) and sum_group (column sums in one launch);
# 8: every launch names its stream and the launches it waits for; 9: the NVRTC options of the
# kernel files ("nvrtc_options")
SCHEMA_VERSION = 9
# The program that writes every weight's copy in the compute type from the weights: a backend
# runs it before its next program whenever something other than a program wrote the weights.
CAST_WEIGHTS = "cast_weights"
PLAN_FILE = "plan.json"
PLAN_FILES = {PLAN_FILE, "report.txt"}  # what a plan directory holds besides its folders
PLAN_FOLDERS = {"kernels", "graphs"}    # each holding plain files only


@dataclass
class Plan:
    data: dict
    digest: str  # sha256 of plan.json's bytes: equal plans, equal digests
    kernels: dict[str, str] = field(default_factory=dict)  # "kernels/<family>.cu" -> CUDA source

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

    def program(self, name: str) -> dict:
        return self.data["programs"][name]


def to_text(data: dict) -> str:
    """Deterministic JSON: one launch or tensor per line, so plans diff well in git."""
    def dump(obj, indent: str) -> str:
        if isinstance(obj, dict) and obj and not _is_leaf(obj):
            inner = indent + " "
            items = [f"{inner}{json.dumps(k)}: {dump(v, inner)}" for k, v in obj.items()]
            return "{\n" + ",\n".join(items) + "\n" + indent + "}"
        if isinstance(obj, list) and obj and not _is_leaf(obj):
            inner = indent + " "
            return "[\n" + ",\n".join(inner + dump(v, inner) for v in obj) + "\n" + indent + "]"
        return json.dumps(obj, separators=(",", ":"))
    return dump(data, "") + "\n"


def _is_leaf(obj) -> bool:
    """Small records (a launch, a buffer, a shape) stay on one line."""
    if isinstance(obj, list):
        return all(not isinstance(v, (dict, list)) or _is_leaf(v) for v in obj) and len(obj) <= 8
    return "op" in obj or "kind" in obj or all(not isinstance(v, (dict, list)) for v in obj.values())


def check_out(out_dir) -> None:
    """Refuse an output path that `save` would lose work at: it may be missing, an empty directory
    or a plan directory (of any schema version, so that old plans can be compiled over)."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise UserError(f"--out {out_dir} is a symbolic link: name the directory itself")
    if not out_dir.exists():
        parent = next(p for p in out_dir.absolute().parents if p.exists())
        if not parent.is_dir():
            raise UserError(f"--out {out_dir}: {parent} is not a directory")
        return
    if not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a plan directory; it is left as it is")
    if any(out_dir.iterdir()) and not _is_plan_dir(out_dir):
        raise UserError(f"--out {out_dir} holds files that are not a graphgpt plan; it is left as it is "
                        f"(--out takes a new or empty directory or a plan directory)")


def _is_plan_dir(path: Path) -> bool:
    """plan.json of a plan, and nothing but the files and folders a plan has."""
    try:
        data = json.loads((path / PLAN_FILE).read_bytes())
    except (OSError, ValueError):  # missing, unreadable or not JSON (UnicodeDecodeError is a ValueError)
        return False
    if not (isinstance(data, dict) and {"schema_version", "model_hash"} <= set(data)):
        return False
    for entry in path.iterdir():
        if entry.is_symlink():
            return False
        if entry.name in PLAN_FOLDERS and entry.is_dir():
            if not all(f.is_file() and not f.is_symlink() for f in entry.iterdir()):
                return False
        elif not (entry.name in PLAN_FILES and entry.is_file()):
            return False
    return True


def save(data: dict, out_dir: Path, files: dict[str, str | bytes]) -> None:
    """Write plan.json and `files` (relative path -> content) into out_dir, replacing it whole.
    Everything is written to a fresh staging directory beside out_dir first, so a failure leaves
    the old plan as it was."""
    out_dir = Path(out_dir)
    check_out(out_dir)  # again: the path may have changed while the plan was compiled
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".staging", dir=out_dir.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would make the plan private
        for rel, content in {PLAN_FILE: to_text(data), **files}.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful swap


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_dir(staging: Path, target: Path) -> None:
    """Swap a fully written staging directory in place of `target` (missing, empty or a plan). The
    old directory moves aside into a fresh directory and is removed only once the new one is in
    place; if the swap fails, it is moved back."""
    if not target.exists():
        os.replace(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    old = aside / target.name
    try:
        os.replace(target, old)
    except BaseException:
        aside.rmdir()
        raise
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)  # should this fail too, the old plan stays in `aside`, not lost
        aside.rmdir()
        raise
    shutil.rmtree(aside)


def load(plan_dir) -> Plan:
    plan_dir = Path(plan_dir)
    path = plan_dir / PLAN_FILE
    if not plan_dir.is_dir():
        raise UserError(f"plan directory {plan_dir} does not exist (compile one: python tools/compile.py model.py --out {plan_dir})")
    if not path.is_file():
        raise UserError(f"{plan_dir} holds no {PLAN_FILE}: not a compiled plan")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
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
    return Plan(data, hashlib.sha256(raw).hexdigest(), kernels)
