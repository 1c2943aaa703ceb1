"""Hugging Face LLaMA directories: --init-from reads a LlamaForCausalLM's, tools/export_hf.py
writes one, and tools/compile.py --hf-config takes its sizes.

The tests write a tiny LlamaForCausalLM directory of random weights themselves (Hugging Face's
names, Linear weights (out, in), grouped-query attention: four query heads over two key/value
heads) and check that every tensor lands where models/llama.py declares it, transposed, that
export after import gives back the same tensors bit for bit, and that every config.json field
models/llama.py cannot follow, or that differs from the plan, is refused in one line naming the
file and the field. `file_logits` is the file's LLaMA written out in NumPy (float64), the
independent reference: models/llama.py compiled and started from the file computes its logits
within 1e-5 in float32 and its greedy tokens, with and without the key/value caches. Where
PyTorch and transformers are importable, their LlamaForCausalLM agrees with both, reloads an
export bit for bit, and a model it saved itself compiles, loads and decodes as it does.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from graphgpt import hf
from graphgpt import plan as plan_io
from graphgpt.checkpoint import load_weights
from graphgpt.compiler import compile_model
from graphgpt.errors import UserError
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.sample import generate
from graphgpt.tensor_files import load_safetensors, save_safetensors
from graphgpt.tokenizer import Tokenizer, encode_prompt
from graphgpt.train import init_params
from tests.conftest import COMPILE, ROOT, assert_user_error, fill, run_cli, sets
from tests.test_hf import export_cli

LLAMA = ROOT / "models" / "llama.py"

L, H, HKV, C, F, T, V = 2, 4, 2, 16, 40, 8, 128  # the plan's sizes; its char vocabulary has 99 tokens
D = C // H
THETA, EPS = 1000.0, 1e-5
CONFIG = {"n_layer": L, "n_head": H, "n_kv_head": HKV, "n_embd": C, "n_hidden": F, "rope_base": THETA,
          "norm_eps": EPS, "vocab_size": V, "block_size": T, "batch_size": 2}  # a plan's, with tie_weights
SETTINGS = [f"n_layer={L}", f"n_head={H}", f"n_kv_head={HKV}", f"n_embd={C}", f"n_hidden={F}", f"rope_base={THETA}",
            f"norm_eps={EPS}", f"block_size={T}", "batch_size=2", f"vocab_size={V}"]


def plan_shapes(tied: bool) -> dict[str, tuple]:
    """The parameters models/llama.py declares for CONFIG: graphgpt's names, (in, out) matrices."""
    shapes = {"embed_tokens.weight": (V, C), "norm.weight": (C,)}
    for i in range(L):
        a, m = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
        shapes |= {f"layers.{i}.input_layernorm.weight": (C,), f"layers.{i}.post_attention_layernorm.weight": (C,),
                   a + "q_proj.weight": (C, H * D), a + "k_proj.weight": (C, HKV * D), a + "v_proj.weight": (C, HKV * D),
                   a + "o_proj.weight": (H * D, C), m + "gate_proj.weight": (C, F), m + "up_proj.weight": (C, F),
                   m + "down_proj.weight": (F, C)}
    return shapes if tied else shapes | {"lm_head.weight": (C, V)}


def write_llama(path, vocab=V, tied=False, seed=0, **config):
    """A LlamaForCausalLM directory of random weights, its config.json as transformers writes it."""
    rng = np.random.default_rng(seed)
    t = {"model.embed_tokens.weight": (vocab, C), "model.norm.weight": (C,)}
    for i in range(L):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
              p + "self_attn.q_proj.weight": (H * D, C), p + "self_attn.k_proj.weight": (HKV * D, C),
              p + "self_attn.v_proj.weight": (HKV * D, C), p + "self_attn.o_proj.weight": (C, H * D),
              p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C), p + "mlp.down_proj.weight": (C, F)}
    if not tied:
        t["lm_head.weight"] = (vocab, C)
    tensors = {name: (1 + rng.normal(0, 0.1, shape) if len(shape) == 1 else rng.normal(0, 0.3, shape)).astype(np.float32)
               for name, shape in t.items()}
    for i in range(L):  # the rotary table older files store per layer: a buffer, not a weight
        tensors[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = (THETA ** (-np.arange(0, D, 2) / D)).astype(np.float32)
    path.mkdir(parents=True, exist_ok=True)
    save_safetensors(path / "model.safetensors", tensors, {"format": "pt"})
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": C,
           "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": HKV,
           "head_dim": D, "hidden_act": "silu", "max_position_embeddings": T, "rms_norm_eps": EPS,
           "rope_theta": THETA, "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
           "attention_dropout": 0.0, "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2,
           "torch_dtype": "float32", **config}
    (path / "config.json").write_text(json.dumps(cfg))
    return tensors


