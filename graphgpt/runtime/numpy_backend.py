"""The NumPy backend: runs a plan launch by launch with each op's reference implementation.

It is the oracle every other backend is checked against. All tensors are views into two flat
arenas (float and int32) at the offsets the memory plan chose, so the plan's aliasing and
in-place updates are exercised exactly as on the GPU. Floats are float32, or float64 for tests.
"""
from __future__ import annotations

import numpy as np

from ..ops import REGISTRY
from ..passes.memory import aligned
from ..plan import Plan
from .dist import SingleWorld


def _extend(bucket: list | None, off: int, n: int) -> list:
    """Grow a bucket [offset, size] by an adjacent slot (backwards order is the usual one).
    Slots are padded to the arena's alignment; the padding is reduced along, harmlessly."""
    if bucket is not None and off + n == bucket[0]:
        bucket[0], bucket[1] = off, bucket[1] + n
        return bucket
    if bucket is not None and bucket[0] + bucket[1] == off:
        bucket[1] += n
        return bucket
    return [off, n]


class Finished:
    """The NumPy backend computes while enqueueing: its results are ready at once."""

    def __init__(self, outputs: dict):
        self.outputs = outputs

    def result(self) -> dict[str, np.ndarray]:
        return self.outputs


class NumpyBackend:
    name = "numpy"
    pipeline_depth = 0  # synchronous: nothing to overlap

    def __init__(self, plan: Plan, dtype=np.float32, world=None):
        self.plan, self.dtype, self.world = plan, np.dtype(dtype), world or SingleWorld()
        arena = plan.data["arena"]
        self.arenas = {"f": np.zeros(arena["float"], self.dtype), "i": np.zeros(max(arena["int"], 1), np.int32)}
        for off, value in plan.data["consts"]:
            self.arenas["f"][off] = value
        self._programs = {name: self._bind(prog) for name, prog in plan.data["programs"].items()}

    def view(self, buf) -> np.ndarray:
        arena, off, shape = buf
        n = int(np.prod(shape, dtype=np.int64))
        return self.arenas[arena][off:off + n].reshape(shape)

    def _bind(self, prog: dict):
        steps, bucket = [], None  # bucket: [offset, size] of adjacent gradients reduced together
        for launch in prog["launches"]:
            op = REGISTRY[launch["op"]]
            if op.kind == "collective":
                if self.world.size == 1:
                    continue  # one process: the mean over ranks is the identity
                _, off, shape = launch["out"]
                bucket = _extend(bucket if steps and steps[-1] is bucket else None, off, aligned(int(np.prod(shape))))
                if not steps or steps[-1] is not bucket:
                    steps.append(bucket)
                continue
            steps.append((op.ref, launch["attrs"], [self.view(b) for b in launch["in"]], self.view(launch["out"])))
        inputs = {k: self.view(b) for k, b in prog["inputs"].items()}
        outputs = {k: self.view(b) for k, b in prog["outputs"].items()}
        return steps, inputs, outputs

    # ---- the backend interface the trainer uses ----------------------------------------------
    def tensor(self, name: str, grad: bool = False) -> np.ndarray:
        """A persistent tensor (parameter, its gradient, optimizer state) as a live view."""
        t = next(t for t in self.plan.tensors if t["name"] == name)
        return self.view(["f", t["grad"] if grad else t["offset"], t["shape"]])

    def set_tensor(self, name: str, value: np.ndarray) -> None:
        self.tensor(name)[...] = value

    def get_tensor(self, name: str, grad: bool = False) -> np.ndarray:
        return self.tensor(name, grad).copy()

    def broadcast_region(self, name: str) -> None:
        """Rank 0's copy of an arena region (the parameters) to every rank."""
        self.world.bcast(self.region(name))

    def region(self, name: str) -> np.ndarray:
        start, size = self.plan.data["arena"]["regions"][name]
        return self.arenas["f"][start:start + size]

    def run(self, program: str, feeds: dict[str, np.ndarray | float]) -> dict[str, np.ndarray]:
        steps, inputs, outputs = self._programs[program]
        for name, view in inputs.items():
            view[...] = feeds[name]
        with np.errstate(all="ignore"):  # a diverging run is reported by the trainer, once
            self._execute(steps)
        return {k: v.copy() for k, v in outputs.items()}

    def _execute(self, steps: list) -> None:
        for step in steps:
            if isinstance(step, list):  # a bucket of gradients to average over the ranks
                off, n = step
                self.world.allreduce_mean(self.arenas["f"][off:off + n])
            else:
                ref, attrs, ins, out = step
                out[...] = ref(attrs, *ins)

    def enqueue(self, program: str, feeds: dict) -> Finished:
        return Finished(self.run(program, feeds))
