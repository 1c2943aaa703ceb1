"""Slices of any axis (`Value.__getitem__`), concat along any axis (dsl.concat), and a model that
splits a projection's last axis into q, k and v and joins pieces again, trained on NumPy."""
import numpy as np
import pytest

from graphgpt import dsl
from graphgpt.ir import Graph, GraphError
from graphgpt.reference import evaluate
from tests.conftest import COMPILE, assert_user_error, run_cli
from tests.models import assert_trains_as_unfused, compiled
from tests.test_op_gradients import check_vjp

F = "f32"


def _slices(value) -> list[tuple]:
    """The slice ops that made `value`, innermost first: (axis, start, stop)."""
    found, node = [], value.node
    while node.op == "slice":
        found.append((node.attr["axis"], node.attr["start"], node.attr["stop"]))
        node = value.graph.nodes[node.inputs[0]]
    return found[::-1]


@pytest.mark.parametrize("index,slices", [
    ((Ellipsis, slice(2, 5)), [(2, 2, 5)]),
    ((slice(None), slice(1, 3)), [(1, 1, 3)]),
    ((slice(None), slice(None), slice(-4, None)), [(2, 6, 10)]),
    ((slice(1, 2), Ellipsis, slice(3, None)), [(0, 1, 2), (2, 3, 10)]),
    (slice(-1, None), [(0, 1, 2)]),
    ((Ellipsis, slice(None)), []),
], ids=["ellipsis", "second-axis", "negative", "two-axes", "first-axis", "whole"])
def test_a_contiguous_slice_of_any_axis_is_a_slice_op(index, slices):
    g = Graph()
    x = g.add("input", name="x", shape=(2, 3, 10), dtype=F)
    y = x[index]
    assert _slices(y) == slices
    value = np.arange(60.0).reshape(2, 3, 10)
    np.testing.assert_array_equal(evaluate(g, {"x": value})[y.id], value[index])


@pytest.mark.parametrize("index", [(Ellipsis, slice(None, None, 2)), (slice(None), 0), (Ellipsis, Ellipsis),
                                   (slice(None),) * 4, (slice(None), [0, 1])],
                         ids=["step", "int-inside", "two-ellipses", "too-many", "list"])
def test_an_unsupported_index_is_a_graph_error_that_says_what_is(index):
    g = Graph()
    x = g.add("input", name="x", shape=(2, 3, 10), dtype=F)
    with pytest.raises(GraphError, match=r"unsupported index .* of a value of shape \(2, 3, 10\)"):
        x[index]


@pytest.mark.parametrize("op,shape,attrs", [("slice", (2, 3, 7), {"axis": 2, "start": 2, "stop": 6}),
                                            ("slice", (2, 5, 3), {"axis": 1, "start": 1, "stop": 4}),
                                            ("pad", (2, 3, 4), {"axis": 2, "before": 3, "after": 1})],
                         ids=["slice-last", "slice-inner", "pad-last"])
def test_slices_and_pads_of_inner_axes_against_finite_differences(op, shape, attrs):
    check_vjp(op, [(shape, F)], attrs)


def _traced(build):
    """The graph and result of `build(x, y)` on inputs x (2, 3, 4) and y (2, 3, 2) traced with the DSL."""
    out = {}

    def trace(tracer):
        x, y = tracer.input("x", (2, 3, 4)), tracer.input("y", (2, 3, 2))
        out["value"] = build(x, y)
    return dsl.trace(trace).graph, out["value"]


def test_concat_along_the_last_axis_is_pads_added_and_along_a_contiguous_one_a_concat():
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 3, 4)), "y": rng.standard_normal((2, 3, 2))}
    graph, joined = _traced(lambda a, b: dsl.concat([a, b, a], axis=-1))
    assert joined.shape == (2, 3, 10) and {n.op for n in graph.nodes.values()} == {"input", "pad", "add"}
    np.testing.assert_array_equal(evaluate(graph, feeds)[joined.id], np.concatenate([feeds["x"], feeds["y"], feeds["x"]], -1))
    graph, stacked = _traced(lambda a, b: dsl.concat([a.reshape(1, 2, 3, 4), a.reshape(1, 2, 3, 4)], axis=0))
    assert stacked.node.op == "concat" and stacked.shape == (2, 2, 3, 4)
    np.testing.assert_array_equal(evaluate(graph, feeds)[stacked.id], np.stack([feeds["x"]] * 2))


@pytest.mark.parametrize("build,message", [
    (lambda a, b: dsl.concat([a, b], axis=1), r"concat: the values differ outside axis 1: \(2, 3, 4\):f32, \(2, 3, 2\):f32"),
    (lambda a, b: dsl.concat([a, b], axis=3), r"concat: axis 3 is out of range for shape \(2, 3, 4\)"),
    (lambda a, b: dsl.concat([]), r"concat takes a list of one or more values"),
], ids=["shapes", "axis", "empty"])
def test_a_concat_of_values_that_do_not_fit_is_a_graph_error(build, message):
    with pytest.raises(GraphError, match=message):
        _traced(build)


BAD = {
    "index": "x = embedding(param('wte', (cfg['vocab_size'], 8)), idx)\n    return x[..., ::2] @ param('head', (4, cfg['vocab_size']))",
    "concat": "table = concat([param('a', (cfg['vocab_size'], 4)), param('b', (cfg['vocab_size'], 4))], axis=0)\n"
              "    return embedding(table, idx) @ param('head', (4, cfg['vocab_size']))",
}


@pytest.mark.parametrize("body,fragments", [
    (BAD["index"], ["bad.py:8: unsupported index (Ellipsis, slice(None, None, 2))"]),
    (BAD["concat"], ["bad.py:7: concat of 2 pieces along axis 0 cannot be built: piece 1 is a parameter"]),
], ids=["index", "concat-of-parameters"])
def test_a_model_the_plan_cannot_slice_or_join_is_refused_naming_its_line(tmp_path, body, fragments):
    model = tmp_path / "bad.py"
    model.write_text("from graphgpt.dsl import concat, embedding, param\n\n"
                     "CONFIG = dict(n_embd=8, block_size=4, batch_size=2, vocab_size=0)\n\n\n"
                     f"def forward(idx, cfg):\n    {body}\n")
    proc = run_cli(COMPILE, str(model), "--out", str(tmp_path / "plan"))
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "plan").exists()


def test_a_model_that_splits_its_projection_into_q_k_v_trains_on_numpy():
    data = compiled("split_qkv")
    slices = [ln for ln in data["programs"]["train"].launches if ln.op == "slice"]
    assert sorted((s.attrs["axis"], s.attrs["start"], s.attrs["stop"]) for s in slices[:3]) == \
        [(2, 0, 16), (2, 16, 32), (2, 32, 48)]  # q, k and v: slices of the last axis, each a launch
    assert "concat" not in {ln.op for ln in data["programs"]["train"].launches}
    assert_trains_as_unfused("split_qkv")
