"""Gradient clipping and the optimizer update as graph ops; the learning rate as runtime scalars.

A plan trains in one of two shapes, built from the same two parts:
- `grad_accum=1`: one program, `add_training`: the gradients of every parameter (autodiff) land in
  their slots of the gradient region (`graph.grads`), then `add_update` averages them over the
  data-parallel ranks, takes their global norm, clips and updates parameters and optimizer state
  (recorded in `graph.updates`, applied in place by the memory plan).
- `grad_accum=K>1`: `add_accumulation` folds one micro-batch's gradients into accumulators that
  live in those same gradient slots, and `update_program` is `add_update` over the accumulators,
  run once after K micro-batches.
Anything that changes from step to step (learning rate, bias correction, whether a micro-batch is
a step's first) is a scalar graph input, so one compiled program serves every step; the run side
computes their values (schedule.py) and feeds them by the names the plan declares.
"""
from __future__ import annotations

from typing import Callable

from . import autodiff
from .errors import UserError
from .ir import Graph, Node, Value
from .schedule import (IN_FLOAT32, NORMAL_FLOAT32, POSITIVE_IN_FLOAT32, check_schedule, finite, integer, positive,
                       requirement)

# The seed's optimizer: Adam(0.9, 0.95, 1e-8), no weight decay, linear decay 1e-4 -> 1e-5 over
# 10k steps, global-norm clipping at 1.0. AdamW with warmup + cosine is the alternative.
DEFAULTS = dict(
    optimizer="adam",        # adam | adamw
    lr=1e-4,
    min_lr=1e-5,
    lr_schedule="linear",    # linear (the seed's linear_lr_decay) | cosine; both after a linear warmup
    decay_steps=10000,
    warmup_steps=0,
    beta1=0.9,
    beta2=0.95,
    eps=1e-8,
    weight_decay=0.0,        # adamw only; applied to tensors of rank >= 2
    grad_clip=1.0,           # 0 disables clipping
    grad_accum=1,            # micro-batches of batch_size rows per update
)

ACCUMULATE = "accumulate"  # the accumulating program's flag input: 0.0 on a step's first micro-batch


def check(cfg: dict, origin: Callable[[str], str] | None = None) -> None:
    """Refuse optimizer settings outside their range (every float must be finite in float32, the
    type the update computes in)."""
    need = requirement(cfg, origin)
    need("optimizer", cfg["optimizer"] in ("adam", "adamw"), "adam or adamw")
    check_schedule(cfg, origin)
    for key in ("beta1", "beta2"):
        need(key, finite(cfg[key]) and 0 <= cfg[key] < 1, "a finite number in [0, 1)")
    need("eps", positive(cfg["eps"]), f"a finite number > 0 {POSITIVE_IN_FLOAT32}")
    clip = cfg["grad_clip"]
    need("grad_clip", finite(clip) and (clip == 0 or positive(clip)),
         f"a finite number >= 0 (0 disables clipping; a threshold in {NORMAL_FLOAT32})")
    need("weight_decay", finite(cfg["weight_decay"]) and cfg["weight_decay"] >= 0, f"a finite number >= 0 {IN_FLOAT32}")
    need("grad_accum", integer(cfg["grad_accum"]) and cfg["grad_accum"] >= 1, "an integer >= 1")
    if cfg["optimizer"] == "adam" and cfg["weight_decay"]:
        raise UserError("weight_decay needs optimizer=adamw (the seed's Adam has none)")


def scalar_inputs(cfg: dict) -> tuple[str, ...]:
    return ("step_size",) if cfg["optimizer"] == "adam" else ("lr", "bias1", "bias2")


def add_training(graph: Graph, loss: Value, cfg: dict) -> None:
    """One program per step: gradients into the gradient region, then the update."""
    params, grads = _gradients(graph, loss)
    graph.grads = {p: g.id for p, g in grads.items()}
    add_update(graph, params, grads, cfg)


def add_accumulation(graph: Graph, loss: Value, cfg: dict) -> None:
    """One micro-batch of K: acc = acc * accumulate + g / K for every parameter's accumulator, in
    place. The flag input `accumulate` is 0.0 on a step's first micro-batch, which overwrites what
    the last step left, and 1.0 on the others."""
    params, grads = _gradients(graph, loss)
    graph.locate = lambda: "gradient accumulation"
    flag = graph.add("input", name=ACCUMULATE, shape=(), dtype="f32")
    share = 1.0 / cfg["grad_accum"]
    for p in params:
        acc = accumulator(graph, p.node)
        graph.updates[acc.id] = (acc * flag + grads[p.id] * share).id
    graph.locate = None


