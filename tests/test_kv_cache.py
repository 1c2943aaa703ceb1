"""Decoding with key/value caches: the two ops' references, the plan's generate and decode
programs and their caches, and generation through them against the windowed generator."""
import json

import numpy as np
import pytest

from graphgpt import plan as plan_io
from graphgpt.compiler import compile_model
from graphgpt.numpy_ops import BY_OP
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.sample import generate
from graphgpt.schedule import DECODE_POSITION
from graphgpt.train import init_params
from tests.conftest import COMPILE, ROOT, TINY, run_cli, sets

SMALL = ["n_layer=2", "n_head=2", "n_embd=32", "block_size=16", "batch_size=2", "vocab_size=100"]


def _compiled(tmp_path, extra=(), model=ROOT / "model.py"):
    compiled = compile_model(model, [*SMALL, *extra], log=lambda *a: None)
    plan_io.save(compiled.data, tmp_path / "plan", compiled.files)
    return plan_io.load(tmp_path / "plan")


def _backend(plan, seed=3):
    """float64 NumPy, with weights large enough that the next token is never a near tie."""
    backend = NumpyBackend(plan, dtype=np.float64)
    for name, value in init_params(plan, seed).items():
        backend.set_tensor(name, value * (8 if value.ndim == 2 else 1))
    return backend


# ---- the ops' references ---------------------------------------------------------------------
def test_cache_update_writes_the_new_rows_at_the_position_and_nothing_else():
    rng = np.random.default_rng(0)
    cache, qkv = rng.standard_normal((2, 10, 2, 3, 4)), rng.standard_normal((2, 3, 3, 3, 4))
    out = BY_OP["cache_update"]({}, cache, qkv, np.int32(4))
    np.testing.assert_array_equal(out[:, 4:7], qkv[:, :, 1:])
    np.testing.assert_array_equal(np.delete(out, [4, 5, 6], axis=1), np.delete(cache, [4, 5, 6], axis=1))
    past = BY_OP["cache_update"]({}, cache, qkv, np.int32(8))  # the third row falls off the end
    np.testing.assert_array_equal(past[:, 8:], qkv[:, :2, 1:])
    np.testing.assert_array_equal(past[:, :8], cache[:, :8])
    prefill = BY_OP["cache_update"]({}, cache, rng.standard_normal((2, 10, 3, 3, 4)))
    assert not np.array_equal(prefill, cache)


def test_cached_attention_is_causal_attention_one_row_at_a_time():
    """Each position's output over the cache (filled with the window's keys and values, then
    garbage past what the query may see) equals the fused attention's row of the whole window."""
    rng = np.random.default_rng(1)
    b, t, h, d, length = 2, 9, 3, 8, 12
    qkv = rng.standard_normal((b, t, 3, h, d))
    whole, _ = BY_OP["causal_attention"]({"scale": 0.35}, qkv)
    cache = BY_OP["cache_update"]({}, 1e3 * rng.standard_normal((b, length, 2, h, d)), qkv)
    for p in range(t):
        row = BY_OP["cached_attention"]({"scale": 0.35}, qkv[:, p:p + 1], cache, np.int32(p))
        np.testing.assert_allclose(row[:, 0], whole[:, p], rtol=1e-12, atol=1e-12)
    rows = BY_OP["cached_attention"]({"scale": 0.35}, qkv[:, 4:7], cache, np.int32(4))  # several at once
    np.testing.assert_allclose(rows, whole[:, 4:7], rtol=1e-12, atol=1e-12)


