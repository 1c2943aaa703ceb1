"""What every op computes, in NumPy: the references the op registry names and the NumPy backend runs.

Both halves read this module and nothing else of each other: the compiler's registry (ops/) points
each op's `ref` here, and the NumPy backend looks a launch's op up in `BY_OP`, so the runtime
executes a plan knowing nothing of the compiler. Each function takes the op's attrs and its input
arrays and returns its output (a tuple for an op with several). They compute in the float type
they are given: float32, or float64 in tests (a backend reads narrower floats as float32 first).

One module per kernel family, as ops/ registers them (numpy_ops/rotary.py beside ops/rotary.py,
kernels/rotary.py and templates/rotary.cu.j2); importing the package fills `BY_OP`.
"""
from . import (argmax, attention, cross_entropy, dropout, elementwise, embedding, kv_cache,  # noqa: F401
               layernorm, matmul, outputs, reduce, rotary, shape, softmax)  # (registration)
from .base import BY_OP, reference, run_program
from .dropout import drop_threshold, keep_mask, keep_scale, philox4x32_10
from .elementwise import GELU_C

__all__ = ["BY_OP", "GELU_C", "drop_threshold", "keep_mask", "keep_scale", "philox4x32_10", "reference", "run_program"]