def file_logits(tensors: dict, tokens: np.ndarray, tied=False) -> np.ndarray:
    """LlamaForCausalLM's forward written out in NumPy (float64) from the file's own tensors:
    RMSNorm, rotary positions in the rotate_half convention with rope_theta, grouped-query
    attention by repeating each key/value head for its query heads, SwiGLU, Linear as x @ W.T."""
    t = {k: v.astype(np.float64) for k, v in tensors.items()}
    B, n = tokens.shape

    def norm(x, name):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * t[name]

    def linear(x, name):
        return x @ t[name].T

    def heads(z, count):  # (B, n, count * D) -> (B, count, n, D)
        return z.reshape(B, n, count, D).transpose(0, 2, 1, 3)

    angles = np.arange(n)[:, None] * THETA ** (-np.arange(0, D, 2) / D)[None]  # (n, D/2)
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))

    def rope(z):
        return z * cos + np.concatenate([-z[..., D // 2:], z[..., :D // 2]], -1) * sin

    x = t["model.embed_tokens.weight"][tokens]
    for i in range(L):
        p = f"model.layers.{i}."
        h = norm(x, p + "input_layernorm.weight")
        q = rope(heads(linear(h, p + "self_attn.q_proj.weight"), H))
        k = rope(heads(linear(h, p + "self_attn.k_proj.weight"), HKV)).repeat(H // HKV, axis=1)
        v = heads(linear(h, p + "self_attn.v_proj.weight"), HKV).repeat(H // HKV, axis=1)
        s = np.where(np.tri(n, dtype=bool), q @ k.transpose(0, 1, 3, 2) / np.sqrt(D), -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        y = ((a / a.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(B, n, C)
        x = x + linear(y, p + "self_attn.o_proj.weight")
        h = norm(x, p + "post_attention_layernorm.weight")
        gate = linear(h, p + "mlp.gate_proj.weight")
        x = x + linear(gate / (1 + np.exp(-gate)) * linear(h, p + "mlp.up_proj.weight"), p + "mlp.down_proj.weight")
    return norm(x, "model.norm.weight") @ t["model.embed_tokens.weight" if tied else "lm_head.weight"].T


def load(path, tied=False, **change):
    return hf.load(path, CONFIG | {"tie_weights": int(tied)} | change, plan_shapes(tied))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_every_tensor_lands_by_name_transposed_with_padding(tmp_path, tied):
    tensors = write_llama(tmp_path / "m", vocab=101, tied=tied)
    weights = load(tmp_path / "m", tied)
    assert {n: w.shape for n, w in weights.items()} == plan_shapes(tied)
    np.testing.assert_array_equal(weights["embed_tokens.weight"][:101], tensors["model.embed_tokens.weight"])
    assert not weights["embed_tokens.weight"][101:].any()                  # padded rows start at zero
    if not tied:
        np.testing.assert_array_equal(weights["lm_head.weight"][:, :101], tensors["lm_head.weight"].T)
        assert not weights["lm_head.weight"][:, 101:].any()
    for name, value in weights.items():
        if name not in ("embed_tokens.weight", "lm_head.weight"):
            theirs = tensors["model." + name]
            np.testing.assert_array_equal(value, theirs.T if theirs.ndim == 2 else theirs, err_msg=name)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_export_after_import_gives_the_same_tensors(tmp_path, tied):
    tensors = write_llama(tmp_path / "m", tied=tied)
    weights = load(tmp_path / "m", tied)
    config = CONFIG | {"tie_weights": int(tied)}
    hf.save(tmp_path / "out", weights, config, eos_id=98)
    back = load_safetensors(tmp_path / "out" / "model.safetensors")
    assert set(back) == {n for n in tensors if not n.endswith(".inv_freq")}
    for name, value in back.items():
        assert value.tobytes() == tensors[name].tobytes() and value.shape == tensors[name].shape, name
    again = load(tmp_path / "out", tied)
    assert all(again[n].tobytes() == weights[n].tobytes() for n in weights)
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    original = json.loads((tmp_path / "m" / "config.json").read_text())
    for field in ("model_type", "architectures", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "hidden_size", "intermediate_size", "head_dim", "rope_theta", "rms_norm_eps", "rope_scaling",
                  "hidden_act", "attention_bias", "mlp_bias", "tie_word_embeddings", "vocab_size",
                  "max_position_embeddings"):
        assert written[field] == original[field], field
    assert (written["bos_token_id"], written["eos_token_id"], written["torch_dtype"]) == (98, 98, "float32")


# Each field of config.json that models/llama.py cannot follow or that differs from the plan:
# the change, and what the one line says after the file's name.
LLAMA3_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
                  "rope_type": "llama3"}  # LLaMA 3.1's, as transformers 4 writes it
MISMATCHES = [
    ({"hidden_act": "gelu"}, "hidden_act 'gelu': models/llama.py's MLP is SwiGLU (silu)"),
    ({"num_hidden_layers": 3}, "num_hidden_layers 3, the plan's n_layer is 2"),
    ({"num_attention_heads": 2, "head_dim": None}, "num_attention_heads 2, the plan's n_head is 4"),
    ({"num_key_value_heads": 4}, "num_key_value_heads 4, the plan's n_kv_head is 2"),
    ({"num_key_value_heads": None}, "num_key_value_heads 4, the plan's n_kv_head is 2"),  # null: one per query head
    ({"hidden_size": 32, "head_dim": None}, "hidden_size 32, the plan's n_embd is 16"),
    ({"intermediate_size": 48}, "intermediate_size 48, the plan's MLP width is 40"),
    ({"rope_theta": 500000.0}, "rope_theta 500000.0, the plan's rope_base is 1000.0"),
    ({"rms_norm_eps": 1e-6}, "rms_norm_eps 1e-06, the plan's norm_eps is 1e-05"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings true, the plan's tie_weights is false"),
    ({"vocab_size": 200}, "vocab_size 200 is more than the plan's 128"),
    ({"head_dim": 8}, "head_dim 8, the plan's head_dim is 4"),
    ({"attention_bias": True}, "attention_bias true, the plan's attention_bias is false"),
    ({"mlp_bias": True}, "mlp_bias true, the plan's mlp_bias is false"),
    ({"rope_scaling": LLAMA3_SCALING},
     "rotary scaling {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
     "\"original_max_position_embeddings\": 8192}, the plan's (rope_scaling and its rope_ settings) is null"),
    ({"rope_scaling": None, "rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": THETA}},
     "rope_parameters {\"rope_type\": \"yarn\", \"factor\": 2.0, \"rope_theta\": 1000.0}: scaled rotary positions "
     "('yarn') are not supported; models/llama.py's are unscaled, 'linear' or 'llama3'"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}},
     "rope_scaling {\"type\": \"dynamic\", \"factor\": 2.0}: scaled rotary positions ('dynamic') are not supported"),
    ({"rope_scaling": {"type": "linear"}}, "rope_scaling {\"type\": \"linear\"}: no factor"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}},
     "rope_scaling {\"rope_type\": \"linear\", \"factor\": 2.0, \"partial_rotary_factor\": 0.5}: "
     "models/llama.py does not read partial_rotary_factor"),
    ({"rope_scaling": LLAMA3_SCALING | {"high_freq_factor": 1.0}},
     f"rope_scaling {json.dumps(LLAMA3_SCALING | {'high_freq_factor': 1.0})}: "
     "'llama3' scaling's high_freq_factor 1.0 must exceed its low_freq_factor 1.0"),
    ({"rope_scaling": LLAMA3_SCALING | {"original_max_position_embeddings": 8192.0}},
     f"rope_scaling {json.dumps(LLAMA3_SCALING | {'original_max_position_embeddings': 8192.0})}: "
     "'llama3' scaling's original_max_position_embeddings must be an integer >= 1, got 8192.0"),
    ({"rope_scaling": {"rope_type": "linear", "factor": -2}},
     "rope_scaling {\"rope_type\": \"linear\", \"factor\": -2}: 'linear' scaling's factor must be a finite number > 0, got -2"),
    ({"model_type": "mistral"}, "model_type 'mistral'; graphgpt reads 'gpt2' and 'llama'"),
    ({"num_hidden_layers": "2"}, 'num_hidden_layers is "2", not an integer'),
    ({"rope_scaling": "none"}, 'rope_scaling is "none", not an object or null'),
    ({"tie_word_embeddings": 0}, "tie_word_embeddings is 0, not true or false"),
]


def rewrite_config(directory, change: dict) -> None:
    cfg = json.loads((directory / "config.json").read_text()) | change
    (directory / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("change, message", MISMATCHES, ids=[next(iter(c)) + "-" + str(i) for i, (c, _) in enumerate(MISMATCHES)])
def test_a_config_field_that_does_not_fit_is_one_line_naming_file_and_field(tmp_path, change, message):
    write_llama(tmp_path / "m")
    rewrite_config(tmp_path / "m", change)
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'm' / 'config.json'}: {message}")) as raised:
        load(tmp_path / "m")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("field", ["model_type", "num_hidden_layers", "num_attention_heads", "hidden_size",
                                   "intermediate_size", "vocab_size"])
def test_a_config_json_that_lacks_a_required_field_names_it(tmp_path, field):
    write_llama(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config[field]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'm' / 'config.json'}: no {field} field")):
        load(tmp_path / "m")


def test_fields_it_lacks_take_transformers_defaults(tmp_path):
    """A config.json without the optional fields reads as transformers' LlamaConfig does: silu,
    no biases, no scaling, rope_theta 10000, rms_norm_eps 1e-6, an untied head and as many
    key/value heads as query heads."""
    write_llama(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    for field in ("hidden_act", "attention_bias", "mlp_bias", "rope_scaling", "head_dim", "tie_word_embeddings",
                  "rope_theta", "rms_norm_eps", "num_key_value_heads", "max_position_embeddings"):
        del cfg[field]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="num_key_value_heads 4, the plan's n_kv_head is 2"):
        load(tmp_path / "m")
    assert hf.settings(tmp_path / "m") == [f"n_layer={L}", f"n_head={H}", f"n_kv_head={H}", f"n_embd={C}",
                                           "head_dim=0", f"n_hidden={F}", "rope_base=10000.0", "rope_scaling=none",
                                           "norm_eps=1e-06", f"vocab_size={V}", "block_size=1024", "tie_weights=0",
                                           "attention_bias=0", "mlp_bias=0"]


def test_transformers_5_rotary_parameters_are_read(tmp_path):
    """transformers 5 writes rope_parameters, rope_theta inside it; "default" is unscaled."""
    write_llama(tmp_path / "m")
    rewrite_config(tmp_path / "m", {"rope_theta": 10000.0, "rope_scaling": None,
                                    "rope_parameters": {"rope_type": "default", "rope_theta": THETA}})
    assert set(load(tmp_path / "m")) == set(plan_shapes(False))


def test_llama_3_2s_config_json_gives_its_settings(tmp_path):
    """LLaMA 3.2 1B's config.json as released (transformers 4's spelling: rope_theta beside a
    llama3 rope_scaling; 131072 positions, eos ids in a list), at this file's sizes: its settings
    scale the rotary frequencies as it does and train on a window of 1024, and the plan they
    compile loads it."""
    write_llama(tmp_path / "m", tied=True)
    rewrite_config(tmp_path / "m", {"rope_scaling": LLAMA3_SCALING | {"factor": 32.0}, "rope_theta": THETA,
                                    "max_position_embeddings": 131072, "torch_dtype": "bfloat16", "bos_token_id": 128000,
                                    "eos_token_id": [128001, 128008, 128009], "pretraining_tp": 1,
                                    "transformers_version": "4.45.0.dev0"})
    settings = hf.settings(tmp_path / "m")
    assert settings == (SETTINGS[:4] + ["head_dim=0"] + SETTINGS[4:6]
                        + ["rope_scaling=llama3", "rope_factor=32.0", "rope_low_freq_factor=1.0", "rope_high_freq_factor=4.0",
                           "rope_original_max_position=8192", SETTINGS[6], f"vocab_size={V}", "block_size=1024",
                           "tie_weights=1", "attention_bias=0", "mlp_bias=0"])
    compiled = compile_model(LLAMA, settings + [f"block_size={T}", "batch_size=1"], log=lambda *a: None)
    assert set(hf.load(tmp_path / "m", compiled.data["config"], plan_shapes(True))) == set(plan_shapes(True))


def test_a_gpt2_plan_refuses_a_llama_directory_and_the_reverse(tmp_path):
    write_llama(tmp_path / "m")
    gpt2 = {"wte": (V, C), "wpe": (T, C)}
    with pytest.raises(UserError, match="model_type 'llama', a LLaMA model, but the plan's parameters are not LLaMA's"):
        hf.load(tmp_path / "m", CONFIG, gpt2)
    with pytest.raises(UserError, match="neither model.py's .GPT-2. nor models/llama.py's"):
        hf.save(tmp_path / "out", {"wte": np.zeros((V, C), np.float32), "lm_head.weight": np.zeros((C, V))}, CONFIG, 0)
    assert not (tmp_path / "out").exists()


def test_hf_config_gives_the_compile_settings_and_set_wins(tmp_path):
    """tools/compile.py --hf-config DIR takes the sizes of DIR's config.json; --set overrides."""
    write_llama(tmp_path / "m")
    assert hf.settings(tmp_path / "m") == (SETTINGS[:4] + ["head_dim=0"] + SETTINGS[4:6] + ["rope_scaling=none", SETTINGS[6]]
                                           + [f"vocab_size={V}", f"block_size={T}", "tie_weights=0", "attention_bias=0",
                                              "mlp_bias=0"])
    from tests.test_hf import write_hf
    write_hf(tmp_path / "gpt2", positions=16)
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "plan"), "--hf-config",
                   str(tmp_path / "gpt2"), *sets(["block_size=8", "batch_size=2"]))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "plan" / "plan.json").read_text())["config"]
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["vocab_size"], config["block_size"],
            config["tie_weights"]) == (2, 2, 16, 128, 8, 1)
    rewrite_config(tmp_path / "gpt2", {"activation_function": "relu"})
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "plan2"), "--hf-config", str(tmp_path / "gpt2"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "activation_function 'relu'" in proc.stderr
    assert not (tmp_path / "plan2").exists()


def test_a_bfloat16_file_is_read_as_float32_exactly(tmp_path):
    """LLaMA's weights usually come in bfloat16: each value is widened to float32 unchanged."""
    tensors = write_llama(tmp_path / "m")
    bits = {name: (value.view(np.uint32) >> 16).astype("<u2") for name, value in tensors.items()}
    header, offset = {}, 0
    for name, value in bits.items():
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + value.nbytes]}
        offset += value.nbytes
    head = json.dumps(header).encode()
    (tmp_path / "m" / "model.safetensors").write_bytes(
        len(head).to_bytes(8, "little") + head + b"".join(v.tobytes() for v in bits.values()))
    weights = load(tmp_path / "m")
    q = bits["model.layers.1.self_attn.q_proj.weight"].astype(np.uint32) << 16
    np.testing.assert_array_equal(weights["layers.1.self_attn.q_proj.weight"], q.view(np.float32).T)
    assert all(w.dtype == np.float32 for w in weights.values())
    np.testing.assert_allclose(weights["norm.weight"], tensors["model.norm.weight"], rtol=2 ** -7)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_transformers_agrees_with_the_reference_and_reloads_the_export_bit_for_bit(tmp_path, tied):
    """Where PyTorch and transformers are importable: their LlamaForCausalLM built from the file
    computes file_logits (float64; within 1e-5, as transformers computes its rotary tables in
    float32), and it reloads an export's tensors bit for bit."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tensors = write_llama(tmp_path / "m", tied=tied)
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float64).eval()
    tokens = np.random.default_rng(3).integers(0, V, (2, T))
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(theirs, file_logits(tensors, tokens, tied), rtol=0, atol=1e-5)
    hf.save(tmp_path / "out", load(tmp_path / "m", tied), CONFIG | {"tie_weights": int(tied)}, eos_id=98)
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).state_dict()
    tied_head = {"lm_head.weight": "model.embed_tokens.weight"} if tied else {}
    assert set(again) == {n for n in tensors if not n.endswith(".inv_freq")} | set(tied_head)
    for name, value in again.items():
        assert value.numpy().tobytes() == tensors[tied_head.get(name, name)].tobytes(), name


# ---- with models/llama.py compiled ---------------------------------------------------------------
@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """models/llama.py compiled for the file's sizes: {tied: plan directory}."""
    root = tmp_path_factory.mktemp("llama")
    for tied in (False, True):
        compiled = compile_model(LLAMA, SETTINGS + [f"tie_weights={int(tied)}"], log=lambda *a: None)
        plan_io.save(compiled.data, root / f"plan{int(tied)}", compiled.files)
    return {tied: root / f"plan{int(tied)}" for tied in (False, True)}


