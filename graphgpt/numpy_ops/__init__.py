"""What every op computes, in NumPy: the references the op registry names and the NumPy backend runs.

Both halves read the references and nothing else of each other: the compiler's registry points each
op's `ref` here, and the NumPy backend looks a launch's op up in `BY_OP`, so the runtime executes a
plan knowing nothing of the compiler. Each function takes the op's attrs and its input arrays and
returns its output (a tuple for an op with several). They compute in the float type they are given:
float32, or float64 in tests (a backend reads narrower floats as float32 first).

A kernel family's references stand in its directory (graphgpt/families/<family>/reference.py); this
package holds the table they fill (base.py) and the references of the ops no template renders
(matmul, outputs).
"""
from __future__ import annotations

from .. import families
from .base import BY_OP as _BY_OP
from .base import reference, run_program

# BY_OP, with every op's reference: the families', and those of this package
__getattr__ = families.filled_when_asked(__name__, "BY_OP", _BY_OP, ("matmul", "outputs"), "reference")

__all__ = ["BY_OP", "reference", "run_program"]
