"""The NumPy backend: runs a plan launch by launch with each op's reference implementation.

It is the oracle every other backend is checked against. All tensors are views into two flat
arenas (float and int32) at the offsets the memory plan chose, so the plan's aliasing and
in-place updates are exercised exactly as on the GPU. Floats are float32, or float64 for tests.
"""
from __future__ import annotations

import numpy as np

from ..ops import REGISTRY
from ..plan import Plan


class Finished:
    """The NumPy backend computes while enqueueing: its results are ready at once."""

    def __init__(self, outputs: dict):
        self.outputs = outputs

    def result(self) -> dict[str, np.ndarray]:
        return self.outputs


class NumpyBackend:
    name = "numpy"
    pipeline_depth = 0  # synchronous: nothing to overlap

    def __init__(self, plan: Plan, dtype=np.float32):
        self.plan, self.dtype = plan, np.dtype(dtype)
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
        steps = []
        for launch in prog["launches"]:
            op = REGISTRY[launch["op"]]
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

    def region(self, name: str) -> np.ndarray:
        start, size = self.plan.data["arena"]["regions"][name]
        return self.arenas["f"][start:start + size]

    def run(self, program: str, feeds: dict[str, np.ndarray | float]) -> dict[str, np.ndarray]:
        steps, inputs, outputs = self._programs[program]
        for name, view in inputs.items():
            view[...] = feeds[name]
        for ref, attrs, ins, out in steps:
            out[...] = ref(attrs, *ins)
        return {k: v.copy() for k, v in outputs.items()}

    def enqueue(self, program: str, feeds: dict) -> Finished:
        return Finished(self.run(program, feeds))
