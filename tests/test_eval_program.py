"""The forward-only "eval" program: the train program's loss, and it writes nothing but its work."""
import numpy as np
import pytest

from graphgpt import optim, schedule
from graphgpt.compiler import compile_model
from graphgpt.ops import REGISTRY
from graphgpt.plan import Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import init_params
from tests.conftest import ROOT, TINY

PERSISTENT = ("params", "grads", "state")


@pytest.fixture(scope="module")
def compiled():
    return compile_model(ROOT / "model.py", TINY, log=lambda *a: None)


def test_eval_loss_is_the_train_loss_and_changes_nothing(compiled):
    plan = Plan(compiled.data, "test")
    be = NumpyBackend(plan, np.float64)
    for name, value in init_params(plan, seed=0).items():
        be.set_tensor(name, value)
    rng, cfg = np.random.default_rng(0), plan.optimizer
    B, T, V = plan.config["batch_size"], plan.config["block_size"], plan.config["vocab_size"]
    for step in range(3):
        batch = {"tokens": rng.integers(0, V, (B, T)), "targets": rng.integers(0, V, (B, T))}
        before = {region: be.region(region).copy() for region in PERSISTENT}
        loss = be.run("eval", batch)["loss"]
        for region, values in before.items():
            np.testing.assert_array_equal(be.region(region), values, err_msg=region)
        scalars = schedule.step_scalars(cfg, step)
        train = be.run("train", {**batch, **{k: scalars[k] for k in optim.scalar_inputs(cfg)}})
        assert abs(loss - train["loss"]) <= 1e-12, (step, float(loss), float(train["loss"]))


def test_eval_is_the_forward_alone(compiled):
    data = compiled.data
    train, ev = data["programs"]["train"], data["programs"]["eval"]
    assert set(ev.inputs) == {"tokens", "targets"} and list(ev.outputs) == ["loss"]
    assert ev.inputs["tokens"].shape == train.inputs["tokens"].shape  # batch_size x block_size
    ops = {ln.op for ln in ev.launches}
    assert not {op for op in ops if "grad" in op or REGISTRY[op].kind == "collective"}, ops
    assert "sum_squares" not in ops
    work_start = data["arena"]["regions"]["work"][0]
    assert all(ln.out.offset >= work_start for ln in ev.launches)  # writes only work
    assert len(ev.launches) < len(train.launches)
    assert ev.memory["work_peak"] < train.memory["work_peak"]
    assert "program eval" in compiled.report
