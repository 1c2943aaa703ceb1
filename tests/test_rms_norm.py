"""RMSNorm (dsl.rms_norm): an uncentred row normaliser that gets LayerNorm's fused forward and
backward by declaring the RowNormaliser trait, and trains."""
import numpy as np
import pytest

from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.ops import REGISTRY
from graphgpt.plan import Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import Trainer
from tests.conftest import ROOT

MODEL = ROOT / "tests" / "models" / "rms_mlp.py"


def _compiled(overrides=(), fusion=True) -> dict:
    return compile_model(MODEL, list(overrides), fusion=fusion, log=lambda *a: None).data


def _train(data: dict, steps: int, dtype) -> tuple[list[float], dict[str, np.ndarray]]:
    plan = Plan(data, "t")
    tokens = np.random.default_rng(0).integers(0, 8, 4_000).astype(np.int32)  # 8 of the vocabulary's tokens
    backend = NumpyBackend(plan, dtype)
    trainer = Trainer(plan, backend, SequentialSampler(tokens, plan.config["batch_size"], plan.config["block_size"]))
    losses = [m["loss"] for m in trainer.steps(steps)]
    return losses, {t["name"]: backend.get_tensor(t["name"]) for t in plan.params}


def test_the_reference_divides_each_row_by_its_root_mean_square():
    x = np.random.default_rng(0).standard_normal((3, 8))
    rows, rstd = REGISTRY["rms_normalize"].ref({"eps": 1e-5}, x)
    np.testing.assert_allclose(rstd, 1.0 / np.sqrt((x ** 2).mean(-1) + 1e-5))
    np.testing.assert_allclose(np.sqrt((rows ** 2).mean(-1)), 1.0, rtol=1e-4)
    assert rows.shape == x.shape and rstd.shape == (3,)


@pytest.mark.parametrize("overrides", [[], ["dtype=bf16"]], ids=["f32", "bf16"])
def test_rms_norm_runs_as_the_fused_normaliser_forward_and_backward(overrides):
    """As LayerNorm's (tests/test_fusion.py): the weight multiply is the forward kernel's epilogue,
    the gradient's scaling by the weight and its accumulation into the residual stream's gradient
    are the backward kernel's; no mul runs on its own."""
    data = _compiled(overrides)
    for program in ("train", "eval"):
        ops = [launch["op"] for launch in data["programs"][program]["launches"]]
        assert ops.count("fused_rms_normalize") == 3, ops  # a layer's and the final one
        assert not {"rms_normalize", "mul"} & set(ops), ops
    grads = [ln for ln in data["programs"]["train"]["launches"] if ln["op"] == "fused_rms_normalize_grad"]
    assert [(g["attrs"]["scaled"], g["attrs"]["accumulate"]) for g in grads] == [(True, False)] + [(True, True)] * 2
    assert not {"rms_normalize_grad", "mul"} & {ln["op"] for ln in data["programs"]["train"]["launches"]}
    first = next(ln for ln in data["programs"]["train"]["launches"] if ln["op"] == "fused_rms_normalize")
    assert len(first["outs"]) == 3 and [b.shape for b in first["in"][1:]] == [(16,)]  # rows, rstd, rows * weight
    unfused = {ln["op"] for ln in _compiled(overrides, fusion=False)["programs"]["train"]["launches"]}
    assert {"rms_normalize", "rms_normalize_grad", "mul"} <= unfused


def test_the_fused_plan_trains_as_the_unfused_one_and_its_loss_falls():
    fast = ["lr=1e-2", "min_lr=1e-2"]
    losses, params = _train(_compiled(fast), 40, np.float64)
    unfused_losses, unfused = _train(_compiled(fast, fusion=False), 40, np.float64)
    np.testing.assert_allclose(losses, unfused_losses, rtol=1e-9)
    for name, value in unfused.items():
        np.testing.assert_allclose(params[name], value, rtol=1e-9, atol=1e-9 * np.abs(value).max(), err_msg=name)
    assert np.mean(losses[-5:]) < losses[0] - 0.5, losses
