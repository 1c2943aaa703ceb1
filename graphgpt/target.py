"""The device a plan is compiled for: the facts kernel lowering sizes its grids and shared memory by.

Every kernel is rendered for one launch shape, and its grid is chosen to fill the GPU's streaming
multiprocessors (split reductions, attention's tiling and residency, the embedding gradient's
rows per block): a plan is compiled for one target, named with `tools/compile.py --target NAME`
and recorded in plan.json. It runs on any GPU that can hold it; on one with another SM count its
grids fill the SMs less evenly than planned, and the runtime says so.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

WAVES = 4  # a wave of blocks fills the SMs this many times


@dataclass(frozen=True)
class Target:
    name: str
    sms: int             # streaming multiprocessors
    smem_per_block: int  # bytes of shared memory one block may use (static and dynamic, opted in)
    smem_per_sm: int     # bytes of shared memory an SM holds for its resident blocks

    @property
    def wave(self) -> int:
        """Blocks that fill the SMs a few times: what split reductions aim for."""
        return WAVES * self.sms

    def to_json(self) -> dict:
        return asdict(self)


# Hopper: an SM has 228 KiB of shared memory, of which one block may opt in to 227.
HOPPER_SMEM = {"smem_per_block": 227 << 10, "smem_per_sm": 228 << 10}
TARGETS = {t.name: t for t in (
    Target("h100", sms=132, **HOPPER_SMEM),        # H100 SXM
    Target("h200", sms=132, **HOPPER_SMEM),
    Target("h100-pcie", sms=114, **HOPPER_SMEM),
)}
# The H100/H200 class, named as the device --device-memory assumes by default (model_size.py)
DEFAULT = TARGETS["h200"]
