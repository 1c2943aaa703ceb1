"""The kernel families: one module per template in templates/, each turning one launch of the plan
into a Kernel (the template's parameters, its launch geometry and dynamic shared memory) with its
`lower(launch, target)`, for the device the plan is compiled for (graphgpt/target.py).

A new kernel touches its op's registry entry (which names the family), its family module here and
its template, and nothing else: every module of this package but common.py and gemm.py is a
family, found by its name. codegen.py renders and names whatever the families return. GEMMs are no
template's: gemm.py lowers them to cuBLAS and cuBLASLt calls.
"""
from __future__ import annotations

import importlib
import pkgutil

from .common import Kernel

NOT_FAMILIES = ("common", "gemm")
FAMILIES = {name: importlib.import_module(f"{__name__}.{name}").lower
            for name in sorted(m.name for m in pkgutil.iter_modules(__path__)) if name not in NOT_FAMILIES}

__all__ = ["FAMILIES", "Kernel"]
