"""The DSL's pointwise functions silu, sigmoid, relu, square and exp: their references, and their
place in fused chains (their gradients are in tests/test_op_gradients.py)."""
import weakref

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


def test_a_chain_keeps_only_what_is_asked_for_and_drops_each_other_value_after_its_last_reader():
    """run_program with `keep`: the kept values equal those of a walk that keeps all, and a value
    is gone once its last reader has run (a step records which values are still held)."""
    from graphgpt.numpy_ops import run_program
    # s0 = x * x; s1 = s0 + x; s2 = exp(s1); s3 = s0 * s2; s4 = s3 - s2
    program = [["mul", [], [-1, -1]], ["add", [], [0, -1]], ["exp", [], [1]], ["mul", [], [0, 2]], ["sub", [], [3, 2]]]
    x = np.linspace(-1.0, 1.0, 5)
    everything = run_program(program, [x])
    made, held = [], []

    def step(op, attrs, args):  # notes which earlier values are still alive, then computes its own
        held.append([ref() is not None for ref in made])
        value = REGISTRY[op].ref(attrs, *args)
        made.append(weakref.ref(value))
        return value
    values = run_program(program, [x], step, keep=[3, -1])
    np.testing.assert_array_equal(values[3], everything[3])
    np.testing.assert_array_equal(values[4], everything[4])
    assert [v is None for v in values] == [True, True, True, False, False]
    # s1 is dropped once s2 has read it, s0 once s3 has: neither is alive when the next step starts
    assert held[3] == [True, False, True] and held[4] == [False, False, True, True]
