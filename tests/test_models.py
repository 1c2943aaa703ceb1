"""The model files beside model.py, end to end at tiny sizes: models/llama.py with grouped-query
attention (four query heads over two key/value heads) and models/speedrun.py each compile, train
on NumPy (the loss falls), evaluate, resume bit-exactly (10 steps, a resume and 10 more equal 20
in one go) and decode greedily with the key/value caches as the windowed generator does."""
import json

import numpy as np
import pytest

from graphgpt import plan as plan_io
from graphgpt.compiler import compile_model
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.sample import generate
from graphgpt.train import init_params
from tests.conftest import COMPILE, ROOT, run_cli, sets
from tests.test_resume import assert_same_log, assert_same_state, final_state, records, train

SIZES = ["n_layer=2", "n_head=4", "n_kv_head=2", "n_embd=16", "n_hidden=32", "batch_size=2", "rope_base=10000.0"]
MODELS = {"llama": ROOT / "models" / "llama.py", "speedrun": ROOT / "models" / "speedrun.py"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(" ".join(f"w{i % 37} q{i % 11}" for i in range(600)) + ". the end.")
    return path


@pytest.fixture(scope="module", params=list(MODELS))
def plan(request, tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp(request.param) / "plan"
    proc = run_cli(COMPILE, str(MODELS[request.param]), "--out", str(out), "--data", str(corpus),
                   *sets([*SIZES, "block_size=8", "vocab_size=0", "lr=1e-2"]))
    assert proc.returncode == 0, proc.stderr
    return out


def ten_resume_ten(tmp_path, plan, corpus, *backend) -> list[float]:
    """20 steps in one go, then 10, a resume and 10 more: the same losses, evaluations and final
    state, bit for bit. The 20 steps' losses."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(plan, corpus, *backend, "--steps", "20", "--save", str(whole), "--log", str(tmp_path / "whole.jsonl"))
    train(plan, corpus, *backend, "--steps", "10", "--decay-steps", "20", "--save", str(split),
          "--log", str(tmp_path / "split.jsonl"))
    second = train(plan, corpus, *backend, "--steps", "20", "--resume", str(split), "--log", str(tmp_path / "split.jsonl"))
    assert "resumed from" in second.stdout
    assert_same_log(tmp_path / "split.jsonl", tmp_path / "whole.jsonl")
    assert_same_state(final_state(whole, plan), final_state(split, plan))
    return [r["loss"] for r in records(tmp_path / "whole.jsonl") if "loss" in r]


def test_trains_evaluates_and_resumes_bit_exactly(tmp_path, plan, corpus):
    losses = ten_resume_ten(tmp_path, plan, corpus)
    assert len(losses) == 20 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, losses
    evaluated = [json.loads(line) for line in (tmp_path / "whole.jsonl").read_text().splitlines() if "val_loss" in line]
    assert len(evaluated) > 2 and evaluated[-1]["val_loss"] < evaluated[0]["val_loss"]


@pytest.mark.gpu
def test_trains_and_resumes_bit_exactly_on_cuda_with_the_graph(tmp_path, plan, corpus):
    losses = ten_resume_ten(tmp_path, plan, corpus, "--backend", "cuda")
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, losses


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("extra", [[], ["sample_batch=2", "tie_weights=1"]], ids=["untied", "tied-two-samples"])
def test_kv_cache_greedy_equals_windowed_greedy(tmp_path, model, extra):
    compiled = compile_model(MODELS[model], [*SIZES, "block_size=16", "vocab_size=100", *extra], log=lambda *a: None)
    plan_io.save(compiled.data, tmp_path / "plan", compiled.files)
    plan = plan_io.load(tmp_path / "plan")
    assert "decode" in plan.data["programs"]
    backend = NumpyBackend(plan, dtype=np.float64)
    for name, value in init_params(plan, 3).items():  # the speedrun's zero projections too: no near ties
        backend.set_tensor(name, (value if value.any() else np.random.default_rng(4).normal(0, 0.02, value.shape))
                           * (8 if value.ndim == 2 else 1))
    calls = []
    run = backend.run
    backend.run = lambda program, feeds, fetch=None: calls.append(program) or run(program, feeds, fetch)
    for prompt in ([3, 5, 7], [1], list(range(14))):
        cached = generate(backend, prompt, 12, 99, 98, kv_cache=True)
        decoded = calls.count("decode")
        windowed = generate(backend, prompt, 12, 99, 98, kv_cache=False)
        assert cached == windowed and all(len(new) == 12 for new in cached)
        assert decoded == min(11, 16 - len(prompt)), prompt  # the caches served every position in the block
        calls.clear()
