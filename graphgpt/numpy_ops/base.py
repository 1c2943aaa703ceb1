"""The table of references by op name, the decorator that fills it, and the one walk of a fused
chain's program."""
from __future__ import annotations

from typing import Callable

BY_OP: dict[str, Callable] = {}


def reference(*names: str):
    """Register a function as the reference of these ops."""
    def register(fn: Callable) -> Callable:
        for name in names:
            assert name not in BY_OP, f"two references for {name}"
            BY_OP[name] = fn
        return fn
    return register


def run_program(program, inputs, step: Callable | None = None, keep=None) -> list:
    """The one walk of a fused chain's program, which the NumPy backend, the registry's shape rules
    and the pointwise kernels' code share: its steps (op, attrs, args) in order, arg k >= 0 naming
    step k's value and -1 - i input i; `step(op, attrs, args)` gives a step's value (by default its
    NumPy reference). Every step's value; given `keep` (step indices, negative from the end), each
    other value that a later step reads is dropped (None) after its last reader, so that a long
    chain over large arrays holds only the values still to be read."""
    step = step or (lambda op, attrs, args: BY_OP[op](attrs, *args))
    last_read = {}
    if keep is not None:
        kept = {k % len(program) for k in keep}
        for i, (_, _, args) in enumerate(program):
            last_read.update((a, i) for a in args if a >= 0 and a not in kept)
    values = []
    for i, (op, attrs, args) in enumerate(program):
        values.append(step(op, dict(attrs), [values[a] if a >= 0 else inputs[-1 - a] for a in args]))
        for a in args:
            if last_read.get(a) == i:
                values[a] = None
    return values
