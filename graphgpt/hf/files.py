"""What every Hugging Face family shares: the directory's two files (and the manifest an export
writes beside them), config.json's type checks, the vocabulary's padding and the lm_head, which
Hugging Face stores (vocab, n_embd) where graphgpt keeps (n_embd, vocab)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .. import jsontext
from ..errors import UserError
from ..fsutil import atomic_write_bytes, atomic_write_text
from ..tensor_files import safetensors_bytes

CONFIG, WEIGHTS = "config.json", "model.safetensors"
# Written last by an export: the two files' sizes and sha256. A downloaded or hand-made directory
# has none, so only a directory graphgpt exported, unchanged since, is ever replaced by an export.
MANIFEST = "graphgpt-export.json"
HEAD = "lm_head.weight"  # Hugging Face's name and graphgpt's, for both families

_IS = {"a string": lambda v: isinstance(v, str), "an integer": lambda v: type(v) is int,
       "an integer or null": lambda v: v is None or type(v) is int, "a number": lambda v: type(v) in (int, float),
       "true or false": lambda v: isinstance(v, bool), "an object or null": lambda v: v is None or isinstance(v, dict)}


def model_tensors(path: Path, tensors: dict, prefix: str, skipped: tuple[str, ...], family: str):
    """(name without `prefix`, float32 value) of each tensor of directory `path` but the lm_head
    and the buffers whose names end in `skipped`; one line for a tensor not under `prefix`."""
    for name, value in tensors.items():
        if name == HEAD or name.endswith(skipped):
            continue
        if not name.startswith(prefix):
            raise UserError(f"{path / WEIGHTS}: tensor {name} is not a {family}'s")
        yield name[len(prefix):], np.asarray(value, np.float32)


def is_hf_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file() and (Path(path) / WEIGHTS).is_file()


def read_config(path: Path) -> dict:
    """config.json of directory `path`, a JSON object."""
    try:
        hf = jsontext.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path / CONFIG}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(hf, dict):
        raise UserError(f"{path / CONFIG}: a JSON {type(hf).__name__}, where a Hugging Face config is an object")
    return hf


def check_types(path: Path, hf: dict, fields: dict[str, tuple[str, bool]]) -> None:
    """One line naming the file and the field: each of `fields` (name -> (its type in words,
    required)) is present where required and of its type."""
    for name, (kind, required) in fields.items():
        if name not in hf:
            if required:
                raise UserError(f"{path}: no {name} field")
        elif not _IS[kind](hf[name]):
            raise UserError(f"{path}: {name} is {json.dumps(hf[name])}, not {kind}")


def requirement(path: Path):
    """need(ok, what): one line naming the file, where `ok` is false."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UserError(f"{path}: {what}")
    return need


def pad_rows(table: np.ndarray, rows: int) -> np.ndarray:
    """A vocabulary table with the plan's `rows`: the rows past the file's start at zero."""
    if table.shape[0] > rows:
        raise UserError(f"a table of {table.shape[0]} rows does not fit the plan's {rows}")
    return np.concatenate([table, np.zeros((rows - table.shape[0], *table.shape[1:]), table.dtype)])


def lm_head(path: Path, tensors: dict, tied: bool, table: np.ndarray, config: dict) -> dict[str, np.ndarray]:
    """The plan's lm_head.weight (n_embd, vocab), none for a tied plan: a file whose head is tied
    (`tied`) gives its token table's transpose (`table`, padded), an untied one its lm_head.weight."""
    if config.get("tie_weights"):
        if not tied:
            raise UserError(f"{path}: its lm_head is not tied to the token embedding (tie_word_embeddings false); "
                            "compile the plan with tie_weights=0")
        return {}
    if tied:
        return {HEAD: table.T.copy()}
    if HEAD not in tensors:
        raise UserError(f"{path / WEIGHTS}: tie_word_embeddings is false but there is no {HEAD}")
    return {HEAD: pad_rows(np.asarray(tensors[HEAD], np.float32), config["vocab_size"]).T.copy()}


def head_tensor(weights: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """Hugging Face's lm_head.weight (vocab, n_embd) of an untied plan; none for a tied one."""
    if config.get("tie_weights"):
        return {}
    return {HEAD: np.ascontiguousarray(np.asarray(weights[HEAD], np.float32).T)}


def write(path: Path, tensors: dict[str, np.ndarray], hf: dict) -> None:
    """The directory's two files, then the manifest that lists them."""
    contents = {WEIGHTS: safetensors_bytes(tensors, {"format": "pt"}),
                CONFIG: (json.dumps(hf, indent=2) + "\n").encode()}
    path.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        atomic_write_bytes(path / name, content)
    listed = {name: {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
              for name, content in contents.items()}
    atomic_write_text(path / MANIFEST, json.dumps({"files": listed}, indent=1) + "\n")


def differs_from_export(path: Path) -> str | None:
    """How directory `path` differs from an export as graphgpt wrote it (None: not at all): the
    files its manifest lists, each of its size and sha256, and nothing else, no symbolic link."""
    try:
        listed = jsontext.loads((path / MANIFEST).read_bytes())["files"]
        expected = {name: (int(f["bytes"]), str(f["sha256"])) for name, f in listed.items()}
    except FileNotFoundError:
        return f"it holds no {MANIFEST}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"its {MANIFEST} cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})"
    for entry in path.iterdir():
        if entry.is_symlink():
            return f"{entry.name} is a symbolic link"
        if entry.name != MANIFEST and entry.name not in expected:
            return f"{entry.name} is not a file of the export"
    for name, (size, digest) in expected.items():
        entry = path / name
        if not entry.is_file():
            return f"{name} is missing"
        if entry.stat().st_size != size or _sha256(entry) != digest:
            return f"{name} was changed after it was exported"
    return None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