def test_the_compiled_plan_declares_what_the_tests_assume(plans):
    for tied, directory in plans.items():
        plan = plan_io.load(directory)
        assert {t["name"]: tuple(t["shape"]) for t in plan.params} == plan_shapes(tied)
        assert all(plan.config[k] == v for k, v in CONFIG.items())


def backend_with(plan, weights, dtype=np.float32):
    backend = NumpyBackend(plan, dtype)
    for name, value in weights.items():
        backend.set_tensor(name, value)
    return backend


def greedy(logits_of, prompt, n, window=T, vocab=99):
    """n tokens after `prompt`, each the most likely of the first `vocab` after the window so far."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(logits_of(np.array([ids[-window:]]))[0, -1, :vocab].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_logits_and_greedy_tokens_equal_the_files_llama(tmp_path, plans, tied):
    """float32 NumPy against the float64 reference within 1e-5, and the same greedy tokens, with
    and without the key/value caches (the file's 99 tokens padded to the plan's 128); where
    transformers is importable, against its LlamaForCausalLM built from the same directory too."""
    tensors = write_llama(tmp_path / "m", tied=tied, vocab=99)
    plan = plan_io.load(plans[tied])
    weights = hf.load(tmp_path / "m", plan.config, plan_shapes(tied))
    backend = backend_with(plan, weights)
    tokens = np.random.default_rng(2).integers(0, 99, (1, T)).astype(np.int32)
    ours = backend.run("generate", {"tokens": tokens})["logits"]
    reference = file_logits(tensors, tokens, tied)
    np.testing.assert_allclose(ours[..., :99], reference, rtol=0, atol=1e-5)
    prompt = [3, 1, 4]
    expected = greedy(lambda ids: file_logits(tensors, ids, tied), prompt, T - len(prompt))
    for kv_cache in (True, False):  # the end-of-text id past the 99 in use: no sequence stops early
        assert generate(backend, prompt, T - len(prompt), 99, V - 1, kv_cache=kv_cache)[0] == expected
    try:
        import torch
        from transformers import LlamaForCausalLM
    except ImportError:
        return
    model = LlamaForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    with torch.no_grad():
        def logits_of(ids):
            return model(torch.from_numpy(ids).long()).logits.numpy()
        np.testing.assert_allclose(ours[..., :99], logits_of(tokens), rtol=0, atol=1e-5)
        assert greedy(logits_of, prompt, T - len(prompt)) == expected


# One of each kind, by the start of its line: a field models/llama.py cannot follow, one that
# differs from the plan's config, one from its parameter shapes, a field of the wrong type, another
# family. Every field's line is checked in-process above; these show that such a line is the
# command's one line and its status 2.
ON_THE_COMMAND_LINE = ("rope_scaling {\"type\": \"dynamic\"", "num_key_value_heads 4", "intermediate_size 48", 'num_hidden_layers is "2"',
                       "model_type 'mistral'")


def test_a_mismatch_is_one_line_and_status_2_from_the_command_line(tmp_path, plans):
    """python -m graphgpt.run --init-from, one process per kind of mismatch, all at once."""
    cases = {message: change for change, message in MISMATCHES if message.startswith(ON_THE_COMMAND_LINE)}
    assert len(cases) == len(ON_THE_COMMAND_LINE)
    procs = {}
    for i, (message, change) in enumerate(cases.items()):
        write_llama(tmp_path / f"m{i}")
        rewrite_config(tmp_path / f"m{i}", change)
        procs[f"--init-from {tmp_path / f'm{i}' / 'config.json'}: {message}"] = subprocess.Popen(
            [sys.executable, "-m", "graphgpt.run", "--plan", str(plans[False]), "--init-from", str(tmp_path / f"m{i}"),
             "--steps", "1", "--backend", "numpy", "--generate", "0"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert_user_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), line)


def test_compile_init_from_train_and_export_from_the_command_line(tmp_path):
    """compile --hf-config, run --init-from, export, and --init-from the export: the exported
    tensors are the trained checkpoint's, in Hugging Face's layout."""
    write_llama(tmp_path / "m")
    plan = tmp_path / "plan"
    proc = run_cli(COMPILE, str(LLAMA), "--out", str(plan), "--hf-config", str(tmp_path / "m"), *sets(["batch_size=2"]))
    assert proc.returncode == 0, proc.stderr
    assert all(plan_io.load(plan).config[k] == v for k, v in CONFIG.items())
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--init-from", str(tmp_path / "m"), "--steps", "2",
                   "--backend", "numpy", "--generate", "0", "--save", str(tmp_path / "ckpt"))
    assert proc.returncode == 0, proc.stderr
    assert (f"from a Hugging Face LLaMA directory {tmp_path / 'm'} (num_hidden_layers {L}, num_attention_heads {H}, "
            f"num_key_value_heads {HKV}, hidden_size {C}, intermediate_size {F}, vocab_size {V})") in proc.stdout
    proc = run_cli("tools/export_hf.py", "--plan", str(plan), "--weights", str(tmp_path / "ckpt"),
                   "--out", str(tmp_path / "exported"))
    assert proc.returncode == 0, proc.stderr
    trained = load_weights(tmp_path / "ckpt")
    exported = load_safetensors(tmp_path / "exported" / "model.safetensors")
    np.testing.assert_array_equal(exported["model.layers.1.self_attn.k_proj.weight"],
                                  trained["layers.1.self_attn.k_proj.weight"].T)
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--init-from", str(tmp_path / "exported"),
                   "--steps", "0", "--backend", "numpy", "--generate", "0")
    assert proc.returncode == 0, proc.stderr


def test_a_plan_of_neither_family_is_not_exported(tmp_path):
    plan = tmp_path / "plan"
    compiled = compile_model(ROOT / "models" / "speedrun.py", SETTINGS, log=lambda *a: None)
    plan_io.save(compiled.data, plan, compiled.files)
    save_safetensors(tmp_path / "w.safetensors", init_params(plan_io.load(plan), 0))
    assert_user_error(run_cli("tools/export_hf.py", "--plan", str(plan), "--weights", str(tmp_path / "w.safetensors"),
                              "--out", str(tmp_path / "out")), "neither model.py's (GPT-2) nor models/llama.py's")
    assert not (tmp_path / "out").exists()


def test_a_full_disk_leaves_no_partial_export_and_keeps_the_old_one(plans, small_fs, tmp_path):
    plan = plan_io.load(plans[False])
    for seed in (0, 1):
        save_safetensors(tmp_path / f"w{seed}.safetensors", init_params(plan, seed))
    out = small_fs / "export"
    assert export_cli(plans[False], tmp_path / "w0.safetensors", out).returncode == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fill(small_fs)
    assert_user_error(export_cli(plans[False], tmp_path / "w1.safetensors", out), f"cannot write --out {out}",
                      "the export there is as it was")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert_user_error(export_cli(plans[False], tmp_path / "w1.safetensors", small_fs / "fresh"), "nothing was written")
    assert sorted(p.name for p in small_fs.iterdir() if not p.name.startswith("filler")) == ["export"]


def test_a_llama_transformers_saved_itself_compiles_loads_and_decodes_as_it_does(tmp_path):
    """Where PyTorch and transformers are importable: a random LlamaForCausalLM of sizes the other
    tests do not use, saved by transformers (its own config.json), gives a plan through
    --hf-config whose logits are transformers' within 1e-5 in float32, with its greedy tokens."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=3, intermediate_size=72,
                                      num_hidden_layers=3, vocab_size=99, max_position_embeddings=24, rope_theta=50000.0,
                                      rms_norm_eps=1e-5, initializer_range=0.2)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "m")
    proc = run_cli(COMPILE, str(LLAMA), "--out", str(tmp_path / "plan"), "--hf-config", str(tmp_path / "m"),
                   *sets(["batch_size=1"]))
    assert proc.returncode == 0, proc.stderr
    plan = plan_io.load(tmp_path / "plan")
    backend = backend_with(plan, hf.load(tmp_path / "m", plan.config, {t["name"]: tuple(t["shape"]) for t in plan.params}))
    tokens = np.random.default_rng(5).integers(0, 99, (1, 24)).astype(np.int32)
    with torch.no_grad():
        def logits_of(ids):
            return model(torch.from_numpy(ids).long()).logits.numpy()
        np.testing.assert_allclose(backend.run("generate", {"tokens": tokens})["logits"], logits_of(tokens), rtol=0, atol=1e-5)
        prompt = [5, 17, 3]
        assert generate(backend, prompt, 20, 99, eos_id=127)[0] == greedy(logits_of, prompt, 20, window=24)  # never ends


