"""The NumPy backend: runs a plan launch by launch with each op's NumPy reference (a family's
reference.py, gathered in graphgpt/numpy_ops).

It is the oracle every other backend is checked against. All tensors are views into one byte
arena at the offsets the memory plan chose, so the plan's aliasing and in-place updates are
exercised exactly as on the GPU. Like a kernel, a launch reads its operands as float32, computes
and rounds once, as it stores into its output's dtype (bf16 through ml_dtypes, to nearest even).
For tests, float32 may run as float64: every offset is then doubled, so each float32 slot has
room for a float64, and the other types keep their size with every element at its doubled offset
(a bf16 tensor is a view with a stride of 4 bytes), so a launch joined over several tensors
(passes/multi_tensor.py) finds each element where it would be on the GPU.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from ..dtypes import DTYPES, nbytes, numel, padded
from ..numpy_ops import BY_OP
from ..plan import Buffer, Plan, Program
from . import check_arena_fits
from .dist import SingleWorld
from .weight_copies import WeightCopies


def _extend(bucket: list | None, off: int, n: int) -> list:
    """Grow a bucket [offset, bytes] by an adjacent slot (backwards order is the usual one).
    Slots are padded to the arena's alignment; the padding is reduced along, harmlessly."""
    if bucket is not None and off + n == bucket[0]:
        bucket[0], bucket[1] = off, bucket[1] + n
        return bucket
    if bucket is not None and bucket[0] + bucket[1] == off:
        bucket[1] += n
        return bucket
    return [off, n]


def _reuse_freed_memory() -> None:
    """Every large temporary of a launch is a fresh mmap that its first writes fault in page by
    page, and which free() unmaps again: most of a step's time where page faults are dear (a
    sandboxed CI machine). Glibc's heap, told never to map and never to trim, hands the freed
    blocks to the next launch instead. Other C libraries keep their defaults."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(-4, 0)  # M_MMAP_MAX
        mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD


class Finished:
    """The NumPy backend computes while enqueueing: its results are ready at once."""

    def __init__(self, outputs: dict):
        self.outputs = outputs

    def result(self) -> dict[str, np.ndarray]:
        return self.outputs


class NumpyBackend(WeightCopies):
    name = "numpy"
    pipeline_depth = 0  # synchronous: nothing to overlap

    def __init__(self, plan: Plan, dtype=np.float32, world=None):
        _reuse_freed_memory()
        self.plan, self.dtype, self.world = plan, np.dtype(dtype), world or SingleWorld()
        self.scale = self.dtype.itemsize // DTYPES["f32"].bytes  # 2 when float32 runs as float64
        self.compute = np.float32 if self.scale == 1 else self.dtype
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        check_arena_fits(plan.data["arena"]["bytes"] * self.scale, memory, "this machine's memory")
        self.arena = np.zeros(plan.data["arena"]["bytes"] * self.scale, np.uint8)
        self.align = plan.data["arena"]["align"]
        consts = plan.data["consts"]
        for off, value in consts["values"]:
            self.view(Buffer(consts["dtype"], off, ()))[...] = value
        for buf, values in plan.constant_buffers():  # computed in float64, stored as float32
            self.view(buf)[...] = values
        self._programs = {name: self._bind(prog) for name, prog in plan.programs.items()}

    def host_dtype(self, name: str) -> np.dtype:
        return self.dtype if name == "f32" else DTYPES[name].numpy

    def view(self, buf: Buffer) -> np.ndarray:
        dt, step = self.host_dtype(buf.dtype), DTYPES[buf.dtype].bytes * self.scale  # bytes from one element to the next
        start = buf.offset * self.scale
        flat = self.arena[start:start + numel(buf.shape) * step].view(dt)
        return (flat if step == dt.itemsize else flat[::step // dt.itemsize]).reshape(buf.shape)

    def _bind(self, prog: Program):
        steps, bucket = [], None  # bucket: [offset, bytes] of adjacent gradients reduced together
        for launch in prog.launches:
            if launch.kind == "collective":
                if self.world.size == 1:
                    continue  # one process: the mean over ranks is the identity
                name, off = launch.out.dtype, launch.out.offset
                slot = padded(nbytes(launch.out), self.align)
                last = steps[-1] if steps and steps[-1][0] == "allreduce" and steps[-1][1] == name else None
                bucket = _extend(last[2] if last else None, off, slot)
                if last is None or last[2] is not bucket:
                    steps.append(("allreduce", name, bucket))
                continue
            ins = [self.view(b) for b in launch.ins]
            widen = [i for i, b in enumerate(launch.ins) if b.dtype != "f32" and DTYPES[b.dtype].is_float]
            outs = [self.view(b) for b in launch.outputs]
            steps.append(("launch", BY_OP[launch.op], launch.attrs, ins, widen, outs))
        inputs = {k: self.view(b) for k, b in prog.inputs.items()}
        outputs = {k: self.view(b) for k, b in prog.outputs.items()}
        return steps, inputs, outputs

    # ---- the backend interface the trainer uses ----------------------------------------------
    def tensor(self, name: str, grad: bool = False) -> np.ndarray:
        """A persistent tensor (parameter, its gradient, optimizer state) as a live view."""
        t = next(t for t in self.plan.tensors if t["name"] == name)
        return self.view(Buffer.of_tensor(t, grad))

    def set_tensor(self, name: str, value: np.ndarray) -> None:
        self.tensor(name)[...] = value
        self.weights_written(name)

    def get_tensor(self, name: str, grad: bool = False) -> np.ndarray:
        return self.tensor(name, grad).copy()

    def broadcast_region(self, name: str) -> None:
        """Rank 0's copy of an arena region (the parameters) to every rank."""
        self.world.bcast(self.region(name))
        if name == "params":
            self.weights_written()

    def region(self, name: str) -> np.ndarray:
        """A region of float32 tensors (params, grads, state) as one flat array."""
        start, size = self.plan.data["arena"]["regions"][name]
        return self.view(Buffer("f32", start, (size // DTYPES["f32"].bytes,)))

    def run(self, program: str, feeds: dict[str, np.ndarray | float], fetch=None) -> dict[str, np.ndarray]:
        """Run `program`; its outputs, or those named in `fetch`."""
        self.refresh_copies(program)
        steps, inputs, outputs = self._programs[program]
        for name, view in inputs.items():
            view[...] = feeds[name]
        with np.errstate(all="ignore"):  # a diverging run is reported by the trainer, once
            self._execute(steps)
        return {k: outputs[k].copy() for k in (fetch or outputs)}

    def _execute(self, steps: list) -> None:
        for step in steps:
            if step[0] == "allreduce":  # a bucket of gradients to average over the ranks
                _, name, (off, n) = step
                self.world.allreduce_mean(self.view(Buffer(name, off, (n // DTYPES[name].bytes,))))
            else:
                _, ref, attrs, ins, widen, outs = step
                if widen:  # narrow floats are read as float32, as a kernel loads them
                    ins = [x.astype(self.compute) if i in widen else x for i, x in enumerate(ins)]
                result = ref(attrs, *ins)
                for out, value in zip(outs, result if len(outs) > 1 else (result,)):
                    out[...] = value

    def enqueue(self, program: str, feeds: dict, fetch=None) -> Finished:
        return Finished(self.run(program, feeds, fetch))
