"""The training loop: initial weights, batches, runtime scalars, evaluation and the training state.

A step is the plan's "train" program, or, for a plan compiled with grad_accum=K, K runs of its
"accumulate" program (one micro-batch each) followed by one run of "update".
"""
from __future__ import annotations

import math
import time

import numpy as np

from .checkpoint import TrainingState
from .data import EVAL_STREAMS, RandomSampler
from .errors import UserError
from .plan import Plan
from .runtime.dist import SingleWorld
from .schedule import dropout_scalars, step_scalars


class TrainingStopped(Exception):
    """Training cannot go on (a non-finite loss or gradient norm); the message names the step."""


def scalar_inputs(plan: Plan, program: str) -> list[str]:
    """The names of a program's scalar inputs (shape []), as its plan declares them."""
    return [name for name, buf in plan.program(program).inputs.items() if not buf.shape]


def program_inputs(plan: Plan, program: str, batch=None, scalars: dict[str, float] | None = None) -> dict:
    """A program's inputs by the names its plan declares: the batch (tokens, targets) and each of
    its scalars from `scalars`. The one place that builds them, for the trainer, the profiler and
    the benchmark."""
    feeds = dict(zip(("tokens", "targets"), batch)) if batch is not None else {}
    for name in scalar_inputs(plan, program):
        if name not in (scalars or {}):
            raise UserError(f"the plan's {program} program takes a scalar {name!r} that this "
                            "graphgpt does not provide; recompile the plan")
        feeds[name] = scalars[name]
    return feeds


