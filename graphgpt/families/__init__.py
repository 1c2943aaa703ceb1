"""The kernel families, a directory each. A family's registry entries (ops.py), the NumPy
references of its ops (reference.py), its lowering of a launch to a kernel (lowering.py) and its
CUDA template (<family>.cu.j2) stand together; common.cu.j2 holds the device code every template
shares. A new family is a new directory: `NAMES` finds it.

The two halves read different parts of a family: the compiler its entries and lowering, the runtime
only its references. So importing this package imports no family; `load` imports one part of every
family, for the packages that gather them (ops, numpy_ops, codegen).
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

DIRECTORY = Path(__file__).resolve().parent
NAMES = tuple(sorted(m.name for m in pkgutil.iter_modules([str(DIRECTORY)]) if m.ispkg))
PARTS = ("ops", "reference", "lowering")


def load(part: str) -> dict[str, ModuleType]:
    """Every family's `part` module (one of PARTS), imported, by family name."""
    assert part in PARTS, part
    return {name: importlib.import_module(f"{__name__}.{name}.{part}") for name in NAMES}


def filled_when_asked(package: str, name: str, table: dict, own: tuple[str, ...], part: str) -> Callable:
    """The module `__getattr__` of a package whose `table` the families' `part` modules (and the
    package's `own` modules) fill: it imports them when `name` is first asked for. A family's module
    imports the package that holds its table, so filling it while the package loads would import
    the family inside itself whenever that family's module is the first one imported."""
    def __getattr__(attr: str):
        if attr != name:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        for module in own:
            importlib.import_module(f"{package}.{module}")
        load(part)
        setattr(sys.modules[package], name, table)
        return table
    return __getattr__
