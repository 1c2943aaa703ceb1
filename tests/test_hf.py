"""Hugging Face GPT-2 directories: --init-from reads them, tools/export_hf.py writes them.

The tests write a small GPT2LMHeadModel directory themselves (Hugging Face's names and Conv1D
layout, a tied wte, the causal-mask buffers older files carry), then check that every tensor
lands where it belongs, that export after import gives back the same tensors bit for bit, that
the logits equal those of the file's GPT-2 written out in NumPy (and the re-imported weights' the
same bits), and, where PyTorch is importable, an independent PyTorch GPT-2's built from the same
file (transformers' GPT2LMHeadModel when that is importable too).
"""
import json
import re
import subprocess

import numpy as np
import pytest

from graphgpt import hf
from graphgpt.compiler import compile_model
from graphgpt.errors import UserError
from graphgpt.plan import Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.tensor_files import load_safetensors, save_safetensors
from graphgpt.train import init_params
from tests.conftest import COMPILE, DEEP_JSON, ROOT, assert_user_error, fill, run_cli

L, H, C, T, V = 2, 2, 16, 8, 128  # the plan; its char vocabulary has 99 tokens
CONFIG = {"n_layer": L, "n_head": H, "n_embd": C, "block_size": T, "vocab_size": V}  # a plan's, for checks of config.json
SHAPE = [f"n_layer={L}", f"n_head={H}", f"n_embd={C}", f"block_size={T}", "batch_size=2", f"vocab_size={V}"]


def write_hf(path, vocab=V, positions=T, tied=True, seed=0, **config):
    """A GPT2LMHeadModel directory of random weights."""
    rng = np.random.default_rng(seed)
    t = {"transformer.wte.weight": (vocab, C), "transformer.wpe.weight": (positions, C)}
    for i in range(L):
        h = f"transformer.h.{i}."
        t |= {h + "ln_1.weight": (C,), h + "ln_1.bias": (C,), h + "attn.c_attn.weight": (C, 3 * C),
              h + "attn.c_attn.bias": (3 * C,), h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
              h + "ln_2.weight": (C,), h + "ln_2.bias": (C,), h + "mlp.c_fc.weight": (C, 4 * C),
              h + "mlp.c_fc.bias": (4 * C,), h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,)}
    t |= {"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)}
    if not tied:
        t["lm_head.weight"] = (vocab, C)
    tensors = {name: rng.normal(0, 0.3, shape).astype(np.float32) for name, shape in t.items()}
    for i in range(L):  # the causal mask older files store per layer: a buffer, not a weight
        tensors[f"transformer.h.{i}.attn.bias"] = np.tril(np.ones((1, 1, positions, positions), np.float32))
    path.mkdir(parents=True, exist_ok=True)
    save_safetensors(path / "model.safetensors", tensors, {"format": "pt"})
    cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": L, "n_head": H, "n_embd": C,
           "n_positions": positions, "vocab_size": vocab, "activation_function": "gelu_new",
           "layer_norm_epsilon": 1e-5, "tie_word_embeddings": tied, **config}
    (path / "config.json").write_text(json.dumps(cfg))
    return tensors


def plan_of(*extra):
    return Plan(compile_model(ROOT / "model.py", SHAPE + list(extra), log=lambda *a: None).data, "hf")


def load(path, plan):
    """hf.load for a compiled plan: its config and its parameters' shapes."""
    return hf.load(path, plan.config, {t["name"]: tuple(t["shape"]) for t in plan.params})