# ---- the plan -----------------------------------------------------------------------------
def test_the_plan_decodes_one_position_per_sequence_against_caches_in_place(tmp_path):
    plan = _compiled(tmp_path, ["sample_batch=3", "dtype=bf16"])
    programs = plan.data["programs"]
    tokens = programs["generate"].inputs["tokens"]
    assert programs["generate"].inputs == {"tokens": plan_io.Buffer("i32", tokens.offset, (3, 16))}
    inputs = programs["decode"].inputs
    assert set(inputs) == {"tokens", DECODE_POSITION}
    position = inputs[DECODE_POSITION]
    assert inputs["tokens"].shape == (3, 1) and (position.dtype, position.shape) == ("i32", ())
    assert programs["decode"].outputs["logits"].shape == (3, 1, 100)
    caches = [t for t in plan.tensors if t["name"].startswith("kv_cache.")]
    assert [t["name"] for t in caches] == ["kv_cache.0", "kv_cache.1"]
    assert all(t["shape"] == [3, 16, 2, 2, 16] and t["dtype"] == "bf16" for t in caches)
    copies = {t["name"]: t for t in plan.tensors if t["kind"] == "cache" and t not in caches}
    assert copies.keys() == {f"{t['name']}.bf16" for t in plan.params}  # the weights in bf16
    # the key/value caches open the work region, which the training programs' work goes over; the
    # copies, which every program reads, have a region of their own below it, in parameter order
    regions = plan.data["arena"]["regions"]

    def sizes(ts):
        return sum(-(-int(np.prod(t["shape"])) * 2 // 256) * 256 for t in ts)
    assert regions["caches"][0] == regions["work"][0] and regions["caches"][1] == sizes(caches)
    assert programs["train"].memory["work_peak"] > regions["caches"][1]
    assert regions["copies"][1] == regions["params"][1] // 2 and regions["copies"][0] < regions["work"][0]
    for t in plan.params:  # as many elements into their region as the weights into theirs
        assert copies[f"{t['name']}.bf16"]["offset"] - regions["copies"][0] == (t["offset"] - regions["params"][0]) // 2
    for name in ("generate", "decode"):
        updates = [ln for ln in programs[name].launches if ln.op == "cache_update"]
        assert [ln.out.offset for ln in updates] == [t["offset"] for t in caches]  # over the caches themselves
        assert not [ln for ln in programs[name].launches if ln.op == "copy"]
    attention = [ln for ln in programs["decode"].launches if ln.op == "cached_attention"]
    assert [ln.ins[1].offset for ln in attention] == [t["offset"] for t in caches]
    assert not any(ln.op == "cached_attention" for ln in programs["generate"].launches)
    train = json.dumps(programs["train"].to_json())
    assert "caches" not in train and "kv_cache" not in train


def test_a_model_that_cannot_decode_compiles_without_a_decode_program(tmp_path):
    """Attention through explicit scores has no caches; a position table sliced by the model itself
    would give every decoded token position 0's row."""
    logs = []
    softmax = compile_model(ROOT / "model.py", [*SMALL, "attention=softmax"], log=logs.append)
    assert "decode" not in softmax.data["programs"] and any("not causal_attention" in line for line in logs)
    sliced = tmp_path / "sliced.py"
    sliced.write_text((ROOT / "model.py").read_text().replace("position_rows(wpe, T)", "wpe[:T]"))
    logs.clear()
    assert "decode" not in compile_model(sliced, SMALL, log=logs.append).data["programs"]
    assert any("position_rows" in line for line in logs)


# ---- generation ----------------------------------------------------------------------------
def test_decoded_logits_equal_the_windows(tmp_path):
    """Prefill a prompt, then decode the rest of a sequence token by token: every position's
    logits equal those of the whole window computed at once."""
    plan = _compiled(tmp_path, ["tie_weights=1"])
    backend = _backend(plan)
    seq = np.random.default_rng(2).integers(0, 100, (1, 16), dtype=np.int32)
    window = backend.run("generate", {"tokens": seq})["logits"]
    prompt = np.zeros_like(seq)
    prompt[:, :5] = seq[:, :5]
    np.testing.assert_allclose(backend.run("generate", {"tokens": prompt})["logits"][:, :5], window[:, :5],
                               rtol=1e-12, atol=1e-12)
    for p in range(5, 16):
        step = backend.run("decode", {"tokens": seq[:, p:p + 1], DECODE_POSITION: p})["logits"]
        np.testing.assert_allclose(step[:, 0], window[:, p], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("extra", [[], ["sample_batch=2", "tie_weights=1"], ["dtype=bf16"]])
def test_kv_cache_generation_gives_the_windowed_generators_tokens(tmp_path, extra):
    """Greedy and sampled, from prompts that leave room in the block and from prompts that outgrow
    it (past block_size both rerun the window)."""
    plan = _compiled(tmp_path, extra)
    backend = _backend(plan)
    calls = []
    run = backend.run
    backend.run = lambda program, feeds, fetch=None: calls.append(program) or run(program, feeds, fetch)
    for prompt in ([3, 5, 7], [1], list(range(14))):
        for kw in ({}, {"temperature": 1.5, "top_k": 20}):
            cached = generate(backend, prompt, 12, 99, 98, rng=np.random.default_rng(5), kv_cache=True, **kw)
            used = calls[:]
            windowed = generate(backend, prompt, 12, 99, 98, rng=np.random.default_rng(5), kv_cache=False, **kw)
            assert cached == windowed and len(cached) == plan.program("decode").inputs["tokens"].shape[0]
            assert all(len(new) == 12 for new in cached)  # 98 never comes: no sequence stops early
            calls.clear()
        decoded = used.count("decode")
        assert decoded == min(11, 16 - len(prompt)), (prompt, used)


def test_generation_stops_each_sequence_at_its_end_of_text(tmp_path):
    plan = _compiled(tmp_path, ["sample_batch=4"])
    backend = _backend(plan)
    batch = generate(backend, [1, 2], 10, 99, eos_id=7, temperature=3.0, rng=np.random.default_rng(0))
    assert len(batch) == 4
    for new in batch:
        assert 7 not in new[:-1] and (len(new) == 10 or new[-1] == 7)


def test_sample_cli_gives_the_same_text_with_and_without_the_cache(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    plan = tmp_path / "plan"
    assert run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(plan), "--data", str(corpus),
                   *sets([*TINY, "sample_batch=2"])).returncode == 0
    weights = tmp_path / "w"
    trained = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--data", str(corpus), "--steps", "20",
                      "--backend", "numpy", "--generate", "0", "--save", str(weights))
    assert trained.returncode == 0, trained.stderr
    texts = {}
    for flag in ("--kv-cache", "--no-kv-cache"):
        proc = run_cli("-m", "graphgpt.sample", "--plan", str(plan), "--init-from", str(weights), "--prompt", "the",
                       "--tokens", "10", "--samples", "3", flag, "--backend", "numpy")
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.startswith("sample ")]  # after "loaded ..."
        assert [line.split(" ", 2)[1] for line in lines] == ["1", "2", "3"]  # two batches of two, cut to three
        texts[flag] = [line.split("): ", 1)[1] for line in lines]
    assert texts["--kv-cache"] == texts["--no-kv-cache"]


def test_torch_reference_decodes_as_the_plan_does(tmp_path):
    """tools/torch_gpt2.py's static cache, which tools/bench_decode.py times, gives the decode
    program's logits (float64 on both sides)."""
    torch = pytest.importorskip("torch")
    from tools.torch_gpt2 import GPT2, KvCache, decode_step, load_weights, prefill
    plan = _compiled(tmp_path, ["sample_batch=2", "tie_weights=1"])
    backend = _backend(plan)
    model = GPT2.from_config(plan.config).double().eval()
    load_weights(model, {t["name"]: backend.get_tensor(t["name"]) for t in plan.params})
    seq = np.random.default_rng(4).integers(0, 100, (2, 16), dtype=np.int32)
    cache = KvCache(model, 2, torch.float64, "cpu")
    prompt = np.zeros_like(seq)
    prompt[:, :6] = seq[:, :6]
    np.testing.assert_allclose(prefill(model, torch.from_numpy(seq[:, :6]).long(), cache).numpy(),
                               backend.run("generate", {"tokens": prompt})["logits"][:, :6], rtol=1e-9, atol=1e-9)
    for p in range(6, 16):
        ours = backend.run("decode", {"tokens": seq[:, p:p + 1], DECODE_POSITION: p})["logits"]
        theirs = decode_step(model, torch.from_numpy(seq[:, p:p + 1]).long(), torch.tensor(p), cache).numpy()
        np.testing.assert_allclose(theirs, ours, rtol=1e-9, atol=1e-9)


def test_bench_decode_refuses_bad_input_in_one_line(tmp_path):
    from graphgpt.runtime import cuda_available
    plan = _compiled(tmp_path)
    bench = str(ROOT / "tools" / "bench_decode.py")
    for args, message in ((["--tokens", "0"], "--tokens must be at least 1"),
                          ([] if not cuda_available() else ["--prompt", "10", "--tokens", "10"],
                           "needs an NVIDIA GPU" if not cuda_available() else "exceed block_size 16")):
        proc = run_cli(bench, "--plan", str(tmp_path / "plan"), *args)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert plan.config["block_size"] == 16


# ---- on the GPU -----------------------------------------------------------------------------
def _cuda(plan, numpy_backend):
    from graphgpt.runtime.cuda_backend import CudaBackend
    backend = CudaBackend(plan)
    for t in plan.params:
        backend.set_tensor(t["name"], numpy_backend.get_tensor(t["name"]).astype(np.float32))
    return backend


@pytest.mark.gpu
@pytest.mark.parametrize("extra", [["sample_batch=3"], ["sample_batch=2", "tie_weights=1", "n_head=1", "n_embd=64",
                                                        "block_size=128"]])
def test_cuda_kv_cache_greedy_equals_windowed_and_numpy(tmp_path, extra):
    """float32 on CUDA: the decode program's logits are NumPy's, and greedy generation through the
    caches (each decode step replayed as a CUDA graph) gives the windowed generator's tokens."""
    plan = _compiled(tmp_path, extra)
    reference = _backend(plan)
    backend = _cuda(plan, reference)
    rows, block = plan.program("generate").inputs["tokens"].shape
    seq = np.random.default_rng(6).integers(0, 100, (rows, block), dtype=np.int32)
    for b in (backend, reference):
        b.run("generate", {"tokens": seq})
    for p in (1, 2, 3, block - 1):  # the first runs are eager, then the captured graph replays
        feeds = {"tokens": seq[:, p:p + 1], DECODE_POSITION: p}
        got, want = backend.run("decode", feeds)["logits"], reference.run("decode", feeds)["logits"]
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want), p
    for prompt in ([3, 5, 7], [t % 100 for t in range(block - 4)]):
        cached = generate(backend, prompt, block // 2, 99, 98, kv_cache=True)
        assert cached == generate(backend, prompt, block // 2, 99, 98, kv_cache=False)
        assert cached == generate(reference, prompt, block // 2, 99, 98, kv_cache=True)


@pytest.mark.gpu
def test_cuda_bf16_decoding_follows_the_window(tmp_path):
    """bf16 rounds differently along the two paths (the decode kernel against the fused
    attention's tiles), so logits agree to bf16's precision, and so do nearly all next tokens."""
    plan = _compiled(tmp_path, ["dtype=bf16", "sample_batch=2", "n_embd=128", "block_size=128"])
    backend = _cuda(plan, _backend(plan))
    seq = np.random.default_rng(7).integers(0, 100, (2, 128), dtype=np.int32)
    window = backend.run("generate", {"tokens": seq})["logits"].astype(np.float64)
    same = []
    for p in range(96, 128):
        step = backend.run("decode", {"tokens": seq[:, p:p + 1], DECODE_POSITION: p})["logits"][:, 0].astype(np.float64)
        assert np.linalg.norm(step - window[:, p]) <= 2e-2 * np.linalg.norm(window[:, p]), p
        same += list(step.argmax(-1) == window[:, p].argmax(-1))
    assert np.mean(same) >= 0.9, np.mean(same)


def test_bf16_generation_reads_the_weights_as_they_are_now(tmp_path):
    """The generation programs read the weights' bf16 copies, which the backend makes afresh when
    the weights are written: after that, it generates what a fresh backend with the new weights does."""
    plan = _compiled(tmp_path, ["dtype=bf16", "sample_batch=2"])
    assert "cast_weights" in plan.data["programs"] and not any(
        ln.op == "cast" for name in ("generate", "decode") for ln in plan.program(name).launches)
    changed, fresh = _backend(plan, seed=3), _backend(plan, seed=4)
    before = generate(changed, [1, 2, 3], 8, 99, 98)
    for t in plan.params:
        changed.set_tensor(t["name"], fresh.get_tensor(t["name"]))
    after = generate(changed, [1, 2, 3], 8, 99, 98)
    assert after == generate(fresh, [1, 2, 3], 8, 99, 98) and after != before


def test_argmax_is_numpys_first_maximum_within_the_limit():
    x = np.array([[1.0, 3.0, 3.0, 9.0], [np.nan, 2.0, np.nan, 9.0], [-np.inf, -np.inf, -np.inf, 0.0]])
    np.testing.assert_array_equal(BY_OP["argmax"]({"limit": 3}, x), [1, 0, 0])  # column 3 is padding
    assert BY_OP["argmax"]({"limit": 4}, x).dtype == np.int32


def test_greedy_generation_reads_back_the_programs_tokens_not_their_logits(tmp_path):
    plan = _compiled(tmp_path, ["sample_batch=2"])
    backend = _backend(plan)
    fetched = []
    run = backend.run
    backend.run = lambda program, feeds, fetch=None: fetched.append(fetch) or run(program, feeds, fetch)
    greedy = generate(backend, [1, 2], 6, 99, 98)
    assert set(fetched) == {("next_token",)}
    fetched.clear()
    generate(backend, [1, 2], 6, 99, 98, temperature=1.0, rng=np.random.default_rng(0))
    assert set(fetched) == {("logits",)}
    backend.run = run  # the host's choice from the logits is the programs'
    logits = run("generate", {"tokens": np.array([[1, 2] + [0] * 14] * 2, np.int32)})
    np.testing.assert_array_equal(logits["next_token"], logits["logits"][..., :99].argmax(-1))
    assert greedy[0][0] == logits["next_token"][0, 1]
