"""The DSL's pointwise functions silu, sigmoid, relu, square and exp: their references, and their
place in fused chains (their gradients are in tests/test_op_gradients.py)."""
import numpy as np
import pytest

from graphgpt import dsl
from graphgpt.ops import REGISTRY
from tests.models import compiled

NEW = ("silu", "sigmoid", "relu", "square", "exp")


def test_the_references_are_the_functions():
    x = np.array([-30.0, -2.0, -0.5, 0.5, 3.0, 40.0])
    sigmoid = 1.0 / (1.0 + np.exp(-x))
    np.testing.assert_allclose(REGISTRY["sigmoid"].ref({}, x), sigmoid, rtol=1e-12)
    np.testing.assert_allclose(REGISTRY["silu"].ref({}, x), x * sigmoid, rtol=1e-12)
    np.testing.assert_array_equal(REGISTRY["relu"].ref({}, x), np.where(x > 0, x, 0.0))
    np.testing.assert_array_equal(REGISTRY["square"].ref({}, x), x * x)
    assert np.isnan(REGISTRY["relu"].ref({}, np.array([np.nan]))).all(), "a NaN passes through ReLU"


@pytest.mark.parametrize("name", NEW)
def test_each_is_a_dsl_function_adding_its_op(name):
    def build(tracer):
        x = tracer.input("x", (2, 3))
        assert getattr(dsl, name)(x).node.op == name
    dsl.trace(build)


def test_they_fuse_into_the_pointwise_chains_around_them():
    """tests/models/split_qkv.py: sigmoid(q) * v is one launch, and silu(gate) * up + square(up) *
    exp(-square(gate)) one more; relu(k), read by the concat's pad alone, is a launch of its own."""
    data = compiled("split_qkv")
    launches = data["programs"]["eval"].launches
    chains = [[step[0] for step in ln.attrs["program"]] for ln in launches if ln.op == "fused"]
    assert chains == [["sigmoid", "mul"], ["silu", "mul", "square", "square", "neg", "exp", "mul", "add"]]
    assert [ln.op for ln in launches if ln.op in NEW] == ["relu"]
    backward = [ln for ln in data["programs"]["train"].launches if ln.op in ("fused", "fused_multi")]
    assert any("silu_grad" in [step[0] for step in ln.attrs["program"]] for ln in backward)