# ---- LlamaForCausalLM configurations in the shapes of released ones, shrunk --------------------
# Each a LlamaConfig's arguments besides the sizes all share (SHRUNK): LLaMA 3.2's llama3 scaling
# (its original context shrunk so that the scaling turns the frequencies of a 24-token window),
# tied embeddings, an explicit head_dim and 131072 positions; LLaMA 2's (a key/value head per query
# head, rope_theta 10000); one key/value head for all query heads; linear scaling in transformers
# 4's spelling ("type"); biases in attention and MLP; a head_dim that is not hidden_size / heads.
SHRUNK = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=56, num_hidden_layers=2,
              vocab_size=99, max_position_embeddings=24, rms_norm_eps=1e-5, rope_theta=500000.0, initializer_range=0.2)
RELEASED = {
    "llama3.2": dict(tie_word_embeddings=True, head_dim=8, max_position_embeddings=131072,
                     rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 256}),
    "llama2": dict(num_key_value_heads=4, rope_theta=10000.0, max_position_embeddings=4096, rms_norm_eps=1e-6),
    "mqa": dict(num_key_value_heads=1),
    "linear": dict(rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 4.0}),
    "biases": dict(attention_bias=True, mlp_bias=True),
    "head_dim": dict(hidden_size=40, head_dim=12, num_key_value_heads=4),
}
WINDOW = 24  # the plans' block_size: --set wins over max_position_embeddings


