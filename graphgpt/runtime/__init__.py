"""Backends that execute a plan: NumPy (the reference, anywhere) and CUDA (NVIDIA GPUs)."""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..plan import Plan


def cuda_available() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean "no"
        return False


class ArenaTooLarge(UserError):
    """A plan whose arena is larger than the memory it would live in."""


def check_arena_fits(nbytes: int, memory: int, where: str) -> None:
    """Refuse, before allocating it, an arena larger than the memory it would live in."""
    if nbytes > memory:
        raise ArenaTooLarge(f"the plan's arena needs {nbytes / 2**30:,.2f} GiB, more than the "
                            f"{memory / 2**30:,.2f} GiB of {where}: it cannot run here")


def check_architecture(nvrtc_options: list[str], capability: str) -> None:
    """Refuse a GPU (compute capability `capability`: '90' for Hopper) whose architecture is not
    the one whose own instructions the plan's kernels use (an NVRTC option naming it, such as
    `--gpu-architecture=sm_90a` for Hopper's warpgroup products): they would not load."""
    for option in nvrtc_options:
        if option.startswith("--gpu-architecture="):
            arch = option.split("=", 1)[1]
            if arch.removeprefix("sm_").rstrip("a") != capability:
                raise UserError(f"the plan's kernels use instructions that only {arch} GPUs run, and this GPU "
                                f"is sm_{capability}: run the plan on an {arch} GPU, or compile a float32 plan for this one")


def target_mismatch(target: dict, sms: int) -> str | None:
    """A line saying so when the GPU's `sms` streaming multiprocessors are not those the plan's
    kernels were sized for (the plan still runs: only its grids fill this GPU less evenly)."""
    if sms == target["sms"]:
        return None
    return (f"warning: the plan's kernels are sized for target {target['name']} ({target['sms']} SMs); this GPU has "
            f"{sms} SMs: the plan runs, its grids spread less evenly over them")


def make_backend(name: str, plan: Plan, dtype=np.float32, graph: bool = True, tf32: bool = False, world=None):
    """'auto' takes the GPU when CuPy sees one, else NumPy. `graph` and `tf32` apply to CUDA;
    rank r of a data-parallel world uses GPU r % device_count."""
    if name == "auto":
        name = "cuda" if cuda_available() else "numpy"
    if name == "numpy":
        from .numpy_backend import NumpyBackend
        return NumpyBackend(plan, dtype, world)
    if name == "cuda":
        if not cuda_available():
            raise UserError("--backend cuda needs CuPy and an NVIDIA GPU (pip install -e '.[cuda13]'); "
                            "use --backend numpy")
        try:
            from .cuda_backend import CudaBackend
        except ImportError:
            raise UserError("this graphgpt has no CUDA backend yet; use --backend numpy") from None
        return CudaBackend(plan, graph=graph, tf32=tf32, world=world)
    raise UserError(f"unknown backend '{name}' (auto, numpy or cuda)")
