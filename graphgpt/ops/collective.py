"""Communication across data-parallel ranks, as graph ops.

`allreduce_mean` averages a gradient over all ranks. Its meaning in one process is the identity
(that is its reference); a backend running several ranks replaces the launch with a collective
(MPI on the NumPy backend, NCCL on the GPU) and a single-process run skips it. The memory plan
runs it in place on the gradient's own slot.
"""
from __future__ import annotations

from .registry import Op, float_spec, register

register(Op("allreduce_mean", "collective", lambda a, x: float_spec(x),
            nondiff="applied to gradients after the backward pass",
            view=lambda a, x, itemsize: 0, in_place=True))
