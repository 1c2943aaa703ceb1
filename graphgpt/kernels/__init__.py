"""The kernel families: one module per template in templates/, each turning one launch of the plan
into a Kernel (the template's parameters, its launch geometry and dynamic shared memory).

A new kernel touches its op's registry entry (which names the family), its family module here and
its template, and nothing else; codegen.py renders and names whatever the families return. GEMMs
are no template's: gemm.py lowers them to cuBLAS and cuBLASLt calls.
"""
from __future__ import annotations

from . import cross_entropy, elementwise, embedding, layernorm, reduce, shape, softmax
from .common import Kernel

FAMILIES = {module.__name__.rsplit(".", 1)[-1]: module.lower
            for module in (elementwise, shape, reduce, layernorm, softmax, cross_entropy, embedding)}

__all__ = ["FAMILIES", "Kernel"]
