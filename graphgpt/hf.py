"""Hugging Face GPT-2 directories in and out: `config.json` and `model.safetensors` of a
`GPT2LMHeadModel`.

Hugging Face names a parameter `transformer.<graphgpt's name>` (the embeddings
`transformer.wte.weight` and `transformer.wpe.weight`, graphgpt's `wte` and `wpe`) and stores
its Conv1D weights (in, out), as graphgpt does, so a weight moves unchanged. What differs:
  - the lm_head: tied to `wte` (no tensor of its own) unless `tie_word_embeddings` is false, when
    `lm_head.weight` is stored (vocab, n_embd), the transpose of graphgpt's untied (n_embd, vocab);
  - the vocabulary may be padded in the plan (GPT-2's 50257 tokens in a 50304-row table): the
    extra rows start at zero;
  - a model with more positions than the plan's block_size gives the plan its first block_size
    rows of `wpe` (as nanoGPT's crop_block_size does);
  - older files carry each layer's causal mask as `attn.bias` / `attn.masked_bias`: not weights.
Only GPT-2 itself is read: tanh GELU ("gelu_new"), LayerNorm eps 1e-5, no scaling options.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import UserError
from .fsutil import atomic_write_text
from .tensor_files import load_safetensors, save_safetensors

CONFIG, WEIGHTS = "config.json", "model.safetensors"
PREFIX = "transformer."
EMBEDDINGS = {"wte.weight": "wte", "wpe.weight": "wpe"}  # Hugging Face's name (after PREFIX) -> graphgpt's
MASKS = (".attn.bias", ".attn.masked_bias")  # buffers, not parameters
GELU = ("gelu_new", "gelu_pytorch_tanh")       # GPT-2's tanh approximation, model.py's
EPS = 1e-5


def is_hf_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file() and (Path(path) / WEIGHTS).is_file()


def load(path: Path, config: dict) -> dict[str, np.ndarray]:
    """The plan's parameters (float32, by graphgpt's names) from a Hugging Face GPT-2 directory;
    one line names the first thing that does not fit the plan's `config`."""
    path = Path(path)
    try:
        hf = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path / CONFIG}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    _check_types(path / CONFIG, hf)
    _check_config(path, hf, config)
    tensors = {name: value for name, value in load_safetensors(path / WEIGHTS).items()
               if not name.endswith(MASKS)}
    C, V, T = config["n_embd"], config["vocab_size"], config["block_size"]
    weights = {}
    for name, value in tensors.items():
        if name == "lm_head.weight":
            continue
        if not name.startswith(PREFIX):
            raise UserError(f"{path / WEIGHTS}: tensor {name} is not a GPT2LMHeadModel's")
        name = name[len(PREFIX):]
        weights[EMBEDDINGS.get(name, name)] = np.asarray(value, np.float32)
    for name in ("wte", "wpe"):
        if name not in weights:
            raise UserError(f"{path / WEIGHTS}: no transformer.{name}.weight")
    weights["wte"] = _pad_rows(weights.pop("wte"), V)
    weights["wpe"] = weights.pop("wpe")[:T]
    tied = hf.get("tie_word_embeddings", True)
    if not config.get("tie_weights"):
        if tied:
            weights["lm_head.weight"] = weights["wte"].T.copy()
        elif "lm_head.weight" in tensors:
            weights["lm_head.weight"] = _pad_rows(np.asarray(tensors["lm_head.weight"], np.float32), V).T.copy()
        else:
            raise UserError(f"{path / WEIGHTS}: tie_word_embeddings is false but there is no lm_head.weight")
    elif not tied:
        raise UserError(f"{path}: its lm_head is not tied to wte (tie_word_embeddings false); "
                        "compile the plan with tie_weights=0")
    if weights["wte"].shape != (V, C):
        raise UserError(f"{path / WEIGHTS}: wte is {weights['wte'].shape}, the plan's ({V}, {C})")
    return weights


# The fields of config.json that are read: (their type in words, required). Hugging Face writes
# all of them but n_inner (null for 4 * n_embd); a file that lacks one is not a GPT2LMHeadModel's.
FIELDS = {"model_type": ("a string", True), "n_layer": ("an integer", True), "n_head": ("an integer", True),
          "n_embd": ("an integer", True), "vocab_size": ("an integer", True), "n_positions": ("an integer", True),
          "n_inner": ("an integer or null", False), "activation_function": ("a string", False),
          "layer_norm_epsilon": ("a number", False), "tie_word_embeddings": ("true or false", False),
          "scale_attn_weights": ("true or false", False), "scale_attn_by_inverse_layer_idx": ("true or false", False),
          "reorder_and_upcast_attn": ("true or false", False)}
