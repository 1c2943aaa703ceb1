"""passes/embedding_grads.py: a small table's embedding gradient as one_hot(ids) @ g, a large
one's from the ids sorted once."""
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


def test_id_order_sorts_positions_by_id_and_marks_where_each_row_starts():
    ids = np.array([[2, 0, 2], [4, 2, 0]], np.int32)
    order = BY_OP["id_order"]({"rows": 6}, ids)
    np.testing.assert_array_equal(order[:6], [1, 5, 0, 2, 4, 3])  # id 0 at 1 and 5, id 2 at 0, 2 and 4, id 4 at 3
    np.testing.assert_array_equal(order[6:], [0, 2, 2, 5, 5, 6, 6])  # rows 0..5 start, then the end


@pytest.mark.parametrize("overrides,form", [
    ([*TWO_LAYERS, "dtype=bf16"], "one_hot"),
    ([*TWO_LAYERS, "dtype=bf16", "vocab_size=70000"], "sorted"),  # a one-hot matrix of 70000 x 128 ids: too large
    ([*TWO_LAYERS, "vocab_size=70000"], "sorted"),
    (TWO_LAYERS, "scatter"),                                      # float32, a small table: the scatter-add
], ids=["bf16", "bf16-large-table", "f32-large-table", "f32"])
def test_a_tables_gradient_is_a_gemm_small_and_sorted_large(overrides, form):
    data = compile_model(ROOT / "model.py", overrides, log=lambda *a: None).data
    assert ("embedding_grad" in ops(data)) == (form == "scatter")
    assert ("one_hot" in ops(data)) == (form == "one_hot")
    assert ops(data).count("id_order") == ops(data).count("embedding_grad_sorted") == (form == "sorted")
    gemm = form == "one_hot"
    if gemm:
        launches = data["programs"]["train"].launches
        at = next(i for i, x in enumerate(launches) if x.op == "one_hot")
        assert at == 0  # it reads only the ids: it runs first, beside the forward
        product = next(x for x in launches if launches[at].out in x.ins)
        assert product.ins[0] == launches[at].out and product.kind == "matmul"
        assert product.out.dtype == "f32"  # the cast folded in: float32 sums


def wte_gradient(overrides, dtype=np.float64) -> np.ndarray:
    plan = Plan(compile_model(ROOT / "model.py", overrides, log=lambda *a: None).data, "t")
    backend = NumpyBackend(plan, dtype)
    Trainer(plan, backend, SequentialSampler(np.zeros(1000, np.int32), 4, 32))  # initialises the weights
    tokens = np.random.default_rng(0).integers(0, 9, (4, 32)).astype(np.int32)  # a few ids, many times each
    backend.run("train", {"tokens": tokens, "targets": tokens, "step_size": 0.0})
    return backend.get_tensor("wte", grad=True)


@pytest.mark.parametrize("tied", ["tie_weights=0", "tie_weights=1"])
def test_the_gemm_gives_the_scatter_adds_gradient(monkeypatch, tied):
    overrides = [*TWO_LAYERS, "dtype=bf16", tied]
    by_gemm = wte_gradient(overrides)
    monkeypatch.setattr(compiler, "embedding_grads", lambda graph: graph)
    by_kernel = wte_gradient(overrides)
    assert np.abs(by_kernel).max() > 0
    np.testing.assert_allclose(by_gemm, by_kernel, rtol=1e-6, atol=1e-9 * np.abs(by_kernel).max())


@pytest.mark.parametrize("overrides", [[*TWO_LAYERS, "vocab_size=70000"], [*TWO_LAYERS, "vocab_size=70000", "dtype=bf16"],
                                       [*TWO_LAYERS, "vocab_size=70000", "tie_weights=0"]],
                         ids=["f32", "bf16", "untied"])
def test_the_sorted_sums_are_the_scatter_adds_to_the_bit(monkeypatch, overrides):
    sorted_rows = wte_gradient(overrides, np.float32)
    monkeypatch.setattr(compiler, "embedding_grads", lambda graph: graph)
    scattered = wte_gradient(overrides, np.float32)
    assert np.abs(scattered).max() > 0
    np.testing.assert_array_equal(sorted_rows, scattered)
