"""Hugging Face LLaMA directories: a `LlamaForCausalLM`'s config.json and model.safetensors, for
models/llama.py.

models/llama.py names its parameters as Hugging Face does without the "model." prefix
(`model.layers.0.self_attn.q_proj.weight` is `layers.0.self_attn.q_proj.weight`; the lm_head is
`lm_head.weight` in both). Hugging Face stores a Linear's weight (out, in), graphgpt (in, out), so
every matrix but the token table is transposed on the way in and out. Both apply rotary
positions in the rotate_half convention (pairs i and i + D/2), so q and k move unpermuted. As for
GPT-2, a vocabulary padded in the plan starts its extra rows at zero. A field config.json does
not hold takes transformers' LlamaConfig default. Refused, each in one line: another activation,
biases, a head_dim other than n_embd / n_head, and scaled rotary positions (LLaMA 3.1's "llama3",
linear, dynamic, YaRN...), which models/llama.py does not implement.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from .files import HEAD, WEIGHTS, head_tensor, lm_head, pad_rows, requirement

MODEL_TYPE, NAME = "llama", "LLaMA"
PREFIX = "model."
EMBEDDING = "embed_tokens.weight"
BUFFERS = (".rotary_emb.inv_freq",)  # older files' rotary tables: buffers, not parameters
GATE = "layers.0.mlp.gate_proj.weight"  # its shape (n_embd, width) gives the plan's MLP width
DEFAULT_THETA = 10000.0  # transformers' rope_theta where config.json names none

# The fields of config.json that are read: (their type in words, required). Those not required
# default as in transformers' LlamaConfig. transformers 4 writes rope_theta and rope_scaling,
# transformers 5 rope_parameters (rope_scaling is its older name; rope_theta may move inside).
FIELDS = {"model_type": ("a string", True), "num_hidden_layers": ("an integer", True),
          "num_attention_heads": ("an integer", True), "num_key_value_heads": ("an integer or null", False),
          "hidden_size": ("an integer", True), "intermediate_size": ("an integer", True),
          "vocab_size": ("an integer", True), "hidden_act": ("a string", False), "rope_theta": ("a number", False),
          "rms_norm_eps": ("a number", False), "tie_word_embeddings": ("true or false", False),
          "head_dim": ("an integer or null", False), "attention_bias": ("true or false", False),
          "mlp_bias": ("true or false", False), "rope_scaling": ("an object or null", False),
          "rope_parameters": ("an object or null", False), "max_position_embeddings": ("an integer", False)}
DEFAULTS = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False,
            "mlp_bias": False, "max_position_embeddings": 2048}
PLAIN_ROPE = {"rope_type", "type", "rope_theta"}  # the keys of rotary parameters without scaling


def owns(names) -> bool:
    """Whether parameters of these names are a LLaMA's (models/llama.py's)."""
    return EMBEDDING in set(names)


def field(hf: dict, name: str):
    """A field's value, transformers' default where config.json lacks it or holds null."""
    if name == "num_key_value_heads" and hf.get(name) is None:
        return hf["num_attention_heads"]
    if name == "rope_theta":
        return rope_parameters(hf).get("rope_theta", hf.get("rope_theta", DEFAULT_THETA))
    return hf[name] if hf.get(name) is not None else DEFAULTS.get(name)


def rope_parameters(hf: dict) -> dict:
    """The rotary positions' parameters, as transformers reads them: rope_scaling, else
    rope_parameters, else none."""
    return hf.get("rope_scaling") or hf.get("rope_parameters") or {}


def check_model(path: Path, hf: dict) -> None:
    """One line naming config.json (`path`) and the first field that models/llama.py cannot follow."""
    need = requirement(path)
    need(field(hf, "hidden_act") == "silu", f"hidden_act {field(hf, 'hidden_act')!r}: models/llama.py's MLP is SwiGLU (silu)")
    rope = rope_parameters(hf)
    name = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    kind = rope.get("rope_type", rope.get("type", "default"))
    need(kind == "default" and set(rope) <= PLAIN_ROPE,
         f"{name} {json.dumps(rope)}: scaled rotary positions ({kind!r}) are not supported; "
         "models/llama.py's are unscaled")
    for flag in ("attention_bias", "mlp_bias"):
        need(not field(hf, flag), f"{flag} is true; models/llama.py has no biases")
    head_dim = hf["hidden_size"] // hf["num_attention_heads"] if hf["num_attention_heads"] > 0 else None
    need(hf.get("head_dim") in (None, head_dim),
         f"head_dim {hf.get('head_dim')}: models/llama.py's is hidden_size / num_attention_heads, {head_dim}")


def check_plan(path: Path, hf: dict, config: dict, shapes: dict) -> None:
    """One line naming config.json (`path`) and the first field that does not fit the plan: its
    sizes and settings in `config`, its MLP width in the parameter `shapes`."""
    need = requirement(path)
    width = shapes[GATE][1] if GATE in shapes else None
    for theirs, ours, value in (("num_hidden_layers", "n_layer", config.get("n_layer")),
                                ("num_attention_heads", "n_head", config.get("n_head")),
                                ("num_key_value_heads", "n_kv_head", config.get("n_kv_head")),
                                ("hidden_size", "n_embd", config.get("n_embd")),
                                ("intermediate_size", "MLP width", width),
                                ("rope_theta", "rope_base", config.get("rope_base")),
                                ("rms_norm_eps", "norm_eps", config.get("norm_eps")),
                                ("tie_word_embeddings", "tie_weights", bool(config.get("tie_weights")))):
        mine = field(hf, theirs)
        need(mine == value, f"{theirs} {json.dumps(mine)}, the plan's {ours} is {json.dumps(value)}")
    need(hf["vocab_size"] <= config["vocab_size"],
         f"vocab_size {hf['vocab_size']} is more than the plan's {config['vocab_size']}")


def weights(path: Path, hf: dict, tensors: dict, config: dict) -> dict[str, np.ndarray]:
    """The plan's parameters (graphgpt's names) from directory `path`'s checked config and tensors."""
    out = {}
    for name, value in tensors.items():
        if name == HEAD or name.endswith(BUFFERS):
            continue
        if not name.startswith(PREFIX):
            raise UserError(f"{path / WEIGHTS}: tensor {name} is not a LlamaForCausalLM's")
        name, value = name[len(PREFIX):], np.asarray(value, np.float32)
        out[name] = value.T.copy() if value.ndim == 2 and name != EMBEDDING else value
    if EMBEDDING not in out:
        raise UserError(f"{path / WEIGHTS}: no {PREFIX}{EMBEDDING}")
    out[EMBEDDING] = pad_rows(out[EMBEDDING], config["vocab_size"])
    return out | lm_head(path, tensors, field(hf, "tie_word_embeddings"), out[EMBEDDING], config)


