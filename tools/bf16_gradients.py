"""python tools/bf16_gradients.py: how far a bf16 plan's weight gradients are from exact ones.

One training batch of the default model's shape at a small size, from the same initial weights,
through three plans on the NumPy backend: the float32 plan run in float64 (the reference), the
bf16 plan as compiled (activations and their gradients in bf16; every weight gradient comes out of
its GEMM or reduction in float32), and the bf16 plan compiled with --no-fuse (no cast is folded,
so every weight gradient is rounded to bf16 before it reaches float32). Then the same gradients
summed over 8 micro-batches, as gradient accumulation and a data-parallel allreduce sum them:
in float32, and in bf16 rounding after every add. Prints, per kind of parameter, the worst
norm-relative error against the float64 reference.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

from graphgpt.compiler import compile_model  # noqa: E402
from graphgpt.errors import ArgumentParser  # noqa: E402
from graphgpt.monitor import GuardedStdout  # noqa: E402
from graphgpt.plan import Plan  # noqa: E402
from graphgpt.runtime.numpy_backend import NumpyBackend  # noqa: E402
from graphgpt.train import init_params  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["n_layer=2", "n_head=4", "n_embd=128", "block_size=64", "batch_size=8"]


MICRO_BATCHES = 8


def gradients(overrides: list[str], dtype, fusion: bool = True, batch: int = 0) -> dict[str, np.ndarray]:
    c = compile_model(ROOT / "model.py", SMALL + overrides, fusion=fusion, log=lambda *a: None)
    plan = Plan(c.data, "measure")
    backend = NumpyBackend(plan, dtype)
    for name, value in init_params(plan, seed=0).items():
        backend.set_tensor(name, value)
    phrase = np.random.default_rng(1).integers(0, plan.config["vocab_size"], 97)
    text = np.tile(phrase, 64)
    rng = np.random.default_rng([2, batch])
    B, T = plan.config["batch_size"], plan.config["block_size"]
    starts = rng.integers(0, text.size - T - 1, B)
    x = np.stack([text[s:s + T] for s in starts]).astype(np.int32)
    y = np.stack([text[s + 1:s + T + 1] for s in starts]).astype(np.int32)
    feeds = {"tokens": x, "targets": y, **{k: 0.0 for k in plan.program("train").inputs if k not in ("tokens", "targets")}}
    backend.run("train", feeds)
    return {t["name"]: backend.get_tensor(t["name"], grad=True).astype(np.float64) for t in plan.params}


def kind(name: str) -> str:
    if name in ("wte", "wpe"):
        return "embeddings"
    if name.endswith(".bias") and ".ln_" not in name and not name.startswith("ln_"):
        return "linear biases"
    return "LayerNorm gains/biases" if "ln_" in name else "weight matrices"


def accumulated(per_batch: list[dict], dtype) -> dict[str, np.ndarray]:
    """The micro-batches' mean, each add rounded to `dtype` (float64: exact)."""
    out = {}
    for name in per_batch[0]:
        total = np.zeros_like(per_batch[0][name]).astype(dtype)
        for grads in per_batch:
            total = (total.astype(np.float64) + grads[name] / len(per_batch)).astype(dtype)
        out[name] = total.astype(np.float64)
    return out


def main(argv=None) -> int:
    sys.stdout = GuardedStdout(sys.stdout)
    ArgumentParser(prog="tools/bf16_gradients.py", description=__doc__.split("\n\n")[0]).parse_args(argv)
    exact = gradients([], np.float64)
    rows = {"one batch, bf16 plan (weights' gradients in f32)": gradients(["dtype=bf16"], np.float32),
            "one batch, bf16 --no-fuse (rounded to bf16)": gradients(["dtype=bf16"], np.float32, fusion=False)}
    exact_batches = [gradients([], np.float64, batch=b) for b in range(MICRO_BATCHES)]
    bf16_batches = [gradients(["dtype=bf16"], np.float32, batch=b) for b in range(MICRO_BATCHES)]
    exact = {"one": exact, "sum": accumulated(exact_batches, np.float64)}
    rows[f"{MICRO_BATCHES} micro-batches summed in f32"] = accumulated(bf16_batches, np.float32)
    rows[f"{MICRO_BATCHES} micro-batches summed in bf16"] = accumulated(bf16_batches, ml_dtypes.bfloat16)
    kinds = sorted({kind(n) for n in exact["one"]})
    print(f"{'gradients':48s} " + " ".join(f"{k:>24s}" for k in kinds))
    for label, grads in rows.items():
        worst = {k: 0.0 for k in kinds}
        for name, ref in exact["sum" if "micro" in label else "one"].items():
            if np.any(ref):
                err = np.linalg.norm(grads[name] - ref) / np.linalg.norm(ref)
                worst[kind(name)] = max(worst[kind(name)], err)
        print(f"{label:48s} " + " ".join(f"{worst[k]:24.2e}" for k in kinds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
