"""A chain of pointwise ops run as one: what the fusion pass makes of elementwise subgraphs.

attrs["program"] is a tuple of steps (op, attrs, args); an arg k >= 0 names the result of step
k, an arg -1 - i names external input i. The last step is the result. Its shape rule, reference
and (on the GPU) code are those of its steps, in order, so a fused node computes bit for bit what
the nodes it replaces computed. With attrs["perm"] the chain's result is written transposed (a
transpose that read the chain, possibly through a reshape to attrs["shape"], is folded into it):
the kernel reads its operands in the output's order, so the chain's result is never written in
its own layout.

`fused_multi` is a chain with several results, each an output of its own: attrs["results"] names
the steps they are. The fusion pass makes one of the new values of persistent state that read one
another (Adam's moments, the weight and its bf16 copy), so one kernel reads what they read once
and writes them all.

`fused_sum` is a `sum` whose input is such a chain (its "prologue"): the kernel evaluates the
program per element where a `sum` loads its input, so the pointwise result never goes to memory.
attrs: the program, and the `axes` and `keepdims` of the sum. With attrs["results"] it sums
several of the program's values over the same axes, each an output of its own (a step k >= 0,
or an external input -1 - i, as a step's args name them): the fusion pass makes one of
LayerNorm's two parameter gradients, sum(g) and sum(g * xhat), so g is read once for both.
"""
from __future__ import annotations

from ..numpy_ops import run_program
from .registry import REGISTRY, Op, Reduction, Spec, any_input, register


def step_specs(attrs, specs) -> list[Spec]:
    """The spec of every step of attrs["program"] over these input specs."""
    return run_program(attrs["program"], specs, lambda op, a, ins: REGISTRY[op].infer(a, *ins))


def _infer(attrs, *specs: Spec) -> Spec:
    spec = step_specs(attrs, specs)[-1]
    if "shape" in attrs:
        spec = REGISTRY["reshape"].infer({"shape": attrs["shape"]}, spec)
    if "perm" in attrs:
        spec = REGISTRY["transpose"].infer({"perm": attrs["perm"]}, spec)
    return spec


def _overwrites(attrs: dict, n_inputs: int):
    """Any input, as for its steps, unless the chain stores transposed: then a thread writes
    elements that other threads have still to read."""
    return () if "perm" in attrs else any_input(attrs, n_inputs)


register(Op("fused", "elementwise", _infer,
            nondiff="made by the fusion pass, which runs after autodiff", template="elementwise",
            overwrites=_overwrites))


def _multi_infer(attrs, *specs: Spec) -> list[Spec]:
    steps = step_specs(attrs, specs)
    return [steps[r] for r in attrs["results"]]


def _multi_overwrites(attrs: dict, n_inputs: int):
    """Any result over any input: a thread reads all of an element's operands before it writes."""
    return tuple((k, i) for k in range(len(attrs["results"])) for i in range(n_inputs))


register(Op("fused_multi", "elementwise", _multi_infer,
            nondiff="made by the fusion pass, which runs after autodiff", template="elementwise",
            overwrites=_multi_overwrites))


def _sum_infer(attrs, *specs: Spec) -> Spec | list[Spec]:
    if "results" not in attrs:
        return REGISTRY["sum"].infer(attrs, _infer(attrs, *specs))
    steps = step_specs(attrs, specs)
    return [REGISTRY["sum"].infer(attrs, steps[r] if r >= 0 else specs[-1 - r]) for r in attrs["results"]]



register(Op("fused_sum", "reduction", _sum_infer,
            nondiff="made by the fusion pass, which runs after autodiff", template="reduce", reduction=Reduction()))
