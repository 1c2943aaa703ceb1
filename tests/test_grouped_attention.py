"""Grouped-query attention: causal_attention(q, k, v, scale) with Hkv key/value heads shared by
groups of the H query heads. Its NumPy references against an attention written here that repeats
each key/value head over its group, the DSL's checks, and a tiny model (tests/gqa_model.py)
trained on NumPy whose cached decoding gives the windowed generator's tokens."""
import numpy as np
import pytest

from graphgpt import plan as plan_io
from graphgpt import schedule
from graphgpt.compiler import compile_model
from graphgpt.dsl import causal_attention, trace
from graphgpt.ir import FLOAT, GraphError
from graphgpt.numpy_ops import BY_OP
from graphgpt.ops import REGISTRY
from graphgpt.ops.registry import Spec
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.sample import generate
from graphgpt.train import init_params
from tests.conftest import ROOT

MODEL = ROOT / "tests" / "gqa_model.py"
CONFIG = ["vocab_size=100"]


def _attention64(q, k, v, scale):
    """Causal attention per query head in float64, k and v (B, T, Hkv, D) repeated per group."""
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q, k) * scale
    t = q.shape[1]
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhij,bjhd->bihd", p / p.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_references_are_attention_over_the_groups_key_value_heads(kv_heads):
    """The forward against the repeated heads; the backward against the forward's float64 VJP
    through the repeats (the gradient of a repeated head is the sum over its group)."""
    rng = np.random.default_rng(kv_heads)
    b, t, h, d, scale = 2, 7, 4, 5, 0.4
    q, k, v = (rng.standard_normal((b, t, heads, d)) for heads in (h, kv_heads, kv_heads))
    out, lse = BY_OP["causal_attention"]({"scale": scale}, q, k, v)
    np.testing.assert_allclose(out, _attention64(q, k, v, scale), rtol=1e-12, atol=1e-12)
    assert lse.shape == (b, h, t)
    g = rng.standard_normal(out.shape)
    dq, delta = BY_OP["causal_attention_grad_q"]({"scale": scale}, q, k, v, out, lse, g)
    dk, dv = BY_OP["causal_attention_grad_kv"]({"scale": scale}, q, k, v, lse, g, delta)
    eps = 1e-6
    for x, analytic in ((q, dq), (k, dk), (v, dv)):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            x[idx] += eps
            up = (_attention64(q, k, v, scale) * g).sum()
            x[idx] -= 2 * eps
            down = (_attention64(q, k, v, scale) * g).sum()
            x[idx] += eps
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


def test_one_key_value_head_per_query_head_is_the_packed_form():
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((2, 6, 3, 2, 4))
    q, k, v = (np.ascontiguousarray(qkv[:, :, i]) for i in range(3))
    packed = BY_OP["causal_attention"]({"scale": 0.5}, qkv)
    separate = BY_OP["causal_attention"]({"scale": 0.5}, q, k, v)
    np.testing.assert_array_equal(packed[0], separate[0])
    np.testing.assert_array_equal(packed[1], separate[1])


