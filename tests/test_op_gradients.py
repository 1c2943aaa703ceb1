"""Every differentiable op's VJP against central finite differences in float64.

The table below must name exactly the registry's differentiable ops: registering an op with a VJP
and no case here fails the suite.
"""
import numpy as np
import pytest

from graphgpt import autodiff
from graphgpt.ir import Graph
from graphgpt.ops import REGISTRY
from graphgpt.reference import evaluate

F, I = "f32", "i32"

# op -> (input specs as (shape, dtype), ("ids", shape, upper bound) or ("table", shape): a float
# input the op takes no gradient for, such as rotary's cosines and sines; attrs)
CASES = {
    "add": ([((3, 4), F), ((4,), F)], {}),
    "sub": ([((3, 1), F), ((3, 4), F)], {}),
    "mul": ([((2, 3, 4), F), ((3, 1), F)], {}),
    "div": ([((3, 4), F), ((1, 4), F)], {}),
    "neg": ([((5,), F)], {}),
    "exp": ([((2, 3), F)], {}),
    "log": ([((2, 3), F)], {}),
    "sqrt": ([((2, 3), F)], {}),
    "tanh": ([((2, 3), F)], {}),
    "gelu": ([((3, 5), F)], {}),
    "silu": ([((3, 5), F)], {}),
    "sigmoid": ([((3, 5), F)], {}),
    "relu": ([((3, 5), F)], {}),
    "square": ([((3, 5), F)], {}),
    "sum": ([((2, 3, 4), F)], {"axes": (0, 2), "keepdims": False}),
    "matmul": ([((2, 3, 4), F), ((2, 4, 5), F)], {"ta": False, "tb": False}),
    "reshape": ([((2, 6), F)], {"shape": (3, 4)}),
    "transpose": ([((2, 3, 4), F)], {"perm": (2, 0, 1)}),
    "broadcast_to": ([((3, 1), F)], {"shape": (2, 3, 4)}),
    "slice": ([((5, 3), F)], {"axis": 0, "start": 1, "stop": 4}),
    "pad": ([((2, 3), F)], {"axis": 1, "before": 1, "after": 2}),
    "concat": ([((2, 1, 3), F), ((2, 2, 3), F), ((2, 1, 3), F)], {"axis": 1}),
    "copy": ([((2, 3), F)], {}),
    "normalize": ([((3, 6), F)], {"eps": 1e-5}),
    "rms_normalize": ([((3, 6), F)], {"eps": 1e-5}),
    "causal_softmax": ([((2, 4, 4), F)], {"scale": 0.7}),
    "causal_attention": ([((2, 5, 3, 2, 3), F)], {"scale": 0.7}),
    "dropout": ([((3, 8), F), ("ids", (), 1000), ("ids", (), 1000)], {"p": 0.3, "site": 2}),
    "cross_entropy": ([((6, 5), F), ("ids", (6,), 5)], {}),
    "embedding": ([((7, 3), F), ("ids", (2, 4), 7)], {}),
    # the tables are any values: the VJP is the transposed map, whatever the rotation's entries
    "rotary": ([((2, 3, 2, 4), F), ("table", (5, 2)), ("table", (5, 2))], {"inverse": False}),
    # to the compute type: the identity (a cast to bf16 rounds, and the float64 check cannot see
    # through rounding; tests/test_bf16.py checks that one)
    "cast": ([((2, 3), F)], {"dtype": "f32"}),
}

# matmul's transpose flags and shared right operand are separate code paths of its VJP
MATMUL_VARIANTS = [
    ([((2, 4, 3), F), ((2, 4, 5), F)], {"ta": True, "tb": False}),
    ([((2, 3, 4), F), ((2, 5, 4), F)], {"ta": False, "tb": True}),
    ([((2, 4, 3), F), ((2, 5, 4), F)], {"ta": True, "tb": True}),
    ([((2, 3, 4), F), ((4, 5), F)], {"ta": False, "tb": False}),
    ([((2, 3, 4), F), ((5, 4), F)], {"ta": False, "tb": True}),
]


# rotary's inverse (its own gradient) and its rows from a position input (decoding) too
ROTARY_VARIANTS = [
    ([((2, 3, 2, 4), F), ("table", (5, 2)), ("table", (5, 2))], {"inverse": True}),
    ([((1, 3, 2, 6), F), ("table", (5, 3)), ("table", (5, 3)), ("ids", (), 3)], {"inverse": False}),
]


