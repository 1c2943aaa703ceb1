"""The training loop: initial weights, batches, runtime scalars, progress, metrics, checkpoints."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import optim
from .checkpoint import save_safetensors, save_seed_weights
from .data import DataLoader
from .plan import Plan
from .runtime.dist import SingleWorld


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
    def __init__(self, plan: Plan, backend, loader: DataLoader, seed: int = 0, world=None):
        self.plan, self.backend, self.loader = plan, backend, loader
        self.world = world or SingleWorld()
        for name, value in init_params(plan, seed).items():
            backend.set_tensor(name, value)
        if self.world.size > 1:  # every rank starts from rank 0's weights, as the seed does
            backend.broadcast_region("params")
        self.updates_done = 0

    def steps(self, n: int):
        """Run n steps, yielding each one's metrics. On an asynchronous backend step t+1 is
        already queued when step t's loss is read, so the GPU never waits for the host."""
        queued: list[tuple] = []
        last = time.perf_counter()
        for _ in range(n):
            x, y = self.loader.next_batch()
            scalars = optim.step_scalars(self.plan.optimizer, self.updates_done)
            feeds = {"tokens": x, "targets": y, **{k: scalars[k] for k in optim.scalar_inputs(self.plan.optimizer)}}
            self.updates_done += 1
            queued.append((self.backend.enqueue("train", feeds), self.updates_done, scalars["lr"], x.size))
            while len(queued) > self.backend.pipeline_depth:
                yield self._collect(*queued.pop(0), last)
                last = time.perf_counter()
        while queued:
            yield self._collect(*queued.pop(0), last)
            last = time.perf_counter()

    def _collect(self, pending, step: int, lr: float, tokens: int, since: float) -> dict:
        out = pending.result()
        ms = (time.perf_counter() - since) * 1e3
        tokens *= self.world.size
        return {"step": step, "loss": self.world.mean(float(out["loss"])), "lr": lr,
                "grad_norm": float(out["grad_norm"]), "ms": ms, "tokens_per_s": tokens / (ms / 1e3)}

    def weights(self) -> dict[str, np.ndarray]:
        return {t["name"]: self.backend.get_tensor(t["name"]).astype(np.float32) for t in self.plan.params}


class Progress:
    """A bar redrawn in place on a terminal; plain periodic lines in logs and pipes."""

    def __init__(self, total: int, stream=sys.stdout):
        self.total, self.stream = total, stream
        self.tty = stream.isatty() and os.environ.get("TERM") != "dumb"
        self.every = max(1, total // 10)

    def update(self, m: dict) -> None:
        text = (f"step {m['step']:>{len(str(self.total))}}/{self.total} | loss {m['loss']:.4f} | "
                f"lr {m['lr']:.2e} | norm {m['grad_norm']:.3f} | {m['ms']:.1f} ms | "
                f"{m['tokens_per_s']:,.0f} tok/s")
        if self.tty:
            done = int(20 * m["step"] / self.total)
            self.stream.write(f"\r[{'#' * done}{'.' * (20 - done)}] {text}\033[K")
            if m["step"] == self.total:
                self.stream.write("\n")
        elif m["step"] == 1 or m["step"] % self.every == 0 or m["step"] == self.total:
            self.stream.write(text + "\n")
        self.stream.flush()


class MetricsLog:
    """One JSON object per step; written beside the target and renamed into place when closed."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self.tmp = self.path.with_name(f".{self.path.name}.tmp") if self.path else None
        self.file = open(self.tmp, "w") if self.tmp else None

    def write(self, m: dict) -> None:
        if self.file:
            self.file.write(json.dumps(m) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
            os.replace(self.tmp, self.path)


def save_weights(directory: Path, weights: dict[str, np.ndarray], plan: Plan) -> list[Path]:
    """model.safetensors (named) and the seed's trained_weights.bin (plan order)."""
    directory = Path(directory)
    paths = [directory / "model.safetensors", directory / "trained_weights.bin"]
    save_safetensors(paths[0], weights, metadata={"model_hash": plan.data["model_hash"]})
    save_seed_weights(paths[1], [weights[t["name"]] for t in plan.params])
    return paths