def test_grouped_caches_decode_as_the_whole_window():
    """cache_update takes k and v into a cache of Hkv heads; cached_attention of each position equals
    the fused attention's row."""
    rng = np.random.default_rng(4)
    b, t, h, hkv, d, length = 2, 6, 4, 2, 3, 9
    q, k, v = (rng.standard_normal((b, t, heads, d)) for heads in (h, hkv, hkv))
    whole, _ = BY_OP["causal_attention"]({"scale": 0.6}, q, k, v)
    cache = 1e3 * rng.standard_normal((b, length, 2, hkv, d))
    for p in range(t):
        cache = BY_OP["cache_update"]({}, cache, k[:, p:p + 1], v[:, p:p + 1], np.int32(p))
        row = BY_OP["cached_attention"]({"scale": 0.6}, q[:, p:p + 1], cache, np.int32(p))
        np.testing.assert_allclose(row[:, 0], whole[:, p], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(cache[:, :t, 0], k)
    np.testing.assert_array_equal(cache[:, :t, 1], v)


def test_flops_count_every_query_head():
    q, kv = Spec((2, 8, 4, 16), "f32"), Spec((2, 8, 1, 16), "f32")
    out = REGISTRY["causal_attention"].infer({"scale": 1.0}, q, kv, kv)
    assert REGISTRY["causal_attention"].flops({"scale": 1.0}, out, q, kv, kv) == 4 * 2 * 4 * 8 * 8 * 16


@pytest.mark.parametrize("k_shape,message", [
    ((2, 8, 3, 16), "3 key/value heads do not divide 4 query heads"),
    ((2, 4, 2, 16), "k and v have (B, T) (2, 4), q (2, 8)"),
    ((1, 8, 2, 16), "k and v have (B, T) (1, 8), q (2, 8)"),
    ((2, 8, 2, 8), "k and v have head dim 8, q 16"),
])
def test_mismatched_heads_are_one_line_graph_errors(k_shape, message):
    def build(tracer):
        q = tracer.input("q", (2, 8, 4, 16))
        k = tracer.input("k", k_shape)
        causal_attention(q, k, tracer.input("v", k_shape), 0.25)
    with pytest.raises(GraphError) as error:
        trace(build, FLOAT)
    text = str(error.value)
    assert message in text and "causal_attention" in text and "test_grouped_attention.py:" in text
    assert "\n" not in text


def test_the_dsl_takes_packed_or_separate_tensors():
    def build(tracer):
        x = tracer.input("x", (2, 8, 3, 4, 16))
        q, kv = tracer.input("q", (2, 8, 4, 16)), tracer.input("kv", (2, 8, 2, 16))
        assert causal_attention(x, 0.25).shape == (2, 8, 4, 16)
        assert causal_attention(q, kv, kv, scale=0.25, dropout=0.1).shape == (2, 8, 4, 16)
        with pytest.raises(GraphError, match="packed qkv or q, k and v, not 2 tensors"):
            causal_attention(q, kv, 0.25)
        with pytest.raises(GraphError, match=r"takes \(q, k, v, scale, dropout=0.0\) or \(qkv, scale"):
            causal_attention(q, kv, kv, dropout=0.1)
    trace(build, FLOAT)


# ---- a tiny model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tests/gqa_model.py compiled (dropout in training) and trained for a few steps on NumPy:
    the plan and its backend, and the losses."""
    tmp = tmp_path_factory.mktemp("gqa")
    compiled = compile_model(MODEL, [*CONFIG, "dropout=0.1", "lr=0.003"], log=lambda *a: None)
    plan_io.save(compiled.data, tmp / "plan", compiled.files)
    plan = plan_io.load(tmp / "plan")
    backend = NumpyBackend(plan, dtype=np.float64)
    for name, value in init_params(plan, 0).items():
        backend.set_tensor(name, value)
    tokens = np.tile(np.arange(16, dtype=np.int32) % 5, (2, 1))  # a pattern to learn
    losses = []
    for step in range(30):
        scalars = schedule.step_scalars(plan.optimizer, step) | schedule.dropout_scalars(1, step)
        feeds = {name: scalars[name] for name, buf in plan.program("train").inputs.items() if not buf.shape}
        batch = {"tokens": tokens, "targets": np.roll(tokens, -1, 1)}
        losses.append(float(backend.run("train", {**batch, **feeds})["loss"]))
    return plan, backend, losses


def test_the_model_reads_k_and_v_in_place_and_learns(trained):
    plan, _, losses = trained
    train = plan.program("train").launches
    ops = [ln.op for ln in train]
    assert ops.count("causal_attention") == 2 and ops.count("causal_attention_grad_kv") == 2
    for ln in train:
        if ln.op == "causal_attention":
            assert [b.shape for b in ln.ins[:3]] == [(2, 16, 4, 8), (2, 16, 2, 8), (2, 16, 2, 8)]
            assert ln.attrs["dropout"] == 0.1
        if ln.op == "causal_attention_grad_kv":
            assert [b.shape for b in ln.outs] == [(2, 16, 2, 8), (2, 16, 2, 8)]
    assert not [op for op in ops if op in ("broadcast_to", "concat")]  # no copy of k or v
    caches = [t for t in plan.tensors if t["name"].startswith("kv_cache.")]
    assert [t["shape"] for t in caches] == [[1, 16, 2, 2, 8]] * 2  # Hkv heads
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_cached_greedy_decoding_equals_windowed_greedy(trained):
    plan, backend, _ = trained
    assert "decode" in plan.data["programs"]
    for prompt in ([0, 1, 2], [4], list(range(12))):
        cached = generate(backend, prompt, 10, 99, 98, temperature=0.0, kv_cache=True)
        windowed = generate(backend, prompt, 10, 99, 98, temperature=0.0, kv_cache=False)
        assert cached == windowed and all(len(new) == 10 for new in cached)
