"""FP8 products (`--set fp8=...` forward, `fp8_grad=...` the input gradients, passes/fp8.py): which
products the pass quantizes, what the plan then holds, and the step the NumPy backend trains with
them."""
import numpy as np
import pytest

from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.dtypes import DTYPES, E5M2, FP8, FP8_TYPES
from graphgpt.families.quantize.reference import scale_exponent
from graphgpt.ops import REGISTRY
from graphgpt.plan import Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import Trainer
from tests.conftest import COMPILE, ROOT, assert_user_error, run_cli, sets

SMALL = ["n_layer=2", "n_head=4", "n_embd=64", "block_size=32", "batch_size=4", "vocab_size=112", "dtype=bf16"]
CHOSEN = "fp8=lm_head.weight,h.*.mlp.c_fc.weight"  # the classifier's weight, each layer's first MLP weight


def _compiled(*extra) -> dict:
    return compile_model(ROOT / "model.py", [*SMALL, *extra], log=lambda *a: None).data


def test_the_training_forwards_chosen_products_and_no_others_run_on_e4m3():
    data = _compiled(CHOSEN, "classifier_chunks=2")
    train = data["programs"]["train"].launches
    scaled = [ln for ln in train if ln.attrs.get("fp8")]
    assert len(scaled) == 2 + 2  # the classifier's two chunks, each layer's first MLP product
    assert all(ln.ins[0].dtype == ln.ins[1].dtype == FP8 and ln.attrs["tb"] and not ln.attrs["ta"] for ln in scaled)
    assert sum(bool(ln.attrs.get("gelu")) for ln in scaled) == 2  # the MLP's products keep their GELU epilogue
    quantized = [ln for ln in train if ln.op == "quantize"]
    # each chunk's rows and each layer's rows; the weights, stored (k, n), transposed, the classifier's once
    assert sorted(ln.attrs["transpose"] for ln in quantized) == [False] * 4 + [True] * 3
    assert len([ln for ln in train if ln.op == "abs_max"]) == len(quantized)
    for name, program in data["programs"].items():
        if name != "train":
            assert not any(ln.attrs.get("fp8") or ln.op in ("quantize", "abs_max") for ln in program.launches), name


def test_the_classifiers_input_gradient_runs_on_the_losss_e5m2_copy():
    """fp8_grad=lm_head.weight: each chunk's dz @ W^T reads the E5M2 copy of dz that the loss kernel
    writes beside it (no abs_max or quantize pass over dz) and W's E4M3 copy, made once for both
    chunks, its sums moved into float32 as it goes; no forward product changes."""
    data = _compiled("fp8_grad=lm_head.weight", "classifier_chunks=2")
    train = data["programs"]["train"].launches
    scaled = [ln for ln in train if ln.attrs.get("fp8")]
    assert [(ln.ins[0].dtype, ln.ins[1].dtype, ln.cuda.scales.fast) for ln in scaled] == [(E5M2, FP8, False)] * 2
    losses = [ln for ln in train if ln.op == "cross_entropy_with_grad"]
    assert [ln.attrs for ln in losses] == [{"fp8_grad": E5M2, "grad_dtype": "bf16"}] * 2
    for loss, product in zip(losses, scaled):
        copy, factor = loss.outs[2:]
        assert (copy.dtype, copy.shape, factor.dtype) == (E5M2, loss.outs[1].shape, "f32")
        assert product.ins[0] == copy and product.ins[2] == factor
    quantized = [ln for ln in train if ln.op in ("quantize", "abs_max")]
    assert [(ln.op, ln.ins[0].shape) for ln in quantized] == [("abs_max", (64, 112)), ("quantize", (64, 112))]
    together = [ln for ln in _compiled(CHOSEN, "fp8_grad=lm_head.weight", "classifier_chunks=2")["programs"]["train"].launches
                if ln.attrs.get("fp8")]
    assert len(together) == 2 + 2 + 2  # the forward's four, and the two chunks' input gradients


def test_a_gradient_no_loss_computes_is_quantized_by_its_own_passes():
    """fp8_grad=h.*.mlp.c_fc.weight: each layer's dh @ W^T reads dh quantized to E5M2 at the scale
    of its abs_max, and the weight's E4M3 copy; in a step, the loss is bf16's to the bit and the
    gradients move, a little."""
    setting = "fp8_grad=h.*.mlp.c_fc.weight"
    train = _compiled(setting)["programs"]["train"].launches
    scaled = [ln for ln in train if ln.attrs.get("fp8")]
    assert [(ln.ins[0].dtype, ln.ins[1].dtype, ln.cuda.scales.fast) for ln in scaled] == [(E5M2, FP8, False)] * 2
    made = {ln.outs[0]: ln for ln in train if ln.op == "quantize"}
    for product in scaled:
        gradient = made[product.ins[0]]
        assert gradient.attrs["dtype"] == E5M2 and gradient.ins[0].shape == (4, 32, 256)
        assert any(ln.op == "abs_max" and ln.ins[0] == gradient.ins[0] and ln.out == gradient.ins[1] for ln in train)
    loss, grads = _first_step(setting)
    bf16_loss, bf16_grads = _first_step()
    assert loss == bf16_loss
    errors = {name: np.linalg.norm(grads[name] - want) / np.linalg.norm(want) for name, want in bf16_grads.items()}
    assert max(errors.values()) <= 0.1 and errors["wte"] > 0, errors


