"""Lowering: the planned programs' launches to what a backend runs, one stage after the graph
passes. Neighbouring launches that can run as one are joined (passes/multi_tensor.py), matrix
products become cuBLAS(Lt) calls (kernels/gemm.py), every other launch a kernel rendered from its
family's template for the target (codegen.py), and each launch gets its stream and the launches it
waits for (passes/streams.py), once the kernels and their scratch are known."""
from __future__ import annotations

from . import codegen
from .kernels.gemm import lower_matmul
from .ops import REGISTRY
from .passes.multi_tensor import merge_launches
from .passes.streams import assign_streams
from .target import Target


def lower(data: dict, target: Target, join: bool) -> dict[str, str]:
    """Lower every program of plan.json's `data` in place (with `join`, neighbouring launches
    joined first); returns the kernel files {"kernels/<family>.cu": source}."""
    work_start = data["arena"]["regions"]["work"][0]
    for program in data["programs"].values():
        if join:
            program["launches"] = merge_launches(program["launches"], work_start)
        for launch in program["launches"]:
            if REGISTRY[launch["op"]].kind == "matmul":
                launch["cuda"] = lower_matmul(launch)
    files = codegen.lower_plan(data, target)
    for program in data["programs"].values():  # after the kernels: a kernel's launches share its scratch
        assign_streams(program, data["arena"]["regions"]["grads"])
    return files
