"""Pointwise ops and fused chains of them (elementwise.cu.j2): every step is
evaluated per element in registers, operands read vector-wise, splatted or gathered; a chain with
several results (fused_multi) stores each.
"""
from __future__ import annotations

from ...dtypes import DTYPES
from ...kernels.common import (Kernel, aligned_for, broadcast_shape, broadcast_strides, collapse, index_type,
                               operand, reshaped_strides, streaming, types, width)
from ...numpy_ops.base import run_program
from ...ops import REGISTRY
from ...ops.registry import prod
from ...target import Target


def lower(launch, target: Target) -> Kernel:
    """A pointwise op, or a fused chain of them: every step is evaluated per element in registers."""
    out = launch.out
    shape = out.shape
    perm = launch.attrs.get("perm")
    if perm is None:
        extents, strides = collapse(shape, *(broadcast_strides(b.shape, shape) for b in launch.ins))
    else:  # the chain's result is written reshaped and transposed: operand strides in the output's order
        chain = broadcast_shape(*(b.shape for b in launch.ins))
        view = launch.attrs.get("shape", chain)
        operand_strides = [reshaped_strides(chain, broadcast_strides(b.shape, chain), view) for b in launch.ins]
        extents, strides = collapse(shape, *([st[p] for p in perm] for st in operand_strides))
    outs = launch.outputs  # fused_multi: one output per result, all of the same shape
    n, w = prod(shape), width(*outs, *launch.ins)
    vec = w if n % w == 0 and aligned_for(w, *outs) and (not extents or extents[-1] % w == 0) else 1
    grid, block = streaming(n // vec)
    operands = [operand(extents, st, b, vec) for st, b in zip(strides, launch.ins)]
    results = launch.attrs.get("results", [len(steps(launch)) - 1])
    return Kernel(launch.op, {**types(launch), "steps": steps(launch), "n": n, "vec": vec, "operands": operands,
                                 "results": [result(b, r) for b, r in zip(outs, results)],
                                 "itype": index_type(shape, *(b.shape for b in launch.ins)), "threads": block[0]},
                  grid, block)


def result(buffer, ref: int) -> dict:
    """A program's result stored in `buffer`: its C type, and its value per element c (a step k >= 0,
    or external input -1 - i)."""
    return {"t": DTYPES[buffer.dtype].ctype, "value": f"s{ref}" if ref >= 0 else f"x{-1 - ref}.v[c]"}


def steps(launch) -> list[dict]:
    """The op's C expressions in evaluation order; an argument is operand "x<i>" or step "s<k>"."""
    program = launch.attrs["program"] if "program" in launch.attrs else \
        [[launch.op, launch.attrs, [-1 - i for i in range(len(launch.ins))]]]
    steps = []

    def step(op, attrs, args) -> str:
        expr = REGISTRY[op].c_expr(attrs)
        if expr is None:
            raise ValueError(f"op {op} in a pointwise kernel has no C expression in its registry entry")
        steps.append({"op": op, "expr": expr, "args": args})
        return f"s{len(steps) - 1}"  # the variable later steps read it from
    run_program(program, [f"x{i}" for i in range(len(launch.ins))], step)
    return steps