def transformers_llama(torch, transformers, directory, **config):
    """A random LlamaForCausalLM of SHRUNK sizes and `config`, saved by transformers (safetensors)."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHRUNK | config)).eval()
    with torch.no_grad():  # biases start at zero: draw them so that they count
        for name, value in model.named_parameters():
            if name.endswith(".bias"):
                value.normal_(0, 0.2)
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("kind", RELEASED)
def test_a_released_configuration_loads_decodes_and_exports_as_transformers_does(tmp_path, kind):
    """Where PyTorch and transformers are importable: the plan --hf-config's settings give (block_size
    set) computes transformers' float32 logits within 1e-5 and its greedy tokens, with and without
    the key/value caches, and the export reloads into transformers and into the plan bit for bit,
    its rotary frequencies included."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers_llama(torch, transformers, tmp_path / "m", **RELEASED[kind])
    settings = hf.settings(tmp_path / "m")
    assert f"block_size={min(model.config.max_position_embeddings, 1024)}" in settings
    compiled = compile_model(LLAMA, settings + [f"block_size={WINDOW}", "batch_size=1"], log=lambda *a: None)
    plan_io.save(compiled.data, tmp_path / "plan", compiled.files)
    plan = plan_io.load(tmp_path / "plan")
    weights = hf.load(tmp_path / "m", plan.config, {t["name"]: tuple(t["shape"]) for t in plan.params})
    backend = backend_with(plan, weights)
    tokens = np.random.default_rng(5).integers(0, 99, (1, WINDOW)).astype(np.int32)
    with torch.no_grad():
        def logits_of(ids):
            return model(torch.from_numpy(ids).long()).logits.numpy()
        np.testing.assert_allclose(backend.run("generate", {"tokens": tokens})["logits"], logits_of(tokens), rtol=0, atol=1e-5)
        prompt = [5, 17, 3]
        expected = greedy(logits_of, prompt, WINDOW - len(prompt), window=WINDOW)
    for kv_cache in (True, False):  # the end-of-text id past the 99 in use: no sequence stops early
        assert generate(backend, prompt, WINDOW - len(prompt), 99, eos_id=127, kv_cache=kv_cache)[0] == expected
    hf.save(tmp_path / "out", weights, plan.config, eos_id=98)
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    theirs, ours = model.state_dict(), again.state_dict()
    assert set(theirs) == set(ours)
    for name, value in theirs.items():
        assert ours[name].numpy().tobytes() == value.numpy().tobytes(), name
    assert again.model.rotary_emb.inv_freq.numpy().tobytes() == model.model.rotary_emb.inv_freq.numpy().tobytes()
    back = hf.load(tmp_path / "out", plan.config, {t["name"]: tuple(t["shape"]) for t in plan.params})
    assert all(back[name].tobytes() == value.tobytes() for name, value in weights.items())


