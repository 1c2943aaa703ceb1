"""The fusion pass changes how a step runs, never what it computes."""
import tempfile
from pathlib import Path

import numpy as np
import pytest

from graphgpt import compiler
from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.ops import REGISTRY
from graphgpt.ops.registry import Spec
from graphgpt.passes import fuse as fuse_pass
from graphgpt import plan as plan_io
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import Trainer
from tests.conftest import ROOT

TWO_LAYERS = ["n_layer=2", "n_head=4", "n_embd=64", "block_size=32", "batch_size=4"]


def three_steps(overrides, fusion, dtype, model=ROOT / "model.py"):
    compiled = compile_model(model, overrides, fusion=fusion, log=lambda *a: None)
    with tempfile.TemporaryDirectory() as out:  # through its files: a model's constant tensors are one
        plan_io.save(compiled.data, Path(out) / "plan", compiled.files)
        plan = plan_io.load(Path(out) / "plan")
    tokens = np.random.default_rng(0).integers(0, plan.config["vocab_size"], 40_000).astype(np.int32)
    backend = NumpyBackend(plan, dtype)
    trainer = Trainer(plan, backend, SequentialSampler(tokens, plan.config["batch_size"], plan.config["block_size"]))
    losses = [m["loss"] for m in trainer.steps(3)]
    launches = sum(len(plan.program(name).launches) for name in ("train", "accumulate", "update")
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
    return [launch.op for launch in data["programs"][program].launches]


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
    (fused,) = [ln for ln in data["programs"][program].launches if ln.op == "cross_entropy_with_grad"]
    loss, dlogits = fused.outs
    assert data["programs"][program].outputs["loss"] == loss
    assert dlogits == fused.ins[0], "the gradient is written over the logits"
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
    with monkeypatch.context() as m:  # nor joined by step 7, as siblings that read the gradient
        m.setattr(fuse_pass, "_update_groups", lambda graph: graph)
        m.setattr(fuse_pass, "_sibling_chains", lambda graph: graph)
        apart_losses, apart, n_apart = three_steps(overrides, True, dtype)
    assert n == n_apart - (3 if "dtype=bf16" in overrides else 2)
    assert losses == apart_losses
    for name, value in apart.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)


LLAMA = ROOT / "models" / "llama.py"
LLAMA_TWO_LAYERS = ["n_layer=2", "n_head=4", "n_kv_head=2", "n_embd=64", "n_hidden=96", "block_size=32",
                    "batch_size=4", "vocab_size=256"]


@pytest.mark.parametrize("overrides,dtype", [(LLAMA_TWO_LAYERS, np.float64), (LLAMA_TWO_LAYERS + ["dtype=bf16"], np.float32),
                                             (LLAMA_TWO_LAYERS + ["dtype=bf16", "grad_accum=2"], np.float32)],
                         ids=["float64", "bf16", "bf16-accumulating"])
def test_swiglus_two_gradients_are_one_launch_that_trains_bit_for_bit_as_two(monkeypatch, overrides, dtype):
    """Step 7: the gradients of SwiGLU's gate and up projection, two chains that read the gate and
    the product's gradient, are one fused_multi writing both; apart, every bit is the same."""
    losses, params, n = three_steps(overrides, True, dtype, LLAMA)
    data = compile_model(LLAMA, overrides, log=lambda *a: None).data
    backward = data["programs"]["accumulate" if "grad_accum=2" in overrides else "train"].launches
    pairs = [x for x in backward if x.op == "fused_multi" and {s[0] for s in x.attrs["program"]} >= {"silu", "silu_grad"}]
    assert len(pairs) == 2 and all(len(x.outputs) == 2 and len(x.ins) == 3 for x in pairs)  # gate, up, the gradient
    with monkeypatch.context() as m:
        m.setattr(fuse_pass, "_sibling_chains", lambda graph: graph)
        apart_losses, apart, n_apart = three_steps(overrides, True, dtype, LLAMA)
    assert n == n_apart - 2
    assert losses == apart_losses
    for name, value in apart.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)


@pytest.mark.parametrize("overrides,dtype", [(TWO_LAYERS, np.float64), (TWO_LAYERS + ["dtype=bf16"], np.float32),
                                             (TWO_LAYERS + ["dtype=bf16", "grad_accum=2"], np.float32)],
                         ids=["float64", "bf16", "bf16-accumulating"])
