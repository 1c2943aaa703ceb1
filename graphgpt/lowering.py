"""Lowering: the planned programs' launches to what a backend runs, one stage after the graph
passes. Neighbouring launches that can run as one are joined (passes/multi_tensor.py), matrix
products become cuBLAS(Lt) calls (kernels/gemm.py), every other launch a kernel rendered from its
family's template for the target (codegen.py), and each launch gets its stream and the launches it
waits for (passes/streams.py), once the kernels and their scratch are known."""
from __future__ import annotations

from dataclasses import replace

from . import codegen
from .kernels.gemm import lower_matmul
from .ops import REGISTRY
from .passes.multi_tensor import merge_launches
from .passes.streams import assign_streams
from .target import Target


def lower(data: dict, target: Target, join: bool) -> dict[str, str]:
    """Lower every program of plan.json's `data` (its "programs" replaced by the lowered ones;
    with `join`, neighbouring launches joined first); returns the kernel files
    {"kernels/<family>.cu": source}."""
    work_start = data["arena"]["regions"]["work"][0]
    programs = data["programs"]
    for name, program in programs.items():
        launches = merge_launches(program.launches, work_start) if join else program.launches
        programs[name] = replace(program, launches=tuple(
            replace(launch, cuda=lower_matmul(launch)) if REGISTRY[launch.op].kind == "matmul" else launch
            for launch in launches))
    files = codegen.lower_plan(data, target)
    for name, program in programs.items():  # after the kernels: a kernel's launches share its scratch
        programs[name] = assign_streams(program, data["arena"]["regions"]["grads"])
    return files
