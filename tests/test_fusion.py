"""The fusion pass changes how a step runs, never what it computes."""
import numpy as np
import pytest

from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.ops import REGISTRY
from graphgpt.ops.registry import Spec
from graphgpt.passes import fuse as fuse_pass
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
    launches = sum(len(plan.program(name)["launches"]) for name in ("train", "accumulate", "update")
                   if name in plan.data["programs"])
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


def _ops(data: dict, program: str) -> list[str]:
    return [launch["op"] for launch in data["programs"][program]["launches"]]


def test_the_fused_loss_op_computes_what_the_loss_and_its_gradient_compute():
    rng = np.random.default_rng(7)
    logits, g = 3 * rng.standard_normal((2, 5, 11)), np.float64(rng.uniform(0.5, 2.0))
    targets = rng.integers(0, 11, (2, 5)).astype(np.int32)
    loss, dlogits = REGISTRY["cross_entropy_with_grad"].ref({}, logits, targets, g)
    np.testing.assert_array_equal(loss, REGISTRY["cross_entropy"].ref({}, logits, targets))
    np.testing.assert_array_equal(dlogits, REGISTRY["cross_entropy_grad"].ref({}, logits, targets, g))
    specs = [Spec((2, 5, 11), "bf16"), Spec((2, 5), "i32"), Spec((), "f32")]
    assert REGISTRY["cross_entropy_with_grad"].infer({}, *specs) == [Spec((), "f32"), specs[0]]


@pytest.mark.parametrize("settings,program", [([], "train"), (["grad_accum=2"], "accumulate")])
def test_the_loss_and_its_gradient_run_as_one_launch_where_both_are_computed(settings, program):
    data = compile_model(ROOT / "model.py", [*TWO_LAYERS, *settings], log=lambda *a: None).data
    ops = _ops(data, program)
    assert ops.count("cross_entropy_with_grad") == 1
    assert not {"cross_entropy", "cross_entropy_grad"} & set(ops)
    assert _ops(data, "eval").count("cross_entropy") == 1 and "cross_entropy_with_grad" not in _ops(data, "eval")
    (fused,) = [ln for ln in data["programs"][program]["launches"] if ln["op"] == "cross_entropy_with_grad"]
    loss, dlogits = fused["outs"]
    assert data["programs"][program]["outputs"]["loss"] == loss
    assert dlogits == fused["in"][0], "the gradient is written over the logits"
    unfused = compile_model(ROOT / "model.py", [*TWO_LAYERS, *settings], fusion=False, log=lambda *a: None).data
    assert {"cross_entropy", "cross_entropy_grad"} <= set(_ops(unfused, program))


def _steps_without_the_fused_loss(monkeypatch, overrides, dtype):
    with monkeypatch.context() as m:
        m.setattr(fuse_pass, "_loss_with_grad", lambda graph: graph)
        return three_steps(overrides, True, dtype)


@pytest.mark.parametrize("overrides,dtype", [(TWO_LAYERS, np.float64), (TWO_LAYERS + ["dtype=bf16"], np.float32)],
                         ids=["float64", "bf16"])
def test_the_fused_loss_trains_bit_for_bit_as_the_two_ops(monkeypatch, overrides, dtype):
    losses, params, n = three_steps(overrides, True, dtype)
    plain_losses, plain, n_plain = _steps_without_the_fused_loss(monkeypatch, overrides, dtype)
    assert n == n_plain - 1
    assert losses == plain_losses
    for name, value in plain.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)


@pytest.mark.parametrize("overrides,dtype", [(TWO_LAYERS, np.float64), (TWO_LAYERS + ["dtype=bf16"], np.float32),
                                             (TWO_LAYERS + ["optimizer=adamw", "weight_decay=0.1"], np.float32),
                                             (TWO_LAYERS + ["dtype=bf16", "grad_accum=2"], np.float32)],
                         ids=["float64", "bf16", "adamw", "bf16-accumulating"])
def test_the_update_as_one_launch_trains_bit_for_bit_as_its_parts(monkeypatch, overrides, dtype):
    """Step 6 joins m, v, the weights (and bf16 copies) into one launch; computed apart, in the
    launches that each read what the one before wrote, every bit is the same."""
    losses, params, n = three_steps(overrides, True, dtype)
    with monkeypatch.context() as m:
        m.setattr(fuse_pass, "_update_groups", lambda graph: graph)
        apart_losses, apart, n_apart = three_steps(overrides, True, dtype)
    assert n == n_apart - (3 if "dtype=bf16" in overrides else 2)
    assert losses == apart_losses
    for name, value in apart.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