def test_every_tensor_lands_by_name_with_padding_and_crop(tmp_path):
    tensors = write_hf(tmp_path / "m", vocab=101, positions=12)
    plan = plan_of("tie_weights=1")
    weights = load(tmp_path / "m", plan)
    assert set(weights) == {t["name"] for t in plan.params}
    np.testing.assert_array_equal(weights["wte"][:101], tensors["transformer.wte.weight"])
    assert not weights["wte"][101:].any()                                   # padded rows start at zero
    np.testing.assert_array_equal(weights["wpe"], tensors["transformer.wpe.weight"][:T])  # cropped to block_size
    for name in weights:
        if name not in ("wte", "wpe"):
            np.testing.assert_array_equal(weights[name], tensors["transformer." + name], err_msg=name)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_export_after_import_gives_the_same_tensors(tmp_path, tied):
    tensors = write_hf(tmp_path / "m", tied=tied)
    plan = plan_of(f"tie_weights={int(tied)}")
    weights = load(tmp_path / "m", plan)
    hf.save(tmp_path / "out", weights, plan.config, eos_id=98)
    back = load_safetensors(tmp_path / "out" / "model.safetensors")
    assert set(back) == {n for n in tensors if not n.endswith(".attn.bias")}
    for name, value in back.items():
        assert value.tobytes() == tensors[name].tobytes(), name
    again = load(tmp_path / "out", plan)
    assert all(again[n].tobytes() == weights[n].tobytes() for n in weights)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is tied


def test_a_tied_file_starts_an_untied_plan_with_lm_head_as_wte_transposed(tmp_path):
    tensors = write_hf(tmp_path / "m")
    weights = load(tmp_path / "m", plan_of())
    np.testing.assert_array_equal(weights["lm_head.weight"], tensors["transformer.wte.weight"].T)


def test_init_from_and_export_from_the_command_line(tmp_path):
    write_hf(tmp_path / "m")
    plan = tmp_path / "plan"
    assert run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(plan), *sum((["--set", s] for s in SHAPE), []),
                   "--set", "tie_weights=1").returncode == 0
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--init-from", str(tmp_path / "m"), "--steps", "2",
                   "--backend", "numpy", "--generate", "0", "--save", str(tmp_path / "ckpt"))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("tools/export_hf.py", "--plan", str(plan), "--weights", str(tmp_path / "ckpt"),
                   "--out", str(tmp_path / "exported"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == ["config.json", "graphgpt-export.json",
                                                                         "model.safetensors"]
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--init-from", str(tmp_path / "exported"),
                   "--steps", "0", "--backend", "numpy", "--generate", "0")
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "exported" / "notes.txt").write_text("mine")
    proc = run_cli("tools/export_hf.py", "--plan", str(plan), "--weights", str(tmp_path / "ckpt"),
                   "--out", str(tmp_path / "exported"))
    assert proc.returncode == 2 and (tmp_path / "exported" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("change, message", [
    ({"n_layer": 3}, "n_layer 3, the plan's n_layer is 2"),
    ({"activation_function": "gelu"}, "activation_function 'gelu'"),
    ({"vocab_size": 200}, "vocab_size 200 is more than the plan's 128"),
])
def test_a_mismatch_is_one_line_and_status_2(tmp_path, change, message):
    write_hf(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text()) | change
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    plan = tmp_path / "plan"
    assert run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(plan), *sum((["--set", s] for s in SHAPE), []),
                   "--set", "tie_weights=1").returncode == 0
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--init-from", str(tmp_path / "m"), "--steps", "1",
                   "--backend", "numpy", "--generate", "0")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def graphgpt_logits(plan, weights, tokens):
    be = NumpyBackend(plan, np.float64)
    for name, value in weights.items():
        be.set_tensor(name, value)
    return be.run("generate", {"tokens": tokens})["logits"]


def test_logits_equal_an_independent_pytorch_gpt2(tmp_path):
    torch = pytest.importorskip("torch")
    from tools.torch_gpt2 import GPT2, load_weights
    write_hf(tmp_path / "m")
    plan = plan_of("tie_weights=1")
    weights = load(tmp_path / "m", plan)
    tokens = np.random.default_rng(1).integers(0, 99, (1, T)).astype(np.int32)
    ours = graphgpt_logits(plan, weights, tokens)
    model = GPT2.from_config(plan.config).double()
    load_weights(model, weights)
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens).long()).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        return
    reference = GPT2LMHeadModel.from_pretrained(tmp_path / "m").double().eval()
    with torch.no_grad():
        logits = reference(torch.from_numpy(tokens).long()).logits.numpy()
    np.testing.assert_allclose(ours, logits, rtol=1e-9, atol=1e-9)


