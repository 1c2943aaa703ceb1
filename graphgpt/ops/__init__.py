"""The op registry; `REGISTRY` maps op names to their rules.

A kernel family registers its ops in its directory (graphgpt/families/<family>/ops.py), beside their
references, its lowering and its template; this package holds the registry itself, fused.py with
the chains the fusion pass makes, and matmul, collective, source and outputs, the ops no template
renders. A forward op keeps its derivative as one dedicated op (`*_grad`) rather than a chain of
elementwise nodes, so the backward stays readable in the graph dumps and gets one kernel;
backward-only ops are never differentiated again and carry no VJP."""
from __future__ import annotations

from .. import families
from .registry import REGISTRY as _REGISTRY
from .registry import Op, ShapeMismatch, Spec

# REGISTRY, with every op registered: the families' entries, and those of this package
__getattr__ = families.filled_when_asked(__name__, "REGISTRY", _REGISTRY,
                                         ("collective", "fused", "matmul", "outputs", "source"), "ops")

__all__ = ["REGISTRY", "Op", "ShapeMismatch", "Spec"]