def test_every_differentiable_op_has_a_case():
    differentiable = {name for name, op in REGISTRY.items() if op.vjp is not None}
    assert differentiable == set(CASES), (
        f"missing gradient tests: {sorted(differentiable - set(CASES))}; "
        f"stale cases: {sorted(set(CASES) - differentiable)}")


def test_nondifferentiable_ops_say_why():
    for name, op in REGISTRY.items():
        assert (op.vjp is None) == bool(op.nondiff), name


def _inputs(specs, rng):
    arrays = []
    for spec in specs:
        if spec[0] == "ids":
            arrays.append(rng.integers(0, spec[2], spec[1]).astype(np.int32))
        elif spec[0] == "table":
            arrays.append(rng.uniform(-1.0, 1.0, spec[1]))
        else:
            arrays.append(rng.uniform(0.5, 1.5, spec[0]) * rng.choice([-1.0, 1.0], spec[0]))
    return arrays


def check_vjp(op_name, specs, attrs, seed=0):
    rng = np.random.default_rng(seed)
    arrays = _inputs(specs, rng)
    if op_name in ("log", "sqrt"):
        arrays = [np.abs(a) for a in arrays]
    g = Graph()
    ins = [g.add("input", name=f"x{i}", shape=a.shape, dtype=I if a.dtype == np.int32 else F)
           for i, a in enumerate(arrays)]
    out = g.add(op_name, ins, **attrs)
    if isinstance(out, tuple):  # several outputs: the first is the one a model differentiates
        out = out[0]
    weight = g.add("input", name="w", shape=out.shape, dtype=F)
    loss = (out * weight).sum()
    wrt = [v.id for v, a, spec in zip(ins, arrays, specs) if a.dtype != np.int32 and spec[0] != "table"]
    grads = autodiff.grad(g, loss, wrt)
    w = rng.standard_normal(out.shape)
    feeds = {f"x{i}": a for i, a in enumerate(arrays)} | {"w": w}
    values = evaluate(g, feeds)

    def f(feeds):
        return float(evaluate(g, feeds)[loss.id])

    for k, (v, a) in enumerate(zip(ins, arrays)):
        if v.id not in wrt:
            continue
        numeric = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            h = 1e-6
            for sign in (1, -1):
                b = a.copy()
                b[idx] += sign * h
                numeric[idx] += sign * f(feeds | {f"x{k}": b}) / (2 * h)
        analytic = values[grads[v.id].id]
        err = np.abs(analytic - numeric).max() / max(np.abs(numeric).max(), 1e-12)
        assert err < 1e-6, f"{op_name} input {k}: relative error {err:.2e}"


@pytest.mark.parametrize("op_name", sorted(CASES))
def test_vjp_matches_finite_differences(op_name):
    specs, attrs = CASES[op_name]
    check_vjp(op_name, specs, attrs)


# causal_attention's separate form, grouped-query: q (B, T, H, D), k and v (B, T, Hkv, D), with
# groups of two query heads, one group of all four, and dropout's masks in the grouped backward
ATTENTION_VARIANTS = [
    ([((2, 5, 4, 3), F), ((2, 5, 2, 3), F), ((2, 5, 2, 3), F)], {"scale": 0.7}),
    ([((2, 5, 4, 3), F), ((2, 5, 1, 3), F), ((2, 5, 1, 3), F)], {"scale": 0.7}),
    ([((1, 5, 4, 3), F), ((1, 5, 2, 3), F), ((1, 5, 2, 3), F), ("ids", (), 1000), ("ids", (), 1000)],
     {"scale": 0.7, "dropout": 0.3, "site": 1}),
]


@pytest.mark.parametrize("variant", range(len(ATTENTION_VARIANTS)))
def test_grouped_query_attention_vjp(variant):
    specs, attrs = ATTENTION_VARIANTS[variant]
    check_vjp("causal_attention", specs, attrs, seed=variant)


@pytest.mark.parametrize("variant", range(len(MATMUL_VARIANTS)))
def test_matmul_vjp_variants(variant):
    specs, attrs = MATMUL_VARIANTS[variant]
    check_vjp("matmul", specs, attrs, seed=variant)


@pytest.mark.parametrize("variant", range(len(ROTARY_VARIANTS)))
def test_rotary_vjp_variants(variant):
    specs, attrs = ROTARY_VARIANTS[variant]
    check_vjp("rotary", specs, attrs, seed=variant)


def test_every_op_has_one_numpy_reference_and_no_reference_is_stale():
    from graphgpt.numpy_ops import BY_OP
    computed = {name for name, op in REGISTRY.items() if op.kind != "source"}
    assert set(BY_OP) == computed
    assert all(REGISTRY[name].ref is BY_OP[name] for name in computed)
