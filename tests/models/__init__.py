"""Model files of the DSL's parts GPT-2's model.py does not use, and what their tests share: a
plan compiled from one, and a few NumPy training steps of it."""
from pathlib import Path

import numpy as np

from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.plan import Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import Trainer

MODELS = Path(__file__).resolve().parent
FAST = ["lr=1e-2", "min_lr=1e-2"]  # a rate at which a tiny model's loss falls within a few dozen steps


def compiled(model: str, overrides=(), fusion=True) -> dict:
    """The plan data of tests/models/<model>.py."""
    return compile_model(MODELS / f"{model}.py", list(overrides), fusion=fusion, log=lambda *a: None).data


def train(data: dict, steps: int, dtype) -> tuple[list[float], dict[str, np.ndarray]]:
    """Each step's loss and the weights after `steps` steps on the NumPy backend, of a corpus of
    eight of the vocabulary's tokens drawn at random (a model that learns which reaches ln 8)."""
    plan = Plan(data, "t")
    tokens = np.random.default_rng(0).integers(0, 8, 4_000).astype(np.int32)
    backend = NumpyBackend(plan, dtype)
    trainer = Trainer(plan, backend, SequentialSampler(tokens, plan.config["batch_size"], plan.config["block_size"]))
    losses = [m["loss"] for m in trainer.steps(steps)]
    return losses, {t["name"]: backend.get_tensor(t["name"]) for t in plan.params}


def assert_trains_as_unfused(model: str, steps: int = 40) -> list[float]:
    """The fused plan's float64 losses and weights are the unfused plan's, and its loss falls."""
    losses, params = train(compiled(model, FAST), steps, np.float64)
    unfused_losses, unfused = train(compiled(model, FAST, fusion=False), steps, np.float64)
    np.testing.assert_allclose(losses, unfused_losses, rtol=1e-9)
    for name, value in unfused.items():
        np.testing.assert_allclose(params[name], value, rtol=1e-9, atol=1e-9 * np.abs(value).max(), err_msg=name)
    assert np.mean(losses[-5:]) < losses[0] - 0.5, losses
    return losses
