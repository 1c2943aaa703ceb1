"""Hugging Face LLaMA directories: a `LlamaForCausalLM`'s config.json and model.safetensors, for
models/llama.py.

models/llama.py names its parameters as Hugging Face does without the "model." prefix
(`model.layers.0.self_attn.q_proj.weight` is `layers.0.self_attn.q_proj.weight`; the lm_head is
`lm_head.weight` in both). Hugging Face stores a Linear's weight (out, in), graphgpt (in, out), so
every matrix but the token table is transposed on the way in and out. Both apply rotary
positions in the rotate_half convention (pairs i and i + D/2), so q and k move unpermuted. As for
GPT-2, a vocabulary padded in the plan starts its extra rows at zero; biases (attention_bias,
mlp_bias) move as they are. A field config.json does not hold takes transformers' LlamaConfig
default. Rotary positions scaled "linear" or "llama3" (LLaMA 3.1 to 3.3) become models/llama.py's
rope_ settings; refused, each in one line: another activation and other scalings (dynamic, YaRN,
longrope...), which models/llama.py does not implement.

config.json's max_position_embeddings is the longest context the model takes, not a length to
train on: the plan's block_size is the smaller of it and BLOCK_SIZE (--set block_size wins).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..rope_scaling import SCALINGS, SETTINGS as ROPE_SETTINGS, rotary_scaling
from .files import HEAD, WEIGHTS, head_tensor, lm_head, model_tensors, pad_rows, requirement

MODEL_TYPE, NAME = "llama", "LLaMA"
PREFIX = "model."
EMBEDDING = "embed_tokens.weight"
BUFFERS = (".rotary_emb.inv_freq",)  # older files' rotary tables: buffers, not parameters
GATE = "layers.0.mlp.gate_proj.weight"  # its shape (n_embd, width) gives the plan's MLP width
DEFAULT_THETA = 10000.0  # transformers' rope_theta where config.json names none
BLOCK_SIZE = 1024  # the longest block_size --hf-config gives (a 131072-position window would not fit)

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


def rope_field(hf: dict) -> str:
    """The field of config.json that rope_parameters reads (rope_scaling where neither is given)."""
    return "rope_parameters" if hf.get("rope_parameters") and not hf.get("rope_scaling") else "rope_scaling"


def rope_kind(hf: dict) -> str:
    rope = rope_parameters(hf)
    return rope.get("rope_type", rope.get("type", "default"))


def scaling(hf: dict) -> dict | None:
    """rotary's scaling of a checked config.json: None where unscaled. A "llama3" scaling without
    original_max_position_embeddings takes max_position_embeddings, as transformers 5 does."""
    kind, rope = rope_kind(hf), rope_parameters(hf)
    if kind == "default":
        return None
    defaults = {"original_max_position_embeddings": field(hf, "max_position_embeddings")}
    return {"rope_type": kind, **{k: rope.get(k, defaults.get(k)) for k in SCALINGS[kind]}}


def head_dim(hf: dict) -> int:
    return hf["head_dim"] if hf.get("head_dim") is not None else hf["hidden_size"] // hf["num_attention_heads"]


def check_model(path: Path, hf: dict) -> None:
    """One line naming config.json (`path`) and the first field that models/llama.py cannot follow."""
    need = requirement(path)
    need(field(hf, "hidden_act") == "silu", f"hidden_act {field(hf, 'hidden_act')!r}: models/llama.py's MLP is SwiGLU (silu)")
    need(hf["num_attention_heads"] > 0 and head_dim(hf) > 0,
         f"num_attention_heads {hf['num_attention_heads']} and head_dim {hf.get('head_dim')}: no heads to attend with")
    rope, kind = rope_parameters(hf), rope_kind(hf)
    name = f"{rope_field(hf)} {json.dumps(rope)}"
    need(kind == "default" or kind in SCALINGS,
         f"{name}: scaled rotary positions ({kind!r}) are not supported; models/llama.py's are unscaled, "
         + " or ".join(map(repr, SCALINGS)))
    # partial_rotary_factor: transformers' default LLaMA ignores it, its scalings do not
    known = PLAIN_ROPE | set(SCALINGS.get(kind, ())) | ({"partial_rotary_factor"} if kind == "default" else set())
    need(set(rope) <= known, f"{name}: models/llama.py does not read {', '.join(sorted(set(rope) - known))}")
    need(kind == "default" or hf.get("partial_rotary_factor", 1.0) == 1.0,
         f"partial_rotary_factor {hf.get('partial_rotary_factor')}: models/llama.py rotates every dimension")
    missing = [k for k in SCALINGS.get(kind, ()) if k not in rope and k != "original_max_position_embeddings"]
    need(not missing, f"{name}: no {', '.join(missing)}")
    try:
        rotary_scaling(scaling(hf))
    except ValueError as e:
        need(False, f"{name}: {e}")


def plan_rope(config: dict) -> dict | None:
    """rotary's scaling of a plan of models/llama.py (a plan from before the rope_ settings: None)."""
    kind = config.get("rope_scaling", "none")
    if kind == "none":
        return None
    return {"rope_type": kind, **{k: config[ROPE_SETTINGS[k]] for k in SCALINGS[kind]}}


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
                                ("tie_word_embeddings", "tie_weights", bool(config.get("tie_weights"))),
                                ("attention_bias", "attention_bias", bool(config.get("attention_bias"))),
                                ("mlp_bias", "mlp_bias", bool(config.get("mlp_bias")))):
        mine = field(hf, theirs)
        need(mine == value, f"{theirs} {json.dumps(mine)}, the plan's {ours} is {json.dumps(value)}")
    ours = plan_head_dim(config)
    need(head_dim(hf) == ours, f"head_dim {head_dim(hf)}, the plan's head_dim is {ours}")
    theirs, ours = scaling(hf), plan_rope(config)
    need(theirs == ours, f"rotary scaling {json.dumps(theirs)}, the plan's (rope_scaling and its rope_ settings) "
                         f"is {json.dumps(ours)}")
    need(hf["vocab_size"] <= config["vocab_size"],
         f"vocab_size {hf['vocab_size']} is more than the plan's {config['vocab_size']}")