def test_the_losss_copy_is_what_quantize_makes_of_the_stored_gradient_at_its_bound():
    """The reference of the loss with its gradient's copy: the gradient rounded to its stored type,
    then scaled by the power of two that puts the bound |g| / rows in E5M2's top binade."""
    rng = np.random.default_rng(5)
    logits = (4 * rng.standard_normal((3, 16, 48))).astype(np.float32)
    targets = rng.integers(0, 48, (3, 16)).astype(np.int32)
    g = np.float32(0.5)
    ref = REGISTRY["cross_entropy_with_grad"].ref
    loss, grad = ref({}, logits, targets, g)
    got = ref({"fp8_grad": E5M2, "grad_dtype": "bf16"}, logits, targets, g)
    assert got[0] == loss and np.array_equal(got[1], grad)
    copy, factor = got[2:]
    e = scale_exponent(0.5 / 48, E5M2)
    assert e == 16 + 6 and float(factor) == 2.0 ** -e  # 0.5 / 48 = 0.667 2^-6; 57344 = 0.875 2^16
    stored = grad.astype(DTYPES["bf16"].numpy).astype(np.float32)
    assert np.array_equal(copy, (stored * np.float32(2.0 ** e)).astype(DTYPES[E5M2].numpy).astype(np.float32))
    largest = FP8_TYPES[E5M2].largest
    assert np.abs(copy).max() <= largest and np.abs(copy).max() > largest / 8
    assert np.abs(copy * factor - stored).max() <= np.abs(stored).max() * 2.0 ** -3


def test_every_product_is_as_before_without_the_setting():
    """The pass changes nothing it is not asked to: the plan's launches are those of a plan
    compiled without fp8."""
    with_empty, without = _compiled("fp8=", "fp8_grad="), _compiled()
    for name, program in without["programs"].items():
        assert [(ln.op, ln.attrs) for ln in with_empty["programs"][name].launches] == \
               [(ln.op, ln.attrs) for ln in program.launches], name


def _first_step(*extra) -> tuple[float, dict[str, np.ndarray]]:
    """One step's loss and every parameter's gradient from the initial weights, on the NumPy
    backend in float32."""
    plan = Plan(_compiled(*extra), "t")
    backend = NumpyBackend(plan, np.float32)
    B, T = plan.config["batch_size"], plan.config["block_size"]
    Trainer(plan, backend, SequentialSampler(np.zeros(1000, np.int32), B, T))  # the initial weights
    tokens = np.random.default_rng(0).integers(0, plan.config["vocab_size"], (B, T))
    loss = backend.run("train", {"tokens": tokens, "targets": np.roll(tokens, -1, 1), "step_size": 0.0})["loss"]
    return float(loss), {t["name"]: backend.get_tensor(t["name"], grad=True) for t in plan.params}


def test_an_fp8_step_stays_near_the_bf16_step():
    """E4M3 keeps 3 bits of mantissa where bf16 keeps 7: the step's loss moves, a little, and so
    do the gradients."""
    loss, grads = _first_step(CHOSEN)
    bf16_loss, bf16_grads = _first_step()
    assert loss != bf16_loss and loss == pytest.approx(bf16_loss, rel=1e-2)
    for name, want in bf16_grads.items():
        err = np.linalg.norm(grads[name] - want) / np.linalg.norm(want)
        assert err <= 0.1, f"{name}: relative difference {err:.2e}"


def test_an_fp8_grad_step_has_the_bf16_steps_loss_and_gradients_near_its_own():
    """The E5M2 gradient changes only the backward: the loss is bf16's to the bit, the gradients
    move by what E5M2's 2 bits of mantissa cost, and every parameter's gradient moves (the
    classifier's input gradient reaches them all) but the classifier's own weight's, which reads dz
    in bf16."""
    loss, grads = _first_step("fp8_grad=lm_head.weight")
    bf16_loss, bf16_grads = _first_step()
    assert loss == bf16_loss
    for name, want in bf16_grads.items():
        err = np.linalg.norm(grads[name] - want) / np.linalg.norm(want)
        assert (err == 0) == (name == "lm_head.weight") and err <= 0.1, f"{name}: relative difference {err:.2e}"


def test_an_fp8_products_reference_is_the_product_of_the_dequantized_operands():
    """Powers of two undo the scales exactly, so scaling the product or the operands is the same."""
    rng = np.random.default_rng(3)
    a, b = ((rng.standard_normal(s) * 30).astype(DTYPES[FP8].numpy).astype(np.float32) for s in ((3, 32, 48), (16, 48)))
    factors = np.float32(2.0**-6), np.float32(2.0**-3)
    attrs = {"ta": False, "tb": True, "fp8": True, "dtype": "bf16"}
    got = REGISTRY["matmul"].ref(attrs, a, b, *factors)
    assert np.array_equal(got, (a * factors[0]) @ (b * factors[1]).T)


@pytest.mark.parametrize("setting,fragments", [
    ("fp8=wte", ["fp8=wte names no weight", "lm_head.weight"]),
    ("fp8=lm_head.weight,nothing.*", ["fp8=nothing.*"]),
    ("fp8_grad=wte", ["fp8_grad=wte names no weight a backward matrix product takes a gradient through",
                      "lm_head.weight"]),
])
def test_a_pattern_that_names_no_weight_is_refused(tmp_path, setting, fragments):
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "p"), *sets([*SMALL, setting]))
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "p").exists()


def test_a_product_fp8_cannot_run_is_refused(tmp_path):
    """cuBLASLt's FP8 products need every dimension a multiple of 16: a vocabulary of 113 is not."""
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "p"),
                   *sets([*SMALL, "vocab_size=113", "fp8=lm_head.weight"]))
    assert_user_error(proc, "model.py:", "lm_head.weight", "multiple of 16")
