"""A checkpoint writer for the kill -9 test in tests/test_checkpoint_dir.py.

usage: checkpoint_worker.py DIR — resumes from DIR's latest checkpoint and, like a trainer, advances
its state one step at a time, saving a checkpoint after every step until it is killed. The state of
step s is `state_for_step(s)` exactly, so the test can check whatever checkpoint it finds, and only
a resume from an exact copy of the saved state keeps it so.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graphgpt.checkpoint import CheckpointDir, TrainingState  # noqa: E402

PLAN_DIGEST = "5eed" * 16
MODEL_HASH = "ab" * 32
KEEP = 2
SIZE = 1 << 18  # 2 MiB of float64 parameters, 1 MiB of float32 optimizer state, 1 MiB of export


def state_for_step(step: int) -> TrainingState:
    """Integers and halves stay exact under the `advance` additions in both dtypes."""
    base = np.arange(SIZE, dtype=np.float64)
    return TrainingState(step, {"wte": base + step, "ln_f.b": np.full(3, 0.5 * step)},
                         {"adam.m.wte": (0.5 * base + step).astype(np.float32)},
                         {"sampler": {"position": 3 * step}, "seed": 7})


def advance(state: TrainingState) -> TrainingState:
    params = {"wte": state.params["wte"] + 1.0, "ln_f.b": state.params["ln_f.b"] + 0.5}
    optimizer = {"adam.m.wte": state.optimizer["adam.m.wte"] + np.float32(1.0)}
    meta = {**state.meta, "sampler": {"position": state.meta["sampler"]["position"] + 3}}
    return TrainingState(state.step + 1, params, optimizer, meta)


def save(checkpoints: CheckpointDir, state: TrainingState) -> None:
    checkpoints.save(state, PLAN_DIGEST, MODEL_HASH, list(state.params.values()))


def main(directory: str) -> None:
    checkpoints = CheckpointDir(directory, keep=KEEP)
    state = checkpoints.load(PLAN_DIGEST)
    while True:
        state = advance(state)
        save(checkpoints, state)


if __name__ == "__main__":
    main(sys.argv[1])
