"""bf16 plans (--set dtype=bf16) without a GPU: where the types fall, the rounding rule the NumPy
oracle follows, and training on the NumPy backend."""
import ml_dtypes
import numpy as np
import pytest

from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.errors import UserError
from graphgpt.ops import REGISTRY
from graphgpt.plan import Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import Trainer
from tests.conftest import ROOT, TINY

SMALL = ["n_layer=2", "n_head=2", "n_embd=64", "block_size=32", "batch_size=4"]


def plan_of(*overrides) -> Plan:
    c = compile_model(ROOT / "model.py", list(overrides), log=lambda *a: None)
    return Plan(c.data, "test", {k: v for k, v in c.files.items() if k.startswith("kernels/")})


def test_cast_rounds_to_nearest_even_and_keeps_the_compute_type():
    x = np.array([1.0 + 2.0**-9, 1.0 + 3 * 2.0**-9, -3.0e38, 1e-40, np.inf, -np.inf], np.float32)
    out = REGISTRY["cast"].ref({"dtype": "bf16"}, x)
    assert out.dtype == np.float32  # rounded, still in the float it computes in
    np.testing.assert_array_equal(out, x.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert out[0] == 1.0 and out[1] == 1.0 + 2.0**-7  # ties to even, both ways
    assert REGISTRY["cast"].ref({"dtype": "f32"}, x.astype(np.float64)).dtype == np.float64


def test_a_bf16_plan_computes_in_bf16_and_keeps_float32_where_it_must():
    data = plan_of(*TINY, "dtype=bf16").data
    assert data["config"]["dtype"] == "bf16"
    kept = {t["kind"]: set() for t in data["tensors"]}
    for t in data["tensors"]:
        kept[t["kind"]].add(t["dtype"])
    # master weights, their gradients and Adam's moments in float32; decoding's caches in bf16
    assert kept == {"param": {"f32"}, "state": {"f32"}, "cache": {"bf16"}}
    train = data["programs"]["train"]
    assert train.outputs["loss"].dtype == "f32" and train.inputs["tokens"].dtype == "i32"
    gemms = [ln for ln in train.launches if ln.kind == "matmul"]
    assert all(ln.ins[0].dtype == ln.ins[1].dtype == "bf16" for ln in gemms)
    grads_start, grads_size = data["arena"]["regions"]["grads"]
    weight_grads = [ln for ln in gemms if grads_start <= ln.out.offset < grads_start + grads_size]
    # every weight matrix's gradient comes out of its GEMM in float32: the cast is folded in (wte's
    # too, a small table's one-hot GEMM; wpe's comes from a sum over the batch, not from a GEMM)
    assert len(weight_grads) == sum(len(t["shape"]) == 2 and t["kind"] == "param" for t in data["tensors"]) - 1
    assert all(ln.out.dtype == "f32" for ln in weight_grads)
    activations = [ln.out.dtype for ln in gemms if ln not in weight_grads]
    assert set(activations) == {"bf16"}
    assert {ln.out.dtype for ln in train.launches if ln.kind == "collective"} <= {"f32"}
    assert data["programs"]["generate"].outputs["logits"].dtype == "bf16"


def test_a_bf16_plan_needs_less_work_memory():
    """Activations at half the bytes; the bf16 copies of the weights the GEMMs read take some back."""
    f32, bf16 = plan_of(*SMALL).data, plan_of(*SMALL, "dtype=bf16").data
    peak = {name: d["programs"]["train"].memory["work_peak"] for name, d in (("f32", f32), ("bf16", bf16))}
    assert peak["bf16"] < 0.7 * peak["f32"]


def test_an_unknown_compute_dtype_is_refused():
    with pytest.raises(UserError, match="--set dtype=f64: dtype must be f32 or bf16"):
        plan_of(*TINY, "dtype=f64")


def losses_on_numpy(plan: Plan, steps: int) -> list[float]:
    phrase = np.random.default_rng(0).integers(0, plan.config["vocab_size"], 50)
    tokens = np.tile(phrase, 400).astype(np.int32)  # a text that repeats: something to learn
    trainer = Trainer(plan, NumpyBackend(plan), SequentialSampler(tokens, plan.config["batch_size"],
                                                                  plan.config["block_size"]))
    return [m["loss"] for m in trainer.steps(steps)]


def test_numpy_trains_a_bf16_plan_as_it_trains_the_float32_one():
    """Same model, same initial weights, same batches: bf16 activations follow the float32 run's
    losses within a bf16 step or two (2^-8 relative each) over 20 steps."""
    f32 = losses_on_numpy(plan_of(*SMALL, "lr=1e-3"), 20)
    bf16 = losses_on_numpy(plan_of(*SMALL, "lr=1e-3", "dtype=bf16"), 20)
    assert bf16[-1] < bf16[0] - 0.1  # it learns
    np.testing.assert_allclose(bf16, f32, rtol=2 * 2.0**-8)


def test_numpy_trains_the_default_model_in_bf16():
    plan = plan_of("dtype=bf16")
    losses = losses_on_numpy(plan, 2)
    assert all(np.isfinite(losses)) and abs(losses[0] - np.log(plan.config["vocab_size"])) < 0.5


def test_the_gradient_of_a_cast_is_cast_back():
    """Straight through a rounding: the gradient reaching a float32 weight through its bf16 copy is
    the copy's gradient, in float32."""
    from graphgpt import autodiff
    from graphgpt.ir import Graph
    from graphgpt.reference import evaluate
    g = Graph()
    w = g.add("input", name="w", shape=(3,), dtype="f32")
    loss = (g.add("cast", (w,), dtype="bf16") * 3.0).sum()
    grad = autodiff.grad(g, loss, [w.id])[w.id]
    assert (grad.node.op, grad.dtype) == ("cast", "f32")
    np.testing.assert_array_equal(evaluate(g, {"w": np.ones(3, np.float32)})[grad.id], [3.0, 3.0, 3.0])
