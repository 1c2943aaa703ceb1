"""--remat trades recomputation for memory: the same results, a smaller work region."""
import numpy as np
import pytest

from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.errors import UserError
from graphgpt.plan import Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import Trainer
from tests.conftest import ROOT

TWO_LAYERS = ["n_layer=2", "n_head=4", "n_embd=64", "block_size=32", "batch_size=4", "attention=softmax"]


def three_steps(remat: str):
    plan = Plan(compile_model(ROOT / "model.py", TWO_LAYERS, remat=remat, log=lambda *a: None).data, "t")
    tokens = np.random.default_rng(0).integers(0, plan.config["vocab_size"], 10_000).astype(np.int32)
    backend = NumpyBackend(plan, np.float64)
    trainer = Trainer(plan, backend, SequentialSampler(tokens, plan.config["batch_size"], plan.config["block_size"]))
    losses = [m["loss"] for m in trainer.steps(3)]
    params = {t["name"]: backend.get_tensor(t["name"]) for t in plan.params}
    return losses, params, plan.program("train").memory["work_peak"]


def test_remat_computes_the_same_with_less_memory():
    runs = {policy: three_steps(policy) for policy in ("none", "attention", "gelu", "all")}
    ref_losses, ref_params, ref_peak = runs["none"]
    assert runs["all"][2] < runs["attention"][2] < ref_peak, {p: r[2] for p, r in runs.items()}
    assert runs["all"][2] < runs["gelu"][2] < ref_peak, {p: r[2] for p, r in runs.items()}
    for losses, params, _ in (runs["attention"], runs["gelu"], runs["all"]):
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
        for name, value in ref_params.items():
            np.testing.assert_allclose(params[name], value, rtol=1e-12, atol=1e-15, err_msg=name)


def test_auto_recomputes_attention_only_where_it_saves_a_quarter_of_the_memory():
    def chosen(overrides):
        report = compile_model(ROOT / "model.py", overrides, log=lambda *a: None).report
        return next(line.split()[1] for line in report.splitlines() if line.endswith("<- this plan"))
    assert chosen(TWO_LAYERS) == "none"  # 32 tokens: the probabilities are a small part of the work region
    long_sequences = ["n_layer=4", "n_head=8", "n_embd=32", "block_size=512", "batch_size=2", "attention=softmax"]
    assert chosen(long_sequences) == "attention"


def test_recomputed_gelu_outputs_are_computed_where_they_are_read():
    """A clone runs just before the GEMM that reads it, not at the start of the backward: there the
    bf16 plan with GELU in its GEMMs' epilogues and the classifier in chunks (whose nodes, made
    last, carry the largest ids) would hold every layer's recomputed output at once, and --remat
    gelu would save nothing."""
    overrides = ["n_layer=4", "n_head=4", "n_embd=64", "block_size=64", "batch_size=8", "dtype=bf16",
                 "classifier_chunks=2"]
    peak = {policy: compile_model(ROOT / "model.py", overrides, remat=policy, log=lambda *a: None)
            .data["programs"]["train"].memory["work_peak"] for policy in ("none", "gelu")}
    gelu_output = 8 * 64 * 4 * 64 * 2  # B T 4C bf16 bytes: one layer's
    assert peak["none"] - peak["gelu"] >= (4 - 1) * gelu_output, peak


def test_a_bf16_plan_recomputing_its_gelu_outputs_trains_as_one_keeping_them():
    """The clones run late, in memory the plan reuses: the NumPy backend runs that arena. The
    recomputed GELU reads the bf16 pre-activation, where the forward's ran in its GEMM's epilogue on
    the float32 product, so the two agree to bf16's precision, not bit for bit."""
    overrides = ["n_layer=2", "n_head=4", "n_embd=64", "block_size=64", "batch_size=8", "dtype=bf16",
                 "classifier_chunks=2"]
    losses = {}
    for policy in ("none", "gelu"):
        plan = Plan(compile_model(ROOT / "model.py", overrides, remat=policy, log=lambda *a: None).data, "t")
        tokens = np.random.default_rng(0).integers(0, plan.config["vocab_size"], 10_000).astype(np.int32)
        trainer = Trainer(plan, NumpyBackend(plan, np.float32),
                          SequentialSampler(tokens, plan.config["batch_size"], plan.config["block_size"]))
        losses[policy] = [m["loss"] for m in trainer.steps(3)]
    assert losses["gelu"][0] == losses["none"][0]  # the first forward is the same computation
    np.testing.assert_allclose(losses["gelu"], losses["none"], rtol=1e-4)


def test_auto_recomputes_what_it_must_for_the_plan_to_fit_the_device():
    """auto keeps everything where the arena fits --device-memory, recomputes the GELU outputs
    where only that fits, and otherwise names the smallest arena it could plan in its refusal."""
    overrides = ["n_layer=4", "n_head=4", "n_embd=64", "block_size=64", "batch_size=8", "dtype=bf16",
                 "classifier_chunks=2"]
    plans = {policy: compile_model(ROOT / "model.py", overrides, remat=policy, log=lambda *a: None).data
             for policy in ("none", "gelu", "all")}
    arena = {policy: data["arena"]["bytes"] for policy, data in plans.items()}
    assert arena["all"] < arena["gelu"] < arena["none"], arena

    def chosen(device_bytes):
        report = compile_model(ROOT / "model.py", overrides, device_bytes=device_bytes, log=lambda *a: None).report
        return next(line.split()[1] for line in report.splitlines() if line.endswith("<- this plan"))
    assert chosen(arena["none"]) == "none"
    assert chosen(arena["none"] - 1) == "gelu"
    assert chosen(arena["gelu"] - 1) == "all"
    with pytest.raises(UserError, match=f"arena is {arena['all'] / 1e9:.4g} GB"):
        chosen(arena["all"] - 1)
