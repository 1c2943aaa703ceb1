"""The plan: everything `run` needs, as data. Saved as `plan.json` beside its kernels and dumps.

plan.json holds the schema version, the model hash, the configuration, the tokenizer, the arena
layout (persistent tensors with their offsets and initialisers, constants) and, per program
("train", "generate"), its inputs, outputs and ordered launches. A launch names its op, its
attributes and its operand buffers as [arena, offset, shape]; a backend derives nothing.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .fsutil import replace_dir

SCHEMA_VERSION = 1
PLAN_FILE = "plan.json"


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


def save(data: dict, out_dir: Path, files: dict[str, str | bytes]) -> None:
    """Write plan.json and `files` (relative path -> content) into out_dir, replacing it whole."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    for rel, content in {PLAN_FILE: to_text(data), **files}.items():
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    replace_dir(staging, out_dir)


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
    kernels = {f"kernels/{p.name}": p.read_text() for p in sorted((plan_dir / "kernels").glob("*.cu"))}
    return Plan(data, hashlib.sha256(raw).hexdigest(), kernels)
