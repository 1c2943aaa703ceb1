"""Hugging Face model directories in and out: `config.json` and `model.safetensors` of a
`GPT2LMHeadModel` (hf/gpt2.py, for model.py) or a `LlamaForCausalLM` (hf/llama.py, for
models/llama.py).

Reading, config.json's model_type chooses the family; writing, the plan's parameter names do.
Each family module says how its names and layouts map onto graphgpt's (`weights`, `hf_tensors`,
`hf_config`), which of its config.json's fields it reads (`FIELDS`), what its model file cannot
follow (`check_model`), what must equal the plan's (`check_plan`) and the compile settings a
config.json gives (`settings`); hf/files.py holds what they share.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..tensor_files import load_safetensors
from . import gpt2, llama
from .files import (CONFIG, MANIFEST, WEIGHTS, check_types, differs_from_export, is_hf_dir,  # noqa: F401
                    read_config, write)  # (is_hf_dir, differs_from_export: the package's)

FAMILIES = {family.MODEL_TYPE: family for family in (gpt2, llama)}
# Settings a model file reads 0 as a rule for (the tokenizer's vocabulary, the MLP's usual width):
# a config.json's 0 there is no model, not a wish for the rule.
RULES_AT_ZERO = ("vocab_size", "n_hidden")


def _checked_config(path: Path):
    """(family, config.json) of directory `path`, its types and what its model file cannot follow
    checked: one line naming the file and the field."""
    path = Path(path)
    hf = read_config(path)
    check_types(path / CONFIG, hf, {"model_type": ("a string", True)})
    family = FAMILIES.get(hf["model_type"])
    if family is None:
        raise UserError(f"{path / CONFIG}: model_type {hf['model_type']!r}; graphgpt reads "
                        + " and ".join(repr(t) for t in FAMILIES))
    check_types(path / CONFIG, hf, family.FIELDS)
    family.check_model(path / CONFIG, hf)
    return family, hf


def load(path: Path, config: dict, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    """The plan's parameters (float32, by graphgpt's names) from a Hugging Face directory; one line
    names the first thing that does not fit the plan (its `config` and parameter `shapes`)."""
    path = Path(path)
    family, hf = _checked_config(path)
    if not family.owns(shapes):
        raise UserError(f"{path / CONFIG}: model_type {family.MODEL_TYPE!r}, a {family.NAME} model, "
                        f"but the plan's parameters are not {family.NAME}'s")
    family.check_plan(path / CONFIG, hf, config, shapes)
    return family.weights(path, hf, load_safetensors(path / WEIGHTS), config)


def settings(path: Path) -> list[str]:
    """The model file's --set pairs (KEY=VALUE) that a Hugging Face directory's config.json gives,
    each naming the file and the field it came from in the compiler's errors."""
    from ..model_file import Given  # here: the compiler's module, and the run side imports this package
    family, hf = _checked_config(path)
    given = family.settings(hf)
    for key in RULES_AT_ZERO:
        value, field = given.get(key, (None, None))
        if value == 0:
            raise UserError(f"{Path(path) / CONFIG}: {field} 0: a model's {field} is at least 1")
    return [Given(f"{key}={value}", f"{Path(path) / CONFIG}: {field} {value}") for key, (value, field) in given.items()]


def vocabulary(path: Path) -> int:
    """The tokens a Hugging Face directory's model was trained on: its config.json's vocab_size."""
    return _checked_config(path)[1]["vocab_size"]


def describe(path: Path) -> str:
    """What a Hugging Face directory (already loaded, so checked) is, in words, with its sizes."""
    hf = read_config(Path(path))
    family = FAMILIES[hf["model_type"]]
    sizes = ", ".join(f"{k} {v}" for k, v in family.sizes(hf).items())
    return f"a Hugging Face {family.NAME} directory {path} ({sizes})"


def family_of_params(names):
    """The family that writes a plan of these parameter names; one line where none does."""
    names = set(names)
    for family in FAMILIES.values():
        if family.owns(names):
            return family
    raise UserError("the plan's parameters are neither model.py's (GPT-2) nor models/llama.py's (LLaMA): "
                    "there is no Hugging Face model to write them as")


def save(path: Path, weights: dict[str, np.ndarray], config: dict, eos_id: int) -> None:
    """Write `weights` (graphgpt's names, the plan's `config`) as a Hugging Face directory of their
    family, with the manifest that marks it as graphgpt's; `eos_id` is the plan's tokenizer's
    end-of-text id."""
    family = family_of_params(weights)
    write(Path(path), family.hf_tensors(weights, config), family.hf_config(weights, config, eos_id))