def file_logits(tensors: dict, tokens: np.ndarray) -> np.ndarray:
    """GPT2LMHeadModel's forward written out in NumPy (float64) from the file's own tensors:
    Hugging Face's names, Conv1D weights (x @ W + b), the logits through the tied wte."""
    t = {k: v.astype(np.float64) for k, v in tensors.items()}

    def norm(x, name):
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        return x * t[name + ".weight"] + t[name + ".bias"]

    def conv1d(x, name):
        return x @ t[name + ".weight"] + t[name + ".bias"]

    def heads(z):
        return z.reshape(*z.shape[:2], H, C // H).transpose(0, 2, 1, 3)

    n = tokens.shape[1]
    x = t["transformer.wte.weight"][tokens] + t["transformer.wpe.weight"][:n]
    for i in range(L):
        h = f"transformer.h.{i}."
        q, k, v = np.split(conv1d(norm(x, h + "ln_1"), h + "attn.c_attn"), 3, axis=-1)
        s = np.where(np.tri(n, dtype=bool), heads(q) @ heads(k).transpose(0, 1, 3, 2) / np.sqrt(C // H), -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        y = ((p / p.sum(-1, keepdims=True)) @ heads(v)).transpose(0, 2, 1, 3).reshape(x.shape)
        x = x + conv1d(y, h + "attn.c_proj")
        u = conv1d(norm(x, h + "ln_2"), h + "mlp.c_fc")
        x = x + conv1d(0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u**3))), h + "mlp.c_proj")
    return norm(x, "transformer.ln_f") @ t["transformer.wte.weight"].T


def test_the_round_trip_keeps_the_files_logits(tmp_path):
    """Without PyTorch too: a plan started from a Hugging Face directory computes the logits the
    file's GPT-2 computes, and its exported and re-imported weights compute the same bits."""
    tensors = write_hf(tmp_path / "m")
    plan = plan_of("tie_weights=1")
    weights = load(tmp_path / "m", plan)
    tokens = np.random.default_rng(2).integers(0, 99, (1, T)).astype(np.int32)
    ours = graphgpt_logits(plan, weights, tokens)
    np.testing.assert_allclose(ours, file_logits(tensors, tokens), rtol=1e-9, atol=1e-9)
    hf.save(tmp_path / "out", weights, plan.config, eos_id=98)
    again = graphgpt_logits(plan, load(tmp_path / "out", plan), tokens)
    assert again.tobytes() == ours.tobytes()


@pytest.mark.parametrize("config, message", [
    ([1, 2], "config.json: a JSON list, where a Hugging Face config is an object"),
    ("gpt2", "config.json: a JSON str, where"),
    ({"n_layer": None}, "config.json: n_layer is null, not an integer"),
    ({"n_layer": "2"}, 'config.json: n_layer is "2", not an integer'),
    ({"n_embd": 16.0}, "config.json: n_embd is 16.0, not an integer"),
    ({"n_head": True}, "config.json: n_head is true, not an integer"),
    ({"model_type": 2}, "config.json: model_type is 2, not a string"),
    ({"layer_norm_epsilon": "1e-5"}, 'config.json: layer_norm_epsilon is "1e-5", not a number'),
    ({"tie_word_embeddings": 1}, "config.json: tie_word_embeddings is 1, not true or false"),
    ({"n_inner": "64"}, 'config.json: n_inner is "64", not an integer or null'),
    ({"scale_attn_weights": None}, "config.json: scale_attn_weights is null, not true or false"),
    ({"activation_function": ["gelu_new"]}, 'config.json: activation_function is ["gelu_new"], not a string'),
])
def test_a_config_json_of_the_wrong_shape_names_the_file_and_field(tmp_path, config, message):
    write_hf(tmp_path / "m")
    if isinstance(config, dict):
        config = json.loads((tmp_path / "m" / "config.json").read_text()) | config
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'm' / message}")):
        hf.load(tmp_path / "m", CONFIG, {})


