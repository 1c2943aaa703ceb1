"""The classifier in chunks of the batch (passes/chunk_classifier.py) computes the whole batch's
loss and gradients, and holds one chunk's logits at a time."""
import numpy as np
import pytest

from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.errors import UserError
from graphgpt.plan import Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import Trainer
from tests.conftest import ROOT

TWO_LAYERS = ["n_layer=2", "n_head=4", "n_embd=64", "block_size=32", "batch_size=4"]
GPT2_124M_BF16 = ["n_layer=12", "n_head=12", "n_embd=768", "block_size=1024", "batch_size=16", "vocab_size=50304",
                  "dtype=bf16"]


def _compiled(overrides) -> dict:
    return compile_model(ROOT / "model.py", overrides, log=lambda *a: None).data


def _first_step(overrides, dtype) -> tuple[float, dict[str, np.ndarray], int]:
    """One step's loss and every parameter's gradient from the initial weights, and how many
    cross-entropy launches the step has."""
    data = _compiled(overrides)
    plan = Plan(data, "t")
    backend = NumpyBackend(plan, dtype)
    B, T = plan.config["batch_size"], plan.config["block_size"]
    Trainer(plan, backend, SequentialSampler(np.zeros(1000, np.int32), B, T))  # the initial weights
    tokens = np.random.default_rng(0).integers(0, plan.config["vocab_size"], (B, T))
    loss = backend.run("train", {"tokens": tokens, "targets": np.roll(tokens, -1, 1), "step_size": 0.0})["loss"]
    grads = {t["name"]: backend.get_tensor(t["name"], grad=True) for t in plan.params}
    losses = [ln for ln in data["programs"]["train"].launches if ln.op.startswith("cross_entropy")]
    return float(loss), grads, len(losses)


@pytest.mark.parametrize("overrides,dtype,rtol", [
    ([], np.float64, 1e-12),
    (["tie_weights=1"], np.float64, 1e-12),
    (["dtype=bf16"], np.float32, 1e-6),
], ids=["float64", "tied-float64", "bf16"])
def test_chunks_give_the_whole_batchs_loss_and_gradients(overrides, dtype, rtol):
    """Four chunks against the whole batch at once: the same loss and gradients but for the order
    of the sums (the loss's mean of means, the weight gradient summed over the chunks)."""
    loss, grads, n = _first_step(TWO_LAYERS + overrides + ["classifier_chunks=4"], dtype)
    whole_loss, whole, n_whole = _first_step(TWO_LAYERS + overrides + ["classifier_chunks=1"], dtype)
    assert (n, n_whole) == (4, 1)
    assert loss == pytest.approx(whole_loss, rel=rtol)
    for name, value in whole.items():
        err = np.linalg.norm(grads[name] - value) / np.linalg.norm(value)
        assert err <= rtol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("extra", [[], ["grad_accum=2"]], ids=["train", "accumulating"])
def test_chunked_training_follows_the_whole_batchs(extra):
    """Three float64 steps, with the optimizer and (accumulating) the micro-batches' gradient
    sums, land on the same weights."""
    def three_steps(chunks):
        plan = Plan(_compiled(TWO_LAYERS + extra + [f"classifier_chunks={chunks}"]), "t")
        tokens = np.random.default_rng(0).integers(0, plan.config["vocab_size"], 40_000).astype(np.int32)
        backend = NumpyBackend(plan, np.float64)
        trainer = Trainer(plan, backend, SequentialSampler(tokens, plan.config["batch_size"], plan.config["block_size"]))
        return [m["loss"] for m in trainer.steps(3)], {t["name"]: backend.get_tensor(t["name"]) for t in plan.params}
    losses, params = three_steps(4)
    whole_losses, whole = three_steps(1)
    np.testing.assert_allclose(losses, whole_losses, rtol=1e-12)
    for name, value in whole.items():
        np.testing.assert_allclose(params[name], value, rtol=1e-9, atol=1e-12, err_msg=name)