def hf_tensors(weights: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    tensors = {}
    for name, value in weights.items():
        if name != HEAD:
            value = np.asarray(value, np.float32)
            tensors[PREFIX + name] = np.ascontiguousarray(value.T) if value.ndim == 2 and name != EMBEDDING else value
    return tensors | head_tensor(weights, config)


def hf_config(weights: dict[str, np.ndarray], config: dict, eos_id: int) -> dict:
    """A config.json transformers' LlamaForCausalLM loads (4 and 5 alike: rope_theta beside a
    null rope_scaling)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": MODEL_TYPE, "vocab_size": config["vocab_size"],
            "hidden_size": config["n_embd"], "intermediate_size": int(weights[GATE].shape[1]),
            "num_hidden_layers": config["n_layer"], "num_attention_heads": config["n_head"],
            "num_key_value_heads": config["n_kv_head"], "head_dim": config["n_embd"] // config["n_head"],
            "hidden_act": "silu", "max_position_embeddings": config["block_size"], "rms_norm_eps": config["norm_eps"],
            "rope_theta": config["rope_base"], "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
            "attention_dropout": 0.0, "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True,
            "tie_word_embeddings": bool(config["tie_weights"]), "bos_token_id": eos_id, "eos_token_id": eos_id,
            "torch_dtype": "float32"}


def sizes(hf: dict) -> dict:
    """The sizes --init-from's line names."""
    return {k: field(hf, k) for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                      "hidden_size", "intermediate_size", "vocab_size")}


def settings(hf: dict) -> dict:
    """models/llama.py's --set keys for this config.json (checked)."""
    return {"n_layer": hf["num_hidden_layers"], "n_head": hf["num_attention_heads"],
            "n_kv_head": field(hf, "num_key_value_heads"), "n_embd": hf["hidden_size"],
            "n_hidden": hf["intermediate_size"], "rope_base": float(field(hf, "rope_theta")),
            "norm_eps": float(field(hf, "rms_norm_eps")), "vocab_size": hf["vocab_size"],
            "block_size": field(hf, "max_position_embeddings"), "tie_weights": int(field(hf, "tie_word_embeddings"))}