def test_a_131072_position_config_compiles_and_generates_from_the_command_line(tmp_path):
    """Where PyTorch and transformers are importable: LLaMA 3.2's max_position_embeddings of 131072
    gives a plan of block_size 1024 through the documented commands (compile --hf-config, then
    graphgpt.sample), whose greedy tokens are transformers', chosen among all 1000 of its
    vocabulary (more than the plan's character tokenizer holds: those past it read [UNK])."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers_llama(torch, transformers, tmp_path / "m", **RELEASED["llama3.2"] | {"vocab_size": 1000})
    proc = run_cli(COMPILE, str(LLAMA), "--out", str(tmp_path / "plan"), "--hf-config", str(tmp_path / "m"),
                   *sets(["batch_size=1"]))
    assert proc.returncode == 0, proc.stderr
    plan = plan_io.load(tmp_path / "plan")
    tokenizer = Tokenizer.from_json(plan.tokenizer)
    assert (plan.config["block_size"], plan.config["vocab_size"], len(tokenizer.vocab)) == (1024, 1000, 99)
    prompt = encode_prompt(tokenizer, "Hello").tolist()
    with torch.no_grad():
        expected = greedy(lambda ids: model(torch.from_numpy(ids).long()).logits.numpy(), prompt, 20, window=1024,
                          vocab=1000)
    assert max(expected) >= 99 and tokenizer.eos_id not in expected  # ids past the tokenizer's; no early end
    backend = backend_with(plan, hf.load(tmp_path / "m", plan.config, {t["name"]: tuple(t["shape"]) for t in plan.params}))
    assert generate(backend, prompt, 20, 99, tokenizer.eos_id)[0] == expected
    proc = run_cli("-m", "graphgpt.sample", "--plan", str(tmp_path / "plan"), "--init-from", str(tmp_path / "m"),
                   "--prompt", "Hello", "--tokens", "20", "--backend", "numpy")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].endswith(f"over 1 sequences): {tokenizer.decode(prompt + expected)}"), proc.stdout


@pytest.mark.gpu
def test_cuda_computes_numpys_llama_with_a_head_dim_of_its_own_biases_and_llama3_scaling(tmp_path):
    """models/llama.py with head_dim 12 (neither n_embd / n_head nor a tensor-core width: the CUDA
    cores' attention), biases and LLaMA 3's scaling, in float32: CUDA's window logits are NumPy's,
    and its greedy tokens through the caches are NumPy's and its own through the window."""
    from graphgpt.runtime.cuda_backend import CudaBackend
    settings = ["n_layer=2", "n_head=4", "n_kv_head=2", "n_embd=40", "head_dim=12", "n_hidden=56", "vocab_size=99",
                "block_size=32", "batch_size=1", "attention_bias=1", "mlp_bias=1", "rope_scaling=llama3",
                "rope_factor=32", "rope_original_max_position=256"]
    compiled = compile_model(LLAMA, settings, log=lambda *a: None)
    plan_io.save(compiled.data, tmp_path / "plan", compiled.files)
    plan = plan_io.load(tmp_path / "plan")
    rng = np.random.default_rng(0)
    weights = {t["name"]: rng.normal(1 if len(t["shape"]) == 1 else 0, 0.2, t["shape"]).astype(np.float32)
               for t in plan.params}
    reference, backend = backend_with(plan, weights), CudaBackend(plan)
    for name, value in weights.items():
        backend.set_tensor(name, value)
    tokens = rng.integers(0, 99, (1, 32)).astype(np.int32)
    want = reference.run("generate", {"tokens": tokens})["logits"].astype(np.float64)
    got = np.asarray(backend.run("generate", {"tokens": tokens})["logits"], np.float64)
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    prompt = [5, 17, 3]
    cached = generate(backend, prompt, 20, 99, eos_id=98)
    assert cached == generate(backend, prompt, 20, 99, eos_id=98, kv_cache=False) == generate(reference, prompt, 20, 99, eos_id=98)


@pytest.mark.parametrize("change, message", [
    ({"rope_theta": -1}, "rope_theta -1.0: rope_base must be a number > 0"),
    ({"rope_theta": 1e39}, "rope_theta 1e+39: rope_base must be a number > 0 (float32's normal range"),
    ({"rope_scaling": None, "rope_parameters": {"rope_type": "default", "rope_theta": 0}},
     "rope_parameters.rope_theta 0.0: rope_base must be a number > 0"),
    ({"rms_norm_eps": 1e-50}, "rms_norm_eps 1e-50: norm_eps must be a number > 0 (float32's normal range"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 1e39}},
     "rope_scaling.factor 1e+39: rope_factor must be a number > 0 (float32's normal range"),
    ({"max_position_embeddings": 0}, "max_position_embeddings 0: block_size must be an integer >= 1"),
    ({"num_key_value_heads": 0}, "num_key_value_heads 0: n_kv_head must be an integer >= 1"),
    ({"intermediate_size": 0}, "intermediate_size 0: a model's intermediate_size is at least 1"),
])
def test_hf_config_values_out_of_range_name_the_file_and_field(tmp_path, change, message):
    write_llama(tmp_path / "m")
    rewrite_config(tmp_path / "m", change)
    proc = run_cli(COMPILE, str(LLAMA), "--out", str(tmp_path / "plan"), "--hf-config", str(tmp_path / "m"),
                   *sets(["batch_size=2"]))
    assert_user_error(proc, f"{tmp_path / 'm' / 'config.json'}: {message}")
    assert "--set" not in proc.stderr and not (tmp_path / "plan").exists()