def init_params(plan: Plan, seed: int) -> dict[str, np.ndarray]:
    """Initial weights in plan order: N(0, std), zeros or ones, drawn in float64 from one seed."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in plan.params:
        if t["init"] == "normal":
            out[t["name"]] = rng.normal(0.0, t["std"], t["shape"])
        else:
            out[t["name"]] = np.full(t["shape"], 1.0 if t["init"] == "ones" else 0.0)
    return out


class Trainer:
    def __init__(self, plan: Plan, backend, sampler, seed: int = 0, world=None, schedule: dict | None = None):
        """`schedule` replaces the plan's learning-rate settings (schedule.SCHEDULE_KEYS) it names."""
        self.plan, self.backend, self.sampler, self.seed = plan, backend, sampler, seed
        self.optimizer = {**plan.optimizer, **(schedule or {})}
        self.world = world or SingleWorld()
        self.micro_batches = int(plan.optimizer.get("grad_accum", 1))
        self.set_weights(init_params(plan, seed))
        self.updates_done = 0

    # ---- the training state -------------------------------------------------------------------
    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Rank 0's weights become every rank's (the others' arguments are ignored)."""
        for name, value in weights.items():
            self.backend.set_tensor(name, value)
        if self.world.size > 1:
            self.backend.broadcast_region("params")

    def restore(self, state: TrainingState | None) -> dict:
        """Continue from rank 0's `state`: weights, optimizer state, update count and sampler.
        Collective; only rank 0 needs the state. Returns its meta, as every rank now has it."""
        lead = self.world.rank == 0
        for name, value in ({**state.params, **state.optimizer}.items() if lead else ()):
            self.backend.set_tensor(name, value)
        if self.world.size > 1:
            self.backend.broadcast_region("params")
            self.backend.broadcast_region("state")
        step, meta = self.world.bcast_object((state.step, state.meta) if lead else None)
        self.updates_done = step
        self.sampler.restore(meta["sampler"])
        return meta

    def state(self, meta: dict) -> TrainingState:
        """A snapshot of what `restore` needs, in the backend's precision (so resuming is exact)."""
        get = self.backend.get_tensor
        return TrainingState(self.updates_done, {t["name"]: get(t["name"]) for t in self.plan.params},
                             {t["name"]: get(t["name"]) for t in self.plan.tensors if t["kind"] == "state"},
                             {**meta, "sampler": self.sampler.state()})

    def weights(self) -> dict[str, np.ndarray]:
        return {t["name"]: self.backend.get_tensor(t["name"]).astype(np.float32) for t in self.plan.params}

    # ---- stepping -------------------------------------------------------------------------------
    def steps(self, n: int, pause=None):
        """Run n more steps, yielding each one's metrics.

        On an asynchronous backend step t+1 is already queued when step t's loss is read, so the
        GPU never waits for the host, except after a step where `pause(step)` is true: nothing is
        queued past it until its metrics have been consumed, so an evaluation or a checkpoint sees
        exactly that step's weights. A backend holds at most `pipeline_depth` unread results per
        program; a step of several micro-batches reads its losses as it goes, so its steps are not
        overlapped (one step is already several programs deep)."""
        queued: list[tuple] = []
        last = time.perf_counter()
        ahead = self.backend.pipeline_depth if self.micro_batches == 1 else 0
        for _ in range(n):
            queued.append(self._enqueue_step())
            depth = 0 if pause is not None and pause(self.updates_done) else ahead
            while len(queued) > depth:
                yield self._collect(*queued.pop(0), last)
                last = time.perf_counter()
        while queued:
            yield self._collect(*queued.pop(0), last)
            last = time.perf_counter()

    def _feeds(self, program: str, scalars: dict[str, float], batch=None) -> dict:
        return program_inputs(self.plan, program, batch, scalars)

    def _masks(self, micro: int) -> dict[str, int]:
        """Dropout's RNG key and counter for this micro-batch of the next update on this rank."""
        return dropout_scalars(self.seed, self.updates_done, micro, self.micro_batches, self.world.rank, self.world.size)

    def _enqueue_step(self) -> tuple:
        scalars = step_scalars(self.optimizer, self.updates_done)
        if self.micro_batches == 1:
            x, y = batch = self.sampler.next_batch()
            pending = self.backend.enqueue("train", self._feeds("train", scalars | self._masks(0), batch))
            losses, norm, tokens = [pending], pending, x.size
        else:
            losses, queued, tokens = [], [], 0
            for k in range(self.micro_batches):
                batch = self.sampler.next_batch()
                # 0 on a step's first micro-batch: it overwrites the gradient sums of the last step
                flag = {"accumulate": float(k > 0)} | self._masks(k)
                queued.append(self.backend.enqueue("accumulate", self._feeds("accumulate", flag, batch)))
                tokens += batch[0].size
                while len(queued) > self.backend.pipeline_depth:
                    losses.append(_loss(queued.pop(0)))
            norm = self.backend.enqueue("update", self._feeds("update", scalars))
            losses += queued
        self.updates_done += 1
        return losses, norm, self.updates_done, scalars["lr"], tokens

    def _collect(self, losses: list, norm, step: int, lr: float, tokens: int, since: float) -> dict:
        loss = float(np.mean([_loss(p) for p in losses]))
        grad_norm = float(norm.result()["grad_norm"])
        ms = (time.perf_counter() - since) * 1e3
        return {"step": step, "loss": self.world.mean(loss), "lr": lr, "grad_norm": grad_norm, "ms": ms,
                "tokens_per_s": tokens * self.world.size / (ms / 1e3)}


def check_finite(m: dict) -> None:
    """Stop at the first step whose loss or gradient norm is not a number: every later step would
    only spread it through the weights."""
    for what in ("loss", "grad_norm"):
        if not math.isfinite(m[what]):
            raise TrainingStopped(f"step {m['step']}: the {what.replace('_', ' ')} is {m[what]}; training stopped")


def _loss(result) -> float:
    """A micro-batch's loss: already read, or still pending on the backend."""
    return result if isinstance(result, float) else float(result.result()["loss"])


class Evaluation:
    """The mean loss of each split (`train`, and `val` when there is held-out data) over fixed
    random windows, the same at every evaluation so that the numbers compare; and the best
    held-out loss so far, which a checkpoint carries across a resume."""

    def __init__(self, backend, splits: dict, batch_size: int, seq_len: int, batches: int, seed: int,
                 world=None, best: dict | None = None):
        self.backend, self.splits, self.batches, self.world = backend, splits, batches, world or SingleWorld()
        self.layout = (batch_size, seq_len, self.world.rank, self.world.size, seed)
        self.best = best  # {"val_loss": ..., "step": ...}
        for name, tokens in splits.items():  # fail before training, not at the first evaluation
            if len(tokens) < seq_len + 1:
                label = "held-out" if name == "val" else "training"
                raise UserError(f"the {label} data has {len(tokens)} tokens; one window needs "
                                f"block_size + 1 = {seq_len + 1}")

    def score(self, step: int) -> dict[str, float]:
        losses = {}
        for name, tokens in self.splits.items():
            windows = RandomSampler(tokens, *self.layout, stream=EVAL_STREAMS[name])
            losses[f"{name}_loss"] = evaluate(self.backend, (windows.next_batch() for _ in range(self.batches)),
                                              self.world)
        if "val_loss" in losses and (self.best is None or losses["val_loss"] < self.best["val_loss"]):
            self.best = {"val_loss": losses["val_loss"], "step": step}
        return losses


def evaluate(backend, batches, world=None) -> float:
    """Mean loss of the plan's forward-only "eval" program over `batches` (x, y), across ranks."""
    world = world or SingleWorld()
    queued, losses = [], []
    for x, y in batches:
        queued.append(backend.enqueue("eval", {"tokens": x, "targets": y}))
        while len(queued) > backend.pipeline_depth:
            losses.append(_loss(queued.pop(0)))
    losses += [_loss(p) for p in queued]
    return world.mean(float(np.mean(losses)))