def test_layernorms_two_parameter_gradients_are_one_pass_that_trains_bit_for_bit_as_two(monkeypatch, overrides, dtype):
    monkeypatch.setattr(compiler, "group_sums", lambda graph: graph)  # the pairs alone, not in sum groups
    losses, params, n = three_steps(overrides, True, dtype)
    data = compile_model(ROOT / "model.py", overrides, log=lambda *a: None).data
    backward = "accumulate" if "grad_accum=2" in overrides else "train"
    paired = [x for x in data["programs"][backward].launches if x.op == "fused_sum" and "results" in x.attrs]
    assert len(paired) == 5  # two LayerNorms a layer and the final one
    assert all(len(x.outs) == 2 and x.cuda.kernel.startswith("fused_sum_cols") for x in paired)
    with monkeypatch.context() as m:
        m.setattr(fuse_pass, "_paired_sums", lambda graph: graph)
        apart_losses, apart, n_apart = three_steps(overrides, True, dtype)
    assert n == n_apart - 5
    assert losses == apart_losses
    for name, value in apart.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)


@pytest.mark.parametrize("overrides,dtype", [(TWO_LAYERS, np.float64), (TWO_LAYERS + ["dtype=bf16"], np.float32)],
                         ids=["float64", "bf16"])
def test_layernorms_affine_part_is_stored_by_the_normalize_kernel(monkeypatch, overrides, dtype):
    """x_hat * gamma + beta is evaluated on the normalised rows before they are rounded: in
    float64 (no rounding) every bit is that of the separate kernel; in bf16 one rounding fewer."""
    losses, params, n = three_steps(overrides, True, dtype)
    data = compile_model(ROOT / "model.py", overrides, log=lambda *a: None).data
    for program in ("train", "eval"):
        ops = _ops(data, program)
        assert ops.count("fused_normalize") == 5 and "normalize" not in ops, program  # two a layer, ln_f
    (first, *_) = [x for x in data["programs"]["train"].launches if x.op == "fused_normalize"]
    assert len(first.outs) == 4 and [b.shape for b in first.ins[1:]] == [(64,), (64,)]  # x, gamma, beta
    with monkeypatch.context() as m:
        m.setattr(fuse_pass, "_normalize_epilogues", lambda graph: graph)
        apart_losses, apart, n_apart = three_steps(overrides, True, dtype)
    assert n == n_apart - 5
    if dtype == np.float64:
        assert losses == apart_losses
        for name, value in apart.items():
            np.testing.assert_array_equal(params[name], value, err_msg=name)
    else:
        np.testing.assert_allclose(losses, apart_losses, rtol=2e-3)


@pytest.mark.parametrize("overrides", [TWO_LAYERS + ["dtype=bf16"], TWO_LAYERS + ["dtype=bf16", "grad_accum=2"]],
                         ids=["bf16", "bf16-accumulating"])
def test_a_layers_column_sums_run_as_one_launch_that_trains_bit_for_bit_as_its_members(monkeypatch, overrides):
    """passes/sum_groups.py: each layer's four bias gradients and two LayerNorm pairs, one launch."""
    losses, params, n = three_steps(overrides, True, np.float32)
    data = compile_model(ROOT / "model.py", overrides, log=lambda *a: None).data
    backward = data["programs"]["accumulate" if "grad_accum=2" in overrides else "train"]
    groups = [x for x in backward.launches if x.op == "sum_group"]
    assert not [x for x in backward.launches if x.op in ("sum", "fused_sum")]
    # ln_f's pair and the last layer's last bias; the rest of that layer's with the first layer's
    # last bias; the rest of the first layer's with wpe's gradient (a sum over the batch)
    assert [len(x.attrs["members"]) for x in groups] == [2, 6, 6]
    assert sum(len(x.outs) for x in groups) == 2 * 5 + 4 * 2 + 1  # LayerNorms, biases, wpe's sum over the batch
    with monkeypatch.context() as m:
        m.setattr(compiler, "group_sums", lambda graph: graph)
        apart_losses, apart, n_apart = three_steps(overrides, True, np.float32)
        alone = compile_model(ROOT / "model.py", overrides, log=lambda *a: None).data
    assert n == n_apart - (2 - 1) - 2 * (6 - 1)
    assert losses == apart_losses
    for name, value in apart.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
    program = "accumulate" if "grad_accum=2" in overrides else "train"
    assert backward.memory["work_peak"] <= alone["programs"][program].memory["work_peak"]


def _gelu_launches(data: dict, program: str) -> dict[str, int]:
    launches = data["programs"][program].launches
    return {"gelu": sum(ln.op == "gelu" for ln in launches), "gelu_grad": sum(ln.op == "gelu_grad" for ln in launches),
            "in a GEMM": sum(ln.attrs.get("gelu", False) for ln in launches),
            "its gradient in a GEMM": sum(ln.attrs.get("gelu_grad", False) for ln in launches)}