def test_set_rope_scaling_none_over_a_scaled_config_is_taken(tmp_path):
    """The config.json's own scaling parameters are not refused where --set rope_scaling drops
    the scaling they belong to (--set wins); one that --set gives is."""
    write_llama(tmp_path / "m")
    rewrite_config(tmp_path / "m", {"rope_scaling": LLAMA3_SCALING})
    settings = hf.settings(tmp_path / "m") + ["rope_scaling=none", "batch_size=1"]
    assert compile_model(LLAMA, settings, log=lambda *a: None).data["config"]["rope_scaling"] == "none"
    with pytest.raises(UserError, match=re.escape("--set rope_factor=2: rope_factor is read only with rope_scaling "
                                                  "linear or llama3, not with --set rope_scaling=none")):
        compile_model(LLAMA, settings + ["rope_factor=2"], log=lambda *a: None)


@pytest.mark.parametrize("key", ["factor", "original_max_position_embeddings"])
def test_a_bool_in_the_rotary_scaling_is_refused(tmp_path, key):
    write_llama(tmp_path / "m")
    rewrite_config(tmp_path / "m", {"rope_scaling": LLAMA3_SCALING | {key: True}})
    with pytest.raises(UserError, match=re.escape(f"'llama3' scaling's {key} must be a number, got True")):
        hf.settings(tmp_path / "m")
