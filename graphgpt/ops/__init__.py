"""Importing this package registers every op; `REGISTRY` maps op names to their rules.

A kernel family's ops are registered by the module of its name, beside its lowering
(kernels/<family>.py) and its template (templates/<family>.cu.j2); fused.py holds the chains the
fusion pass makes, and matmul, collective, source and outputs the ops no template renders. A
forward op keeps its derivative as one dedicated op (`*_grad`) rather than a chain of elementwise
nodes, so the backward stays readable in the graph dumps and gets one kernel; backward-only ops
are never differentiated again and carry no VJP."""
# one module per kernel family (its template's name), and the ops no template renders
from . import (argmax, attention, collective, cross_entropy, dropout, elementwise, embedding, fused,  # noqa: F401
               kv_cache, layernorm, matmul, outputs, reduce, rotary, shape, softmax, source)  # (registration)
from .registry import REGISTRY, Op, ShapeMismatch, Spec

__all__ = ["REGISTRY", "Op", "ShapeMismatch", "Spec"]
