"""Hugging Face GPT-2 directories: a `GPT2LMHeadModel`'s config.json and model.safetensors.

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

from pathlib import Path

import numpy as np

from ..errors import UserError
from .files import HEAD, WEIGHTS, head_tensor, lm_head, model_tensors, pad_rows, requirement

MODEL_TYPE, NAME = "gpt2", "GPT-2"
PREFIX = "transformer."
EMBEDDINGS = {"wte.weight": "wte", "wpe.weight": "wpe"}  # Hugging Face's name (after PREFIX) -> graphgpt's
MASKS = (".attn.bias", ".attn.masked_bias")  # buffers, not parameters
GELU = ("gelu_new", "gelu_pytorch_tanh")       # GPT-2's tanh approximation, model.py's
EPS = 1e-5

# The fields of config.json that are read: (their type in words, required). Hugging Face writes
# all of them but n_inner (null for 4 * n_embd); a file that lacks one is not a GPT2LMHeadModel's.
FIELDS = {"model_type": ("a string", True), "n_layer": ("an integer", True), "n_head": ("an integer", True),
          "n_embd": ("an integer", True), "vocab_size": ("an integer", True), "n_positions": ("an integer", True),
          "n_inner": ("an integer or null", False), "activation_function": ("a string", False),
          "layer_norm_epsilon": ("a number", False), "tie_word_embeddings": ("true or false", False),
          "scale_attn_weights": ("true or false", False), "scale_attn_by_inverse_layer_idx": ("true or false", False),
          "reorder_and_upcast_attn": ("true or false", False)}


def owns(names) -> bool:
    """Whether parameters of these names are a GPT-2's (model.py's)."""
    return {"wte", "wpe"} <= set(names)


def check_model(path: Path, hf: dict) -> None:
    """One line naming config.json (`path`) and the first field that model.py cannot follow."""
    need = requirement(path)
    need(hf.get("activation_function", "gelu_new") in GELU,
         f"activation_function {hf.get('activation_function')!r}: model.py's GELU is the tanh one (gelu_new)")
    need(abs(hf.get("layer_norm_epsilon", EPS) - EPS) < 1e-12, f"layer_norm_epsilon {hf.get('layer_norm_epsilon')}, not {EPS}")
    need(hf.get("n_inner") in (None, 4 * hf["n_embd"]), f"n_inner {hf.get('n_inner')}, not 4 * n_embd")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        need(not hf.get(flag), f"{flag} is set; model.py has no such option")
    need(hf.get("scale_attn_weights", True), "scale_attn_weights is false; model.py scales by 1/sqrt(D)")


def check_plan(path: Path, hf: dict, config: dict, shapes: dict) -> None:
    """One line naming config.json (`path`) and the first field that does not fit the plan's `config`."""
    need = requirement(path)
    for name in ("n_layer", "n_head", "n_embd"):
        need(hf[name] == config[name], f"{name} {hf[name]}, the plan's {name} is {config[name]}")
    need(hf["vocab_size"] <= config["vocab_size"],
         f"vocab_size {hf['vocab_size']} is more than the plan's {config['vocab_size']}")
    need(hf["n_positions"] >= config["block_size"],
         f"n_positions {hf['n_positions']} is less than the plan's block_size {config['block_size']}")


def weights(path: Path, hf: dict, tensors: dict, config: dict) -> dict[str, np.ndarray]:
    """The plan's parameters (graphgpt's names) from directory `path`'s checked config and tensors."""
    V, T = config["vocab_size"], config["block_size"]
    out = {EMBEDDINGS.get(name, name): value
           for name, value in model_tensors(path, tensors, PREFIX, MASKS, "GPT2LMHeadModel")}
    for name in ("wte", "wpe"):
        if name not in out:
            raise UserError(f"{path / WEIGHTS}: no transformer.{name}.weight")
    out["wte"] = pad_rows(out.pop("wte"), V)
    out["wpe"] = out.pop("wpe")[:T]
    if out["wte"].shape != (V, config["n_embd"]):
        raise UserError(f"{path / WEIGHTS}: wte is {out['wte'].shape}, the plan's ({V}, {config['n_embd']})")
    return out | lm_head(path, tensors, hf.get("tie_word_embeddings", True), out["wte"], config)


def hf_tensors(weights: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    theirs = {ours: name for name, ours in EMBEDDINGS.items()}
    tensors = {PREFIX + theirs.get(name, name): np.asarray(value, np.float32) for name, value in weights.items()
               if name != HEAD}
    return tensors | head_tensor(weights, config)


def hf_config(weights: dict[str, np.ndarray], config: dict, eos_id: int) -> dict:
    return {"architectures": ["GPT2LMHeadModel"], "model_type": MODEL_TYPE,
            "vocab_size": config["vocab_size"], "n_positions": config["block_size"], "n_ctx": config["block_size"],
            "n_embd": config["n_embd"], "n_layer": config["n_layer"], "n_head": config["n_head"], "n_inner": None,
            "activation_function": "gelu_new", "layer_norm_epsilon": EPS, "resid_pdrop": config.get("dropout", 0.0),
            "embd_pdrop": config.get("dropout", 0.0), "attn_pdrop": config.get("dropout", 0.0),
            "initializer_range": 0.02, "tie_word_embeddings": bool(config.get("tie_weights")),
            "bos_token_id": eos_id, "eos_token_id": eos_id, "torch_dtype": "float32"}


def sizes(hf: dict) -> dict:
    """The sizes --init-from's line names."""
    return {k: hf[k] for k in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions")}


def settings(hf: dict) -> dict:
    """model.py's --set keys for this config.json (checked), each as (value, the field it comes from)."""
    return {**{key: (hf[key], key) for key in ("n_layer", "n_head", "n_embd", "vocab_size")},
            "block_size": (hf["n_positions"], "n_positions"),
            "tie_weights": (int(hf.get("tie_word_embeddings", True)), "tie_word_embeddings")}
