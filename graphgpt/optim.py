"""Gradient clipping and the optimizer update as graph ops; the learning rate as runtime scalars.

`add_training` turns a forward graph with a scalar loss into the joint training graph: gradients
of every parameter (autodiff), their global norm, clipping, and the update of parameters and
optimizer state (recorded in `graph.updates`, applied in place by the memory plan). Anything that
changes from step to step (learning rate, bias correction) is a scalar graph input that the
trainer fills from `step_scalars`, so one compiled step serves every step of the schedule.
"""
from __future__ import annotations

import math

from . import autodiff
from .errors import UserError
from .ir import Graph, Value

# The seed's optimizer: Adam(0.9, 0.95, 1e-8), no weight decay, linear decay 1e-4 -> 1e-5 over
# 10k steps, global-norm clipping at 1.0. AdamW with warmup + cosine is the alternative.
DEFAULTS = dict(
    optimizer="adam",        # adam | adamw
    lr=1e-4,
    min_lr=1e-5,
    lr_schedule="linear",    # linear (the seed's linear_lr_decay) | cosine (linear warmup, cosine decay)
    decay_steps=10000,
    warmup_steps=0,
    beta1=0.9,
    beta2=0.95,
    eps=1e-8,
    weight_decay=0.0,        # adamw only; applied to tensors of rank >= 2
    grad_clip=1.0,           # 0 disables clipping
)


def check(cfg: dict) -> None:
    if cfg["optimizer"] not in ("adam", "adamw"):
        raise UserError(f"optimizer must be adam or adamw, not '{cfg['optimizer']}'")
    if cfg["lr_schedule"] not in ("linear", "cosine"):
        raise UserError(f"lr_schedule must be linear or cosine, not '{cfg['lr_schedule']}'")
    if cfg["optimizer"] == "adam" and cfg["weight_decay"]:
        raise UserError("weight_decay needs optimizer=adamw (the seed's Adam has none)")


def scalar_inputs(cfg: dict) -> tuple[str, ...]:
    return ("step_size",) if cfg["optimizer"] == "adam" else ("lr", "bias1", "bias2")


def add_training(graph: Graph, loss: Value, cfg: dict) -> None:
    params = [graph.value(i) for i in graph.param_ids()]
    grads = autodiff.grad(graph, loss, [p.id for p in params])
    graph.locate = lambda: "optimizer"
    graph.grads = {p: g.id for p, g in grads.items()}
    # Data-parallel ranks average their gradients here; in one process this is a no-op.
    grads = {p: graph.add("allreduce_mean", (g,)) for p, g in grads.items()}
    norm = graph.add("sqrt", (graph.add("sum_squares", tuple(grads.values())),))
    graph.outputs["loss"], graph.outputs["grad_norm"] = loss.id, norm.id
    scale = None
    if cfg["grad_clip"] > 0:  # scale = clip / max(norm, clip): 1 below the threshold
        clip = graph.const(cfg["grad_clip"])
        scale = clip / graph.add("maximum", (norm, clip))
    scalars = {name: graph.add("input", name=name, shape=(), dtype="f32") for name in scalar_inputs(cfg)}
    b1, b2, eps = cfg["beta1"], cfg["beta2"], cfg["eps"]
    # One kind of value at a time, over all parameters (all m, then all v, then the parameters): the
    # states of a kind are created, laid out and updated in parameter order, so each kind's update
    # runs as one multi-tensor launch (passes/multi_tensor.py).
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
            if cfg["weight_decay"] and p.ndim >= 2:
                step = step + p * cfg["weight_decay"]
            step = step * scalars["lr"]
        graph.updates[p.id] = (p - step).id
        graph.updates[m.id], graph.updates[v.id] = m_new.id, v_new.id
    graph.locate = None


def lr_at(cfg: dict, t: int) -> float:
    """Learning rate for the update that follows `t` earlier updates."""
    lr, min_lr, n = cfg["lr"], cfg["min_lr"], cfg["decay_steps"]
    if cfg["lr_schedule"] == "linear":  # the seed's linear_lr_decay
        return lr - (lr - min_lr) * t / n if t < n else min_lr
    warmup = cfg["warmup_steps"]
    if t < warmup:
        return lr * (t + 1) / warmup
    if t >= n:
        return min_lr
    progress = (t - warmup) / max(1, n - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def step_scalars(cfg: dict, t: int) -> dict[str, float]:
    """The runtime scalars of update number t+1 (t updates done), plus 'lr' for logging."""
    lr = lr_at(cfg, t)
    t += 1  # the seed increments its step counter before the bias correction
    c1, c2 = 1.0 - cfg["beta1"] ** t, 1.0 - cfg["beta2"] ** t
    if cfg["optimizer"] == "adam":
        return {"lr": lr, "step_size": lr * math.sqrt(c2) / c1}
    return {"lr": lr, "bias1": 1.0 / c1, "bias2": 1.0 / math.sqrt(c2)}