def update_program(params: list[Node], cfg: dict) -> Graph:
    """The update of an accumulating plan, as its own program: `add_update` over the accumulators."""
    graph = Graph()
    ps = [graph.add("param", **p.attr) for p in params]
    add_update(graph, ps, {p.id: accumulator(graph, p.node) for p in ps}, cfg)
    return graph


def accumulator(graph: Graph, param: Node) -> Value:
    """The state that sums a parameter's gradient over micro-batches. `grad_of` places it in the
    parameter's gradient slot (passes/memory.py), where the update reads gradients in every plan."""
    return graph.add("state", name=f"grad_acc.{param.name}", shape=param.shape, dtype="f32", grad_of=param.name)


def _gradients(graph: Graph, loss: Value) -> tuple[list[Value], dict[int, Value]]:
    params = [graph.value(i) for i in graph.param_ids()]
    return params, autodiff.grad(graph, loss, [p.id for p in params])


def _decayed(param: Value, cfg: dict) -> bool:
    """AdamW's weight decay applies to tensors of rank >= 2 (nanoGPT's rule)."""
    return cfg["optimizer"] == "adamw" and bool(cfg["weight_decay"]) and param.ndim >= 2


def add_update(graph: Graph, params: list[Value], grads: dict[int, Value], cfg: dict) -> None:
    """Average the gradients over the ranks, clip them by their global norm, apply Adam/AdamW."""
    graph.locate = lambda: "optimizer"
    # The parameters that take the same update one after another: the decayed ones first, then the
    # rest, each group in the model's order. Parameters and gradients are laid out in the order they
    # are updated here (passes/memory.py), and the states of a kind are created, laid out and
    # updated in it (all m, then all v), so each group's update runs as one multi-tensor launch
    # (passes/multi_tensor.py), and the gradient norm sums the gradients in it, one range.
    params = sorted(params, key=lambda p: not _decayed(p, cfg))
    # Data-parallel ranks average their gradients here; in one process this is a no-op.
    grads = {p: graph.add("allreduce_mean", (g,)) for p, g in grads.items()}
    norm = graph.add("sqrt", (graph.add("sum_squares", tuple(grads[p.id] for p in params)),))
    graph.outputs["grad_norm"] = norm.id
    scale = None
    if cfg["grad_clip"] > 0:  # scale = clip / max(norm, clip): 1 below the threshold
        clip = graph.const(cfg["grad_clip"])
        scale = clip / graph.add("maximum", (norm, clip))
    scalars = {name: graph.add("input", name=name, shape=(), dtype="f32") for name in scalar_inputs(cfg)}
    b1, b2, eps = cfg["beta1"], cfg["beta2"], cfg["eps"]
    ms = {p.id: graph.add("state", name=f"adam.m.{p.node.name}", shape=p.shape, dtype="f32") for p in params}
    vs = {p.id: graph.add("state", name=f"adam.v.{p.node.name}", shape=p.shape, dtype="f32") for p in params}

    gs = {p.id: grads[p.id] * scale if scale is not None else grads[p.id] for p in params}
    # Each new value reads its old value last, so the memory plan can update it in place.
    m_news = {p.id: ms[p.id] + (gs[p.id] - ms[p.id]) * (1.0 - b1) for p in params}
    v_news = {p.id: vs[p.id] + (gs[p.id] * gs[p.id] - vs[p.id]) * (1.0 - b2) for p in params}
    for p in params:
        m, v, m_new, v_new = ms[p.id], vs[p.id], m_news[p.id], v_news[p.id]
        if cfg["optimizer"] == "adam":
            step = (m_new * scalars["step_size"]) / (graph.add("sqrt", (v_new,)) + eps)
        else:
            m_hat = m_new * scalars["bias1"]
            denom = graph.add("sqrt", (v_new,)) * scalars["bias2"] + eps
            step = m_hat / denom
            if _decayed(p, cfg):
                step = step + p * cfg["weight_decay"]
            step = step * scalars["lr"]
        graph.updates[p.id] = (p - step).id
        graph.updates[m.id], graph.updates[v.id] = m_new.id, v_new.id
    graph.locate = None
