"""passes/embedding_grads.py: a small table's embedding gradient as one_hot(ids) @ g."""
import numpy as np
import pytest

from graphgpt import compiler
from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.numpy_ops import BY_OP
from graphgpt.plan import Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import Trainer
from tests.conftest import ROOT

TWO_LAYERS = ["n_layer=2", "n_head=4", "n_embd=64", "block_size=32", "batch_size=4"]


def ops(data: dict) -> list[str]:
    return [x.op for x in data["programs"]["train"].launches]


def test_one_hot_has_a_one_at_each_ids_row():
    ids = np.array([[2, 0, 2], [1, 2, 0]], np.int32)
    hot = BY_OP["one_hot"]({"rows": 4}, ids)
    assert hot.shape == (4, 6)
    np.testing.assert_array_equal(hot.argmax(0), ids.reshape(-1))
    assert hot.sum() == 6 and not hot[3].any()


@pytest.mark.parametrize("overrides,gemm", [
    ([*TWO_LAYERS, "dtype=bf16"], True),
    ([*TWO_LAYERS, "dtype=bf16", "vocab_size=70000"], False),  # a one-hot matrix of 70000 x 128 ids: too large
    (TWO_LAYERS, False),                                        # float32: the exact scatter-add
], ids=["bf16", "bf16-large-table", "f32"])
def test_a_small_bf16_tables_gradient_is_a_gemm(overrides, gemm):
    data = compile_model(ROOT / "model.py", overrides, log=lambda *a: None).data
    assert ("embedding_grad" not in ops(data)) == gemm
    assert ("one_hot" in ops(data)) == gemm
    if gemm:
        launches = data["programs"]["train"].launches
        at = next(i for i, x in enumerate(launches) if x.op == "one_hot")
        product = launches[at + 1]
        assert product.ins[0] == launches[at].out and product.kind == "matmul"
        assert product.out.dtype == "f32"  # the cast folded in: float32 sums


def wte_gradient(overrides) -> np.ndarray:
    plan = Plan(compile_model(ROOT / "model.py", overrides, log=lambda *a: None).data, "t")
    backend = NumpyBackend(plan, np.float64)
    Trainer(plan, backend, SequentialSampler(np.zeros(1000, np.int32), 4, 32))  # initialises the weights
    tokens = np.random.default_rng(0).integers(0, 9, (4, 32)).astype(np.int32)  # a few ids, many times each
    backend.run("train", {"tokens": tokens, "targets": tokens, "step_size": 0.0})
    return backend.get_tensor("wte", grad=True)


@pytest.mark.parametrize("tied", ["tie_weights=0", "tie_weights=1"])
def test_the_gemm_gives_the_scatter_adds_gradient(monkeypatch, tied):
    overrides = [*TWO_LAYERS, "dtype=bf16", tied]
    by_gemm = wte_gradient(overrides)
    monkeypatch.setattr(compiler, "one_hot_embedding_grads", lambda graph: graph)
    by_kernel = wte_gradient(overrides)
    assert np.abs(by_kernel).max() > 0
    np.testing.assert_allclose(by_gemm, by_kernel, rtol=1e-6, atol=1e-9 * np.abs(by_kernel).max())