@pytest.fixture
def gradient_epilogues_everywhere(monkeypatch):
    """GELU's gradient in its GEMM at every size, not only at those where it measured faster."""
    monkeypatch.setattr(fuse_pass, "GELU_GRAD_MIN_ELEMENTS", 0)


def test_gelus_gradient_stays_a_kernel_below_the_size_where_the_epilogue_pays():
    data = compile_model(ROOT / "model.py", TWO_LAYERS + ["dtype=bf16"], log=lambda *a: None).data
    assert _gelu_launches(data, "train") == {"gelu": 0, "gelu_grad": 2, "in a GEMM": 2, "its gradient in a GEMM": 0}


@pytest.mark.usefixtures("gradient_epilogues_everywhere")
def test_a_float32_plan_keeps_its_exact_gelu_kernels():
    data = compile_model(ROOT / "model.py", TWO_LAYERS, log=lambda *a: None).data
    assert _gelu_launches(data, "train") == {"gelu": 2, "gelu_grad": 2, "in a GEMM": 0, "its gradient in a GEMM": 0}


@pytest.mark.usefixtures("gradient_epilogues_everywhere")
@pytest.mark.parametrize("remat", ["none", "gelu"])
def test_gelu_and_its_gradient_run_in_the_gemms_beside_them(remat):
    """Every layer's GELU is its first linear's epilogue and GELU's gradient that of the GEMM
    computing the gradient of GELU's output; a GELU recomputed for the backward stays an op, and the
    pre-activation the GEMM writes as its second output is what GELU's gradient reads."""
    data = compile_model(ROOT / "model.py", TWO_LAYERS + ["dtype=bf16"], remat=remat, log=lambda *a: None).data
    recomputed = 2 if remat == "gelu" else 0
    assert _gelu_launches(data, "train") == {"gelu": recomputed, "gelu_grad": 0, "in a GEMM": 2,
                                             "its gradient in a GEMM": 2}
    assert _gelu_launches(data, "eval") == {"gelu": 0, "gelu_grad": 0, "in a GEMM": 2, "its gradient in a GEMM": 0}
    launches = data["programs"]["train"].launches
    pre = [ln.outs[1] for ln in launches if ln.attrs.get("gelu")]
    grads = [ln for ln in launches if ln.attrs.get("gelu_grad")]
    assert sorted(ln.ins[2].offset for ln in grads) == sorted(b.offset for b in pre)
    if remat == "gelu":
        assert sorted(ln.ins[0].offset for ln in launches if ln.op == "gelu") == sorted(b.offset for b in pre)


def _first_gradients(overrides) -> tuple[float, dict[str, np.ndarray], int]:
    """The loss and every parameter's gradient of one bf16 step from the initial weights, and the
    step's launch count."""
    plan = plan_io.Plan(compile_model(ROOT / "model.py", overrides, log=lambda *a: None).data, "t")
    backend = NumpyBackend(plan, np.float32)
    B, T = plan.config["batch_size"], plan.config["block_size"]
    Trainer(plan, backend, SequentialSampler(np.zeros(1000, np.int32), B, T))  # the initial weights
    tokens = np.random.default_rng(0).integers(0, plan.config["vocab_size"], (B, T))
    loss = backend.run("train", {"tokens": tokens, "targets": np.roll(tokens, -1, 1), "step_size": 0.0})["loss"]
    grads = {t["name"]: backend.get_tensor(t["name"], grad=True) for t in plan.params}
    return float(loss), grads, len(plan.program("train").launches)


@pytest.mark.usefixtures("gradient_epilogues_everywhere")
def test_gelu_epilogues_give_the_gradients_of_the_separate_ops(monkeypatch):
    """One bf16 step's loss and gradients with GELU and its gradient in the GEMMs, against the
    separate launches: they differ only where the separate ops round the product to bf16 before
    GELU reads it and the epilogues apply GELU to the unrounded product, as cuBLASLt does."""
    import graphgpt.compiler as compiler
    overrides = TWO_LAYERS + ["dtype=bf16"]
    loss, grads, n = _first_gradients(overrides)
    with monkeypatch.context() as m:
        m.setattr(compiler, "gelu_epilogues", lambda graph: graph)
        apart_loss, apart, n_apart = _first_gradients(overrides)
    assert n == n_apart - 4  # two layers' GELU and GELU gradient
    assert loss != apart_loss  # the rounding points did move
    assert loss == pytest.approx(apart_loss, rel=1e-3)
    for name, value in apart.items():
        err = np.linalg.norm(grads[name] - value) / np.linalg.norm(value)
        assert err <= 2e-2, f"{name}: relative error {err:.2e}"
