"""The fusion pass changes how a step runs, never what it computes."""
import numpy as np
import pytest

from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.plan import Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import Trainer
from tests.conftest import ROOT

TWO_LAYERS = ["n_layer=2", "n_head=4", "n_embd=64", "block_size=32", "batch_size=4"]


def three_steps(overrides, fusion, dtype):
    plan = Plan(compile_model(ROOT / "model.py", overrides, fusion=fusion, log=lambda *a: None).data, "t")
    tokens = np.random.default_rng(0).integers(0, plan.config["vocab_size"], 40_000).astype(np.int32)
    backend = NumpyBackend(plan, dtype)
    trainer = Trainer(plan, backend, SequentialSampler(tokens, plan.config["batch_size"], plan.config["block_size"]))
    losses = [m["loss"] for m in trainer.steps(3)]
    launches = len(plan.program("train")["launches"])
    return losses, {t["name"]: backend.get_tensor(t["name"]) for t in plan.params}, launches


@pytest.mark.parametrize("overrides,dtype,rtol", [(TWO_LAYERS, np.float64, 1e-9), ([], np.float32, 1e-5)],
                         ids=["2-layer-float64", "default-float32"])
def test_fused_plan_computes_what_the_unfused_one_does(overrides, dtype, rtol):
    fused_losses, fused, n_fused = three_steps(overrides, True, dtype)
    losses, params, n = three_steps(overrides, False, dtype)
    assert n_fused * 2 <= n, f"fusion left {n_fused} of {n} launches"
    np.testing.assert_allclose(fused_losses, losses, rtol=rtol)
    for name, value in params.items():
        np.testing.assert_allclose(fused[name], value, rtol=rtol, atol=rtol * np.abs(value).max(), err_msg=name)
