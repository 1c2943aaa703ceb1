"""Keeping a bf16 plan's weight copies current on the run side.

Every program of such a plan reads the weights' copies in the compute type, and the optimizer
update writes them as it writes the weights. Anything else that writes the weights (initial
values, a checkpoint, imported weights, rank 0's broadcast) leaves them stale, so a backend
notes it and runs the plan's cast_weights program once, before the next program it runs.
"""
from __future__ import annotations

from ..plan import CAST_WEIGHTS, Plan


class WeightCopies:
    """Mixed into a backend, which calls `weights_written` after it writes weights from outside
    and `refresh_copies` before it runs a program."""
    plan: Plan
    _copies_stale = False

    _weight_names: frozenset[str] | None = None

    def weights_written(self, name: str | None = None) -> None:
        """A weight (`name`; None: all of them) was written from outside a program."""
        if self._weight_names is None:
            self._weight_names = frozenset(t["name"] for t in self.plan.params)
        if CAST_WEIGHTS in self.plan.programs and (name is None or name in self._weight_names):
            self._copies_stale = True

    def refresh_copies(self, program: str) -> None:
        if self._copies_stale and program != CAST_WEIGHTS:
            self._copies_stale = False
            self.enqueue(CAST_WEIGHTS, {})
