"""The whole GPT-2 training graph: gradients against finite differences, memory plan semantics."""
import numpy as np
import pytest

from graphgpt import schedule
from graphgpt.compiler import compile_model
from graphgpt.plan import Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from tests.conftest import ROOT, TINY


@pytest.fixture(scope="module")
def tiny_plan():
    compiled = compile_model(ROOT / "model.py", TINY, log=lambda *a: None)
    return Plan(compiled.data, "test")


def _setup(plan, seed=0, std=0.3):
    """float64 backend with O(1) weights, so every nonlinearity is exercised."""
    be = NumpyBackend(plan, np.float64)
    rng = np.random.default_rng(seed)
    for t in plan.params:
        be.set_tensor(t["name"], rng.normal(0, std, t["shape"]) + (1.0 if t["init"] == "ones" else 0.0))
    B, T, V = plan.config["batch_size"], plan.config["block_size"], plan.config["vocab_size"]
    feeds = {"tokens": rng.integers(0, V, (B, T)), "targets": rng.integers(0, V, (B, T)), "step_size": 0.0}
    return be, feeds


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_whole_graph_gradient_matches_finite_differences(tiny_plan, tied):
    """Tied (lm_head = wte.T): wte's gradient is the sum of the embedding's and the lm_head's."""
    if tied:
        tiny_plan = Plan(compile_model(ROOT / "model.py", TINY + ["tie_weights=1"], log=lambda *a: None).data, "tied")
        assert "lm_head.weight" not in {t["name"] for t in tiny_plan.params}
        # wte.T and the gradient's transpose are read through the GEMMs' flags: nothing is copied
        assert "transpose" not in {launch.op for launch in tiny_plan.program("train").launches}
    be, feeds = _setup(tiny_plan)
    be.run("train", feeds)  # step size 0: parameters stay, gradients land in the grad region
    rng = np.random.default_rng(1)
    worst = 0.0
    for t in tiny_plan.params:
        analytic = be.get_tensor(t["name"], grad=True)
        p = be.tensor(t["name"])
        idx = [tuple(rng.integers(0, d) for d in t["shape"]) for _ in range(3)]
        idx.append(np.unravel_index(np.argmax(np.abs(analytic)), analytic.shape))
        numeric = []
        for i in idx:
            h, keep, f = 1e-6, p[i], []
            for sign in (1, -1):
                p[i] = keep + sign * h
                f.append(float(be.run("train", feeds)["loss"]))
            p[i] = keep
            numeric.append((f[0] - f[1]) / (2 * h))
        got = np.array([analytic[i] for i in idx])
        err = np.abs(got - numeric).max() / max(np.abs(numeric).max(), 1e-8)
        worst = max(worst, err)
        assert err < 1e-5, f"{t['name']}: relative error {err:.2e}"
    assert worst < 1e-5


def test_plan_execution_matches_graph_semantics(tiny_plan):
    """Three optimizer steps through the memory-planned arena equal a plain float64 Adam."""
    be, feeds = _setup(tiny_plan, seed=3, std=0.02)
    params = {t["name"]: be.get_tensor(t["name"]) for t in tiny_plan.params}
    state = {n: (np.zeros_like(v), np.zeros_like(v)) for n, v in params.items()}
    cfg = tiny_plan.optimizer
    for step in range(3):
        scalars = schedule.step_scalars(cfg, step)
        out = be.run("train", feeds | {"step_size": scalars["step_size"]})
        grads = {n: be.get_tensor(n, grad=True) for n in params}
        norm = np.sqrt(sum((g * g).sum() for g in grads.values()))
        assert abs(out["grad_norm"] - norm) < 1e-12 * max(norm, 1)
        scale = cfg["grad_clip"] / max(norm, cfg["grad_clip"])
        for n, g in grads.items():
            m, v = state[n]
            g = g * scale
            m += (g - m) * (1 - cfg["beta1"])
            v += (g * g - v) * (1 - cfg["beta2"])
            params[n] = params[n] - scalars["step_size"] * m / (np.sqrt(v) + cfg["eps"])
    for n, expected in params.items():
        np.testing.assert_allclose(be.get_tensor(n), expected, rtol=1e-10, atol=1e-14, err_msg=n)


def test_generate_program_agrees_with_train_forward(tiny_plan):
    """Logits of the batch-1 program equal the loss's logits: same weights, same arena."""
    be, feeds = _setup(tiny_plan, seed=5)
    logits = be.run("generate", {"tokens": feeds["tokens"][:1]})["logits"][0]
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    t = feeds["targets"][0]
    loss_row0 = -logp[np.arange(len(t)), t].mean()
    be2, _ = _setup(tiny_plan, seed=5)
    single = {"tokens": np.repeat(feeds["tokens"][:1], 2, 0), "targets": np.repeat(feeds["targets"][:1], 2, 0),
              "step_size": 0.0}
    assert abs(float(be2.run("train", single)["loss"]) - loss_row0) < 1e-12
