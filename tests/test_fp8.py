"""FP8 forward products (`--set fp8=...`, passes/fp8.py): which products the pass quantizes, what
the plan then holds, and the step the NumPy backend trains with them."""
import numpy as np
import pytest

from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.dtypes import DTYPES, FP8
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


def test_every_product_is_as_before_without_the_setting():
    """The pass changes nothing it is not asked to: the plan's launches are those of a plan
    compiled without fp8."""
    with_empty, without = _compiled("fp8="), _compiled()
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