def test_gpt2_124m_holds_one_chunks_logits_at_a_time():
    """The default chunking of GPT-2 124M in bf16: four chunks of four sequences. Every chunk's
    logits and their gradient lie in one buffer, which each chunk reuses (so no two chunks' logits
    are ever alive together); the input's gradient is assembled in place from the chunks' rows,
    and the weight gradient is summed over the chunks in its own float32 slot, each GEMM adding
    onto the sum so far (beta = 1, in place)."""
    data = _compiled(GPT2_124M_BF16)
    train = data["programs"]["train"].launches
    lm_head = next(t for t in data["tensors"] if t["name"] == "lm_head.weight")
    assert not [b for ln in train for b in [*ln.outputs, *ln.ins] if b.shape == (16, 1024, 50304)]
    logits = [ln.out for ln in train if ln.op == "matmul" and ln.out.shape == (4, 1024, 50304)]
    assert len(logits) == 4 and len(set(logits)) == 1
    for ln in train:
        if ln.op == "cross_entropy_with_grad":
            assert ln.ins[0] == ln.outs[1] == logits[0]
    sums = [ln for ln in train if ln.out.shape == (768, 50304) and ln.kind == "matmul"]
    assert [ln.op for ln in sums] == ["matmul"] + ["fused_matmul"] * 3
    assert {ln.out.offset for ln in sums} == {lm_head["grad"]} and {ln.out.dtype for ln in sums} == {"f32"}
    assert all(ln.ins[-1] == ln.out for ln in sums[1:])
    rows = sorted(ln.out.offset for ln in train if ln.op == "matmul" and ln.out.shape == (4, 1024, 768))
    assert len(rows) == 4 and np.all(np.diff(rows) == 4 * 1024 * 768 * 2)


@pytest.mark.parametrize("overrides,chunks", [
    (GPT2_124M_BF16, 4),
    (GPT2_124M_BF16 + ["block_size=2048", "batch_size=8"], 4),
    (GPT2_124M_BF16 + ["dtype=f32"], 8),
    (TWO_LAYERS, 1),
], ids=["124M-bf16", "T2048", "124M-f32", "small-vocabulary"])
def test_the_default_chunks_keep_each_chunks_logits_within_512_mib(overrides, chunks):
    launches = _compiled(overrides)["programs"]["train"].launches
    assert sum(ln.op == "cross_entropy_with_grad" for ln in launches) == chunks


@pytest.mark.parametrize("value,message", [
    ("3", "classifier_chunks must be an integer >= 0 that divides batch_size 4"),
    ("-1", "classifier_chunks must be an integer >= 0"),
])
def test_chunk_counts_that_do_not_divide_the_batch_are_refused(value, message):
    with pytest.raises(UserError, match=message):
        _compiled(TWO_LAYERS + [f"classifier_chunks={value}"])


SCALED_LOGITS = """
from graphgpt.dsl import embedding, param
CONFIG = dict(n_embd=16, block_size=8, batch_size=4, vocab_size=0)


def forward(idx, cfg):
    wte = param("wte", (cfg["vocab_size"], cfg["n_embd"]))
    head = param("head", (cfg["n_embd"], cfg["vocab_size"]))
    return (embedding(wte, idx) @ head) * 2.0
"""


def test_logits_that_are_not_a_gemms_product_stay_whole_or_are_refused_chunks(tmp_path):
    model = tmp_path / "scaled.py"
    model.write_text(SCALED_LOGITS)
    data = compile_model(model, [], log=lambda *a: None).data
    assert sum(ln.op == "cross_entropy_with_grad" for ln in data["programs"]["train"].launches) == 1
    with pytest.raises(UserError, match="classifier_chunks=2: the training loss is not the cross-entropy"):
        compile_model(model, ["classifier_chunks=2"], log=lambda *a: None)