def test_a_config_json_nested_too_deeply_is_one_line_and_status_2(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(DEEP_JSON)
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "plan"), "--hf-config", str(tmp_path / "m"))
    assert_user_error(proc, f"{tmp_path / 'm' / 'config.json'}: cannot read it (arrays or objects nested too deeply")
    assert not (tmp_path / "plan").exists()


@pytest.mark.parametrize("field", ["model_type", "n_layer", "n_head", "n_embd", "vocab_size", "n_positions"])
def test_a_config_json_that_lacks_a_field_names_it(tmp_path, field):
    write_hf(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config[field]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'm' / 'config.json'}: no {field} field")):
        hf.load(tmp_path / "m", CONFIG, {})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A compiled plan on disk and a .safetensors file of its initial weights."""
    root = tmp_path_factory.mktemp("hf")
    assert run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(root / "plan"), *sum((["--set", s] for s in SHAPE), []),
                   "--set", "tie_weights=1").returncode == 0
    plan = Plan(json.loads((root / "plan" / "plan.json").read_text()), "tiny")
    for seed in (0, 1):
        save_safetensors(root / f"weights{seed}.safetensors", init_params(plan, seed))
    return root / "plan", root / "weights0.safetensors", root / "weights1.safetensors"


def test_a_bad_config_json_is_one_line_from_the_command_line(tmp_path, tiny):
    plan, _, _ = tiny
    write_hf(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("[]")
    proc = run_cli("-m", "graphgpt.sample", "--plan", str(plan), "--init-from", str(tmp_path / "m"), "--backend", "numpy")
    assert_user_error(proc, f"--init-from {tmp_path / 'm' / 'config.json'}: a JSON list")


def test_init_from_says_in_one_line_what_it_loaded(tmp_path, tiny):
    plan, weights, _ = tiny
    millions = f"{sum(v.size for v in load_safetensors(weights).values()) / 1e6:.2f}M"
    write_hf(tmp_path / "m")
    runs = {tmp_path / "m": f"loaded {millions} parameters from a Hugging Face GPT-2 directory {tmp_path / 'm'} "
                            f"(n_layer {L}, n_head {H}, n_embd {C}, vocab_size {V}, n_positions {T})",
            weights: f"loaded {millions} parameters from a .safetensors file {weights}"}
    for source, line in runs.items():
        proc = run_cli("-m", "graphgpt.sample", "--plan", str(plan), "--init-from", str(source), "--tokens", "2",
                       "--backend", "numpy")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == line
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--init-from", str(weights), "--steps", "2",
                   "--backend", "numpy", "--generate", "0", "--save", str(tmp_path / "ckpt"))
    assert proc.returncode == 0 and f"loaded {millions} parameters from a .safetensors file" in proc.stdout
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--init-from", str(tmp_path / "ckpt"), "--steps", "0",
                   "--backend", "numpy", "--generate", "0")
    assert proc.returncode == 0, proc.stderr
    assert f"loaded {millions} parameters from the checkpoint at step 2, {tmp_path / 'ckpt' / 'step_00000002'}" \
        in proc.stdout.splitlines()


def export_cli(plan, weights, out):
    return run_cli("tools/export_hf.py", "--plan", str(plan), "--weights", str(weights), "--out", str(out))


def contents(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_export_refuses_a_hugging_face_directory_it_did_not_write(tmp_path, tiny):
    """A downloaded GPT-2, the directory --init-from read, holds the same two files an export
    writes, but not the manifest: it is kept, and the export refused in one line."""
    plan, weights, _ = tiny
    write_hf(tmp_path / "downloaded")
    before = contents(tmp_path / "downloaded")
    assert_user_error(export_cli(plan, weights, tmp_path / "downloaded"),
                      f"--out {tmp_path / 'downloaded'} is not an export of tools/export_hf.py",
                      "it holds no graphgpt-export.json")
    assert contents(tmp_path / "downloaded") == before
    assert [p.name for p in tmp_path.iterdir()] == ["downloaded"]


def swap_config(out):
    (out / "config.json").write_text('{"my": "own config"}')


def swap_weights(out):
    (out / "model.safetensors").write_bytes(b"MINE")


def lose_manifest(out):
    (out / "graphgpt-export.json").unlink()


def link_weights(out):
    (out.parent / "elsewhere.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    (out / "model.safetensors").unlink()
    (out / "model.safetensors").symlink_to(out.parent / "elsewhere.safetensors")


@pytest.mark.parametrize("change, why", [
    (swap_config, "config.json was changed after it was exported"),
    (swap_weights, "model.safetensors was changed after it was exported"),
    (lose_manifest, "it holds no graphgpt-export.json"),
    (link_weights, "model.safetensors is a symbolic link"),
])
def test_export_replaces_its_own_export_only_as_it_wrote_it(tmp_path, tiny, change, why):
    plan, first, second = tiny
    out = tmp_path / "export"
    assert export_cli(plan, first, out).returncode == 0
    proc = export_cli(plan, second, out)
    assert proc.returncode == 0, proc.stderr
    assert export_cli(plan, second, tmp_path / "fresh").returncode == 0
    assert contents(out) == contents(tmp_path / "fresh")
    change(out)
    before = contents(out)
    assert_user_error(export_cli(plan, first, out),
                      f"--out {out} is not an export of tools/export_hf.py as it wrote it ({why})")
    assert contents(out) == before


def test_a_full_disk_leaves_no_partial_export_and_keeps_the_old_one(tiny, small_fs):
    plan, first, second = tiny
    out = small_fs / "export"
    assert export_cli(plan, first, out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fill(small_fs)
    assert_user_error(export_cli(plan, second, out), f"cannot write --out {out}", "the export there is as it was")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert_user_error(export_cli(plan, second, small_fs / "fresh"), "nothing was written")
    assert sorted(p.name for p in small_fs.iterdir() if not p.name.startswith("filler")) == ["export"]


def test_a_read_only_filesystem_is_one_line_and_keeps_the_export(tiny, small_fs):
    plan, first, second = tiny
    out = small_fs / "export"
    assert export_cli(plan, first, out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, text=True)
    assert remount.returncode == 0, remount.stderr
    assert_user_error(export_cli(plan, second, out), f"--out {out}: {small_fs} is on a read-only filesystem")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and [p.name for p in small_fs.iterdir()] == ["export"]


@pytest.mark.parametrize("change, message", [
    ({"n_positions": -5}, "n_positions -5: block_size must be an integer >= 1"),
    ({"n_layer": 0}, "n_layer 0: n_layer must be an integer >= 1"),
    ({"vocab_size": -1}, "vocab_size -1: vocab_size must be an integer >= 0"),
    ({"vocab_size": 0}, "vocab_size 0: a model's vocab_size is at least 1"),
])
def test_hf_config_values_out_of_range_name_the_file_and_field(tmp_path, change, message):
    write_hf(tmp_path / "m", **change)
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "plan"), "--hf-config", str(tmp_path / "m"),
                   "--set", "batch_size=2")
    assert_user_error(proc, f"{tmp_path / 'm' / 'config.json'}: {message}")
    assert "--set" not in proc.stderr and not (tmp_path / "plan").exists()


def test_a_set_value_over_a_hf_config_value_is_named_as_set(tmp_path):
    write_hf(tmp_path / "m")
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "plan"), "--hf-config", str(tmp_path / "m"),
                   "--set", "n_layer=0")
    assert_user_error(proc, "--set n_layer=0: n_layer must be an integer >= 1")