_IS = {"a string": lambda v: isinstance(v, str), "an integer": lambda v: type(v) is int,
       "an integer or null": lambda v: v is None or type(v) is int, "a number": lambda v: type(v) in (int, float),
       "true or false": lambda v: isinstance(v, bool)}


def _check_types(path: Path, hf: object) -> None:
    """One line naming the file and the field: config.json is an object whose fields above are
    present where required and of their type."""
    if not isinstance(hf, dict):
        raise UserError(f"{path}: a JSON {type(hf).__name__}, where a Hugging Face config is an object")
    for name, (kind, required) in FIELDS.items():
        if name not in hf:
            if required:
                raise UserError(f"{path}: no {name} field")
        elif not _IS[kind](hf[name]):
            raise UserError(f"{path}: {name} is {json.dumps(hf[name])}, not {kind}")


def _check_config(path: Path, hf: dict, config: dict) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UserError(f"{path / CONFIG}: {what}")
    need(hf.get("model_type") == "gpt2", f"model_type {hf.get('model_type')!r}, not 'gpt2'")
    for theirs, ours in (("n_layer", "n_layer"), ("n_head", "n_head"), ("n_embd", "n_embd")):
        need(hf.get(theirs) == config[ours], f"{theirs} {hf.get(theirs)}, the plan's {ours} is {config[ours]}")
    need(hf.get("vocab_size", 0) <= config["vocab_size"],
         f"vocab_size {hf.get('vocab_size')} is more than the plan's {config['vocab_size']}")
    need(hf.get("n_positions", 0) >= config["block_size"],
         f"n_positions {hf.get('n_positions')} is less than the plan's block_size {config['block_size']}")
    need(hf.get("activation_function", "gelu_new") in GELU,
         f"activation_function {hf.get('activation_function')!r}: model.py's GELU is the tanh one (gelu_new)")
    need(abs(hf.get("layer_norm_epsilon", EPS) - EPS) < 1e-12, f"layer_norm_epsilon {hf.get('layer_norm_epsilon')}, not {EPS}")
    need(hf.get("n_inner") in (None, 4 * config["n_embd"]), f"n_inner {hf.get('n_inner')}, not 4 * n_embd")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        need(not hf.get(flag), f"{flag} is set; model.py has no such option")
    need(hf.get("scale_attn_weights", True), "scale_attn_weights is false; model.py scales by 1/sqrt(D)")


def _pad_rows(table: np.ndarray, rows: int) -> np.ndarray:
    if table.shape[0] > rows:
        raise UserError(f"a table of {table.shape[0]} rows does not fit the plan's {rows}")
    return np.concatenate([table, np.zeros((rows - table.shape[0], *table.shape[1:]), table.dtype)])


def save(path: Path, weights: dict[str, np.ndarray], config: dict, eos_id: int) -> None:
    """Write `weights` (graphgpt's names, the plan's `config`) as a GPT2LMHeadModel directory;
    `eos_id` is the plan's tokenizer's end-of-text id."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tied = bool(config.get("tie_weights"))
    theirs = {ours: name for name, ours in EMBEDDINGS.items()}
    tensors = {PREFIX + theirs.get(name, name): np.asarray(value, np.float32) for name, value in weights.items()
               if name != "lm_head.weight"}
    if not tied:
        tensors["lm_head.weight"] = np.ascontiguousarray(np.asarray(weights["lm_head.weight"], np.float32).T)
    hf = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
          "vocab_size": config["vocab_size"], "n_positions": config["block_size"], "n_ctx": config["block_size"],
          "n_embd": config["n_embd"], "n_layer": config["n_layer"], "n_head": config["n_head"], "n_inner": None,
          "activation_function": "gelu_new", "layer_norm_epsilon": EPS, "resid_pdrop": config.get("dropout", 0.0),
          "embd_pdrop": config.get("dropout", 0.0), "attn_pdrop": config.get("dropout", 0.0),
          "initializer_range": 0.02, "tie_word_embeddings": tied, "bos_token_id": eos_id, "eos_token_id": eos_id,
          "torch_dtype": "float32"}
    save_safetensors(path / WEIGHTS, tensors, {"format": "pt"})
    atomic_write_text(path / CONFIG, json.dumps(hf, indent=2) + "\n")
