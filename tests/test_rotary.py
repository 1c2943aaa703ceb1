"""Rotary position embedding and the constant tensors that hold its tables: the op's reference
against LLaMA's rotation written out independently, the tables a compile writes and the backends
load, a tiny LLaMA-style model (tests/rotary_model.py) that trains on NumPy and decodes through its
key/value caches as its windows do, and the one-line errors of bad input."""
import json
import math

import numpy as np
import pytest

from graphgpt import dsl, plan as plan_io, plan_schema
from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.errors import UserError
from graphgpt.ir import GraphError
from graphgpt.numpy_ops import BY_OP
from graphgpt.ops.source import const_tensor_values
from graphgpt.rope_scaling import inverse_frequencies, rotary_scaling
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.sample import generate
from graphgpt.schedule import DECODE_POSITION
from graphgpt.tensor_files import load_safetensors, save_safetensors
from graphgpt.train import Trainer, init_params
from tests.conftest import COMPILE, ROOT, assert_user_error, run_cli, sets

MODEL = ROOT / "tests" / "rotary_model.py"
SMALL = ["n_embd=32", "block_size=16", "vocab_size=100", "sample_batch=2"]


def llama_rotation(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """Hugging Face LLaMA's rotate_half embedding, written as complex numbers: column i and column
    i + D/2 are the real and imaginary parts of one number, turned by position * inv_freq[i]."""
    d = x.shape[-1]
    inv_freq = 1.0 / base ** (np.arange(0, d, 2, dtype=np.float64) / d)
    turn = np.exp(1j * np.outer(positions, inv_freq))[None, :, None, :]  # (1, T, 1, D/2)
    z = (x[..., :d // 2] + 1j * x[..., d // 2:]) * turn
    return np.concatenate([z.real, z.imag], axis=-1)


def tables(rows: int, d: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    angles = np.outer(np.arange(rows), 1.0 / base ** (np.arange(0, d, 2) / d))
    return np.cos(angles), np.sin(angles)


# ---- the op -----------------------------------------------------------------------------------
@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_the_reference_is_llamas_rotation(base):
    rng = np.random.default_rng(0)
    x, (cos, sin) = rng.standard_normal((2, 6, 3, 8)), tables(10, 8, base)
    np.testing.assert_allclose(BY_OP["rotary"]({"inverse": False}, x, cos, sin),
                               llama_rotation(x, np.arange(6), base), rtol=1e-13, atol=1e-13)
    at = BY_OP["rotary"]({"inverse": False}, x[:, :2], cos, sin, np.int32(7))  # rows 7 and 8: decoding
    np.testing.assert_allclose(at, llama_rotation(x[:, :2], np.arange(7, 9), base), rtol=1e-13, atol=1e-13)
    back = BY_OP["rotary"]({"inverse": True}, BY_OP["rotary"]({"inverse": False}, x, cos, sin), cos, sin)
    np.testing.assert_allclose(back, x, rtol=1e-13, atol=1e-13)


def test_the_compiler_computes_the_tables_in_float64():
    cos = const_tensor_values({"table": "rotary_cos", "shape": (16, 4), "base": 10000.0})
    sin = const_tensor_values({"table": "rotary_sin", "shape": (16, 4), "base": 10000.0})
    expected = tables(16, 8, 10000.0)
    assert cos.dtype == np.float64
    np.testing.assert_allclose(cos, expected[0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(sin, expected[1], rtol=0, atol=1e-15)


# ---- scaled frequencies -----------------------------------------------------------------------
LLAMA_3_2 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192}  # LLaMA 3.2's rope_scaling; 3.1's has factor 8


def llama3_frequency(inv_freq: float, factor: float, low: float, high: float, original: int) -> float:
    """Meta's apply_scaling of LLaMA 3.1, one frequency at a time in Python floats: kept above the
    high-frequency wavelength cut, divided by factor below the low one, blended in between."""
    wavelength = 2 * math.pi / inv_freq
    if wavelength < original / high:
        return inv_freq
    if wavelength > original / low:
        return inv_freq / factor
    smooth = (original / wavelength - low) / (high - low)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


@pytest.mark.parametrize("half, base, scaling", [
    (32, 500000.0, LLAMA_3_2),
    (64, 500000.0, LLAMA_3_2 | {"factor": 8.0}),
    (4, 500000.0, LLAMA_3_2 | {"original_max_position_embeddings": 256}),  # one frequency of each kind
    (8, 10000.0, {"rope_type": "linear", "factor": 4.0}),
])
def test_scaled_frequencies_are_the_float64_formulas(half, base, scaling):
    plain = [base ** (-2 * i / (2 * half)) for i in range(half)]
    if scaling["rope_type"] == "linear":
        expected = [f / scaling["factor"] for f in plain]
    else:
        expected = [llama3_frequency(f, scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"],
                                     scaling["original_max_position_embeddings"]) for f in plain]
    got = inverse_frequencies(half, base, **rotary_scaling(scaling))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=0)
    np.testing.assert_allclose(inverse_frequencies(half, base), plain, rtol=1e-15, atol=0)
    cos = const_tensor_values({"table": "rotary_cos", "shape": (5, half), "base": base, **rotary_scaling(scaling)})
    np.testing.assert_allclose(cos, np.cos(np.outer(np.arange(5), expected)), rtol=0, atol=1e-15)


@pytest.mark.parametrize("head_dim, base, scaling", [(64, 500000.0, LLAMA_3_2), (128, 500000.0, LLAMA_3_2 | {"factor": 8.0}),
                                                     (8, 500000.0, LLAMA_3_2 | {"original_max_position_embeddings": 256}),
                                                     (16, 10000.0, {"rope_type": "linear", "factor": 2.0})])
def test_scaled_frequencies_are_transformers(head_dim, base, scaling):
    """Where PyTorch and transformers are importable: their inv_freq (float32) for the same
    parameters, LLaMA 3.2 1B's and 3.1 8B's among them."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    config = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, max_position_embeddings=131072,
                                      rope_parameters=scaling | {"rope_theta": base})
    theirs, attention_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config)
    assert attention_factor == 1.0  # neither scaling scales the cosines and sines themselves
    ours = inverse_frequencies(head_dim // 2, base, **rotary_scaling(scaling))
    np.testing.assert_allclose(ours, theirs.double().numpy(), rtol=2e-6, atol=0)


# ---- the plan's constant tensors --------------------------------------------------------------
@pytest.fixture(scope="module")
def rotary_plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("rotary") / "plan"
    compiled = compile_model(MODEL, SMALL, log=lambda *a: None)
    plan_io.save(compiled.data, out, compiled.files)
    return out


def test_a_plan_carries_its_tables_in_the_constants_region(rotary_plan):
    plan = plan_io.load(rotary_plan)
    data = plan.data
    assert data["schema_version"] == plan_io.SCHEMA_VERSION
    listed = data["consts"]["tensors"]
    assert [t["name"] for t in listed] == ["rotary_cos[16x8](base=10000.0)", "rotary_sin[16x8](base=10000.0)"]
    cos, sin = tables(16, 16, 10000.0)
    np.testing.assert_array_equal(plan.constants[listed[0]["name"]], cos.astype(np.float32))
    np.testing.assert_array_equal(plan.constants[listed[1]["name"]], sin.astype(np.float32))
    start, size = data["arena"]["regions"]["consts"]
    assert all(start <= t["offset"] and t["offset"] + 16 * 8 * 4 <= start + size for t in listed)
    assert not [t for t in plan.tensors if "rotary" in t["name"]]  # not trained, not checkpointed
    manifest = json.loads((rotary_plan / plan_io.MANIFEST).read_text())
    assert plan_io.CONSTANTS_FILE in manifest["files"]
    # every program reads the same two tables, and nothing writes the constants region
    offsets = {t["offset"] for t in listed}
    for name, program in data["programs"].items():
        rotary = [ln for ln in program.launches if ln.op == "rotary"]
        assert rotary and all({ln.ins[1].offset, ln.ins[2].offset} == offsets for ln in rotary), name
        for ln in program.launches:
            for out in ln.outputs:
                assert not start <= out.offset < start + size, (name, ln.op)
    decode = [ln for ln in data["programs"]["decode"].launches if ln.op == "rotary"]
    assert all(ln.ins[3] == data["programs"]["decode"].inputs[DECODE_POSITION] for ln in decode)
    backward = [ln for ln in data["programs"]["train"].launches if ln.op == "rotary" and ln.attrs["inverse"]]
    assert len(backward) == 4  # q and k of two layers


def test_both_numpy_widths_load_the_tables_and_training_leaves_them(rotary_plan):
    plan = plan_io.load(rotary_plan)
    for dtype in (np.float32, np.float64):
        backend = NumpyBackend(plan, dtype=dtype)
        for buf, values in plan.constant_buffers():
            np.testing.assert_array_equal(backend.view(buf), values)
    phrase = np.random.default_rng(0).integers(0, 100, 50)
    tokens = np.tile(phrase, 40).astype(np.int32)
    Trainer(plan, backend, SequentialSampler(tokens, plan.config["batch_size"], plan.config["block_size"])).steps(2)
    for buf, values in plan.constant_buffers():
        np.testing.assert_array_equal(backend.view(buf), values)


def test_a_plan_without_constant_tensors_lists_none_and_has_no_constants_file():
    compiled = compile_model(ROOT / "model.py", ["n_layer=1", "n_embd=16", "n_head=2", "block_size=8"],
                             log=lambda *a: None)
    assert "tensors" not in compiled.data["consts"]
    assert plan_io.CONSTANTS_FILE not in compiled.files


def _copy(plan_dir, tmp_path):
    import shutil
    return shutil.copytree(plan_dir, tmp_path / "copy")


def test_a_plan_whose_tables_are_missing_or_wrong_is_refused_in_one_line(rotary_plan, tmp_path):
    plan_dir = _copy(rotary_plan, tmp_path)
    values = load_safetensors(plan_dir / plan_io.CONSTANTS_FILE)
    name = next(iter(values))
    save_safetensors(plan_dir / plan_io.CONSTANTS_FILE, {**values, name: values[name][:4]})
    with pytest.raises(UserError, match=r"constant 'rotary_cos\[16x8\]\(base=10000.0\)' is float32 of shape \[4, 8\], "
                                        r"not float32 of shape \[16, 8\]") as refused:
        plan_io.load(plan_dir)
    assert "\n" not in str(refused.value)
    (plan_dir / plan_io.CONSTANTS_FILE).unlink()
    with pytest.raises(UserError, match="holds no constants.safetensors"):
        plan_io.load(plan_dir)


def test_the_schema_keeps_constant_tensors_inside_the_constants_region(rotary_plan):
    data = json.loads((rotary_plan / plan_io.PLAN_FILE).read_text())
    kernels = [f"kernels/{p.name}" for p in (rotary_plan / "kernels").iterdir()]
    plan_schema.check(data, kernels)
    outside = json.loads(json.dumps(data))
    outside["consts"]["tensors"][1]["offset"] = 0
    with pytest.raises(plan_schema.PlanError, match=r"consts.tensors\[1\].offset: bytes 0 to 512 are not within"):
        plan_schema.check(outside, kernels)


# ---- the model: training and decoding ---------------------------------------------------------
def test_the_rotary_model_trains_on_numpy(rotary_plan):
    plan = plan_io.load(rotary_plan)
    phrase = np.random.default_rng(0).integers(0, 100, 50)
    tokens = np.tile(phrase, 400).astype(np.int32)  # a text that repeats: something to learn
    trainer = Trainer(plan, NumpyBackend(plan), SequentialSampler(tokens, plan.config["batch_size"],
                                                                  plan.config["block_size"]))
    trainer.optimizer["lr"] = trainer.optimizer["min_lr"] = 1e-2
    losses = [m["loss"] for m in trainer.steps(30)]
    assert abs(losses[0] - np.log(100)) < 0.5 and losses[-1] < losses[0] - 1.0, losses


def _backend(plan):
    """float64 NumPy, with weights large enough that the next token is never a near tie."""
    backend = NumpyBackend(plan, dtype=np.float64)
    for name, value in init_params(plan, 3).items():
        backend.set_tensor(name, value * (8 if value.ndim == 2 else 1))
    return backend


def test_decoding_gives_the_windows_logits_and_greedy_tokens(rotary_plan):
    plan = plan_io.load(rotary_plan)
    backend = _backend(plan)
    seq = np.random.default_rng(2).integers(0, 100, (2, 16), dtype=np.int32)
    window = backend.run("generate", {"tokens": seq})["logits"]
    shifted = backend.run("generate", {"tokens": np.roll(seq, 1, axis=1)})["logits"]
    assert not np.allclose(shifted[:, 1:], window[:, :-1])  # positions matter: rotary is at work
    for p in range(16):
        step = backend.run("decode", {"tokens": seq[:, p:p + 1], DECODE_POSITION: p})["logits"]
        np.testing.assert_allclose(step[:, 0], window[:, p], rtol=1e-10, atol=1e-10)
    for prompt in ([3, 5, 7], [1], list(range(14))):
        cached = generate(backend, prompt, 12, 99, 98, kv_cache=True)
        assert cached == generate(backend, prompt, 12, 99, 98, kv_cache=False)
        assert all(len(new) == 12 for new in cached)


# ---- bad input --------------------------------------------------------------------------------
def _trace(shape, base=10000.0, caches=None, scaling=None):
    def build(tracer):
        dsl.rotary(tracer.input("x", shape), base, scaling)
    return dsl.trace(build, caches=caches)


@pytest.mark.parametrize("shape,base,caches,message", [
    ((1, 4, 2, 5), 10000.0, None, "rotary: x must be (B, T, H, D) with D even, got (1, 4, 2, 5)"),
    ((4, 6), 10000.0, None, "rotary: x must be (B, T, H, D) with D even, got (4, 6)"),
    ((1, 4, 2, 6), 0.0, None, "rotary: base must be a finite number > 0, got 0.0"),
    ((1, 4, 2, 6), -2.0, None, "rotary: base must be a finite number > 0, got -2.0"),
    ((1, 4, 2, 6), float("inf"), None, "rotary: base must be a finite number > 0, got inf"),
    ((1, 8, 2, 6), 10000.0, 4, "rotary: a table of 4 positions is shorter than the 8 positions of x"),
], ids=["odd D", "not 4-D", "base 0", "base negative", "base infinite", "table shorter"])
def test_bad_input_is_a_graph_error_naming_the_line(shape, base, caches, message):
    with pytest.raises(GraphError) as refused:
        _trace(shape, base, None if caches is None else dsl.KvCaches(caches))
    text = str(refused.value)
    assert text.startswith("test_rotary.py:") and message in text and "\n" not in text, text


@pytest.mark.parametrize("scaling, message", [
    ({"rope_type": "yarn", "factor": 2.0}, "rotary: scaling must be None or a dict with rope_type 'linear' or 'llama3', "
                                           "got {'rope_type': 'yarn', 'factor': 2.0}"),
    ({"rope_type": "linear"}, "rotary: 'linear' scaling takes factor, got "),
    ({"rope_type": "linear", "factor": float("nan")}, "rotary: 'linear' scaling's factor must be a finite number > 0, got nan"),
    (LLAMA_3_2 | {"low_freq_factor": 4.0}, "rotary: 'llama3' scaling's high_freq_factor 4.0 must exceed its low_freq_factor 4.0"),
    (LLAMA_3_2 | {"original_max_position_embeddings": 0},
     "rotary: 'llama3' scaling's original_max_position_embeddings must be an integer >= 1, got 0"),
], ids=["unknown kind", "no factor", "factor nan", "high not above low", "original 0"])
def test_a_bad_scaling_is_a_graph_error_naming_the_line(scaling, message):
    with pytest.raises(GraphError) as refused:
        _trace((1, 4, 2, 6), scaling=scaling)
    text = str(refused.value)
    assert text.startswith("test_rotary.py:") and message in text and "\n" not in text, text


@pytest.mark.parametrize("settings,message", [(["n_embd=12", "n_head=4"], "with D even, got (2, 8, 4, 3)"),
                                              (["rotary_base=0"], "base must be a finite number > 0, got 0.0")])
def test_compile_refuses_bad_rotary_settings_in_one_line(tmp_path, settings, message):
    proc = run_cli(COMPILE, str(MODEL), "--out", str(tmp_path / "plan"), *sets(settings))
    assert_user_error(proc, "rotary_model.py:", message)
    assert not (tmp_path / "plan").exists()


# ---- on the GPU ---------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_loads_the_tables_and_decodes_as_numpy_and_its_windows(rotary_plan):
    """float32 on CUDA: the arena holds the tables, the decode program's logits are NumPy's, and
    greedy generation through the caches gives the windowed generator's tokens."""
    from graphgpt.runtime.cuda_backend import CudaBackend
    plan = plan_io.load(rotary_plan)
    reference = _backend(plan)
    backend = CudaBackend(plan)
    for buf, values in plan.constant_buffers():
        np.testing.assert_array_equal(backend.view(buf).get(), values)
    for t in plan.params:
        backend.set_tensor(t["name"], reference.get_tensor(t["name"]).astype(np.float32))
    seq = np.random.default_rng(6).integers(0, 100, (2, 16), dtype=np.int32)
    for b in (backend, reference):
        b.run("generate", {"tokens": seq})
    for p in (1, 2, 3, 15):  # the first runs are eager, then the captured graph replays
        feeds = {"tokens": seq[:, p:p + 1], DECODE_POSITION: p}
        got, want = backend.run("decode", feeds)["logits"], reference.run("decode", feeds)["logits"]
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want), p
    for prompt in ([3, 5, 7], list(range(12))):
        cached = generate(backend, prompt, 8, 99, 98, kv_cache=True)
        assert cached == generate(backend, prompt, 8, 99, 98, kv_cache=False)
        assert cached == generate(reference, prompt, 8, 99, 98, kv_cache=True)