def plan_head_dim(config: dict) -> int:
    return config.get("head_dim") or config["n_embd"] // config["n_head"]


def weights(path: Path, hf: dict, tensors: dict, config: dict) -> dict[str, np.ndarray]:
    """The plan's parameters (graphgpt's names) from directory `path`'s checked config and tensors."""
    out = {name: value.T.copy() if value.ndim == 2 and name != EMBEDDING else value
           for name, value in model_tensors(path, tensors, PREFIX, BUFFERS, "LlamaForCausalLM")}
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
    """A config.json transformers' LlamaForCausalLM loads (4 and 5 alike: rope_theta beside
    rope_scaling, null where unscaled)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": MODEL_TYPE, "vocab_size": config["vocab_size"],
            "hidden_size": config["n_embd"], "intermediate_size": int(weights[GATE].shape[1]),
            "num_hidden_layers": config["n_layer"], "num_attention_heads": config["n_head"],
            "num_key_value_heads": config["n_kv_head"], "head_dim": plan_head_dim(config),
            "hidden_act": "silu", "max_position_embeddings": config["block_size"], "rms_norm_eps": config["norm_eps"],
            "rope_theta": config["rope_base"], "rope_scaling": plan_rope(config),
            "attention_bias": bool(config.get("attention_bias")), "mlp_bias": bool(config.get("mlp_bias")),
            "attention_dropout": 0.0, "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True,
            "tie_word_embeddings": bool(config["tie_weights"]), "bos_token_id": eos_id, "eos_token_id": eos_id,
            "torch_dtype": "float32"}


def sizes(hf: dict) -> dict:
    """The sizes --init-from's line names."""
    return {k: field(hf, k) for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                      "hidden_size", "intermediate_size", "vocab_size")}


def settings(hf: dict) -> dict:
    """models/llama.py's --set keys for this config.json (checked), each as (value, the field it
    comes from); head_dim 0 where it is hidden_size / num_attention_heads, so that a --set of other
    sizes keeps that rule."""
    rope, where, given = scaling(hf) or {"rope_type": "none"}, rope_field(hf), rope_parameters(hf)

    def of(name: str, value=None) -> tuple:
        return field(hf, name) if value is None else value, name
    return {"n_layer": of("num_hidden_layers"), "n_head": of("num_attention_heads"), "n_kv_head": of("num_key_value_heads"),
            "n_embd": of("hidden_size"),
            "head_dim": of("head_dim", 0 if head_dim(hf) == hf["hidden_size"] // hf["num_attention_heads"] else head_dim(hf)),
            "n_hidden": of("intermediate_size"),
            "rope_base": of(f"{where}.rope_theta" if "rope_theta" in given else "rope_theta", float(field(hf, "rope_theta"))),
            "rope_scaling": (rope["rope_type"], where),
            **{ROPE_SETTINGS[k]: of(f"{where}.{k}" if k in given else "max_position_embeddings", rope[k])
               for k in SCALINGS.get(rope["rope_type"], ())},
            "norm_eps": of("rms_norm_eps", float(field(hf, "rms_norm_eps"))), "vocab_size": of("vocab_size"),
            "block_size": of("max_position_embeddings", min(field(hf, "max_position_embeddings"), BLOCK_SIZE)),
            "tie_weights": of("tie_word_embeddings", int(field(hf, "tie_word_embeddings"))),
            "attention_bias": of("attention_bias", int(field(hf, "attention_bias"))),
            "mlp_bias": of("mlp_bias", int(field(hf, "mlp_bias")))}
