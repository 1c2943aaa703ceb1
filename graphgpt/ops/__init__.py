"""Importing this package registers every op; `REGISTRY` maps op names to their rules."""
from . import collective, elementwise, fused, matmul, nn, outputs, reduce, shape, source  # noqa: F401  (registration)
from .registry import REGISTRY, Op, ShapeMismatch, Spec

__all__ = ["REGISTRY", "Op", "ShapeMismatch", "Spec"]
