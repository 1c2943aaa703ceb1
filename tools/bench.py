"""python tools/bench.py --plan DIR: graphgpt's CUDA backend against PyTorch, one training step each.

Every method trains the plan's model on one synthetic batch (batch_size x block_size random
tokens) from graphgpt's initial weights, in one process: graphgpt with its CUDA graph and
without, and, when PyTorch is importable, tools/torch_gpt2.py eager, under torch.compile, and
under torch.compile with bf16 autocast. Each method runs its warm-up steps first (module loading,
CUDA-graph capture, torch.compile's compilation), then `repeat` blocks of `steps` steps between
two GPU events on its stream; the table shows the median block's ms/step.

MFU: the FLOPs of the plan's matrix products per step (the compiler counts them from each op's
registry entry: 6 N per token for the N weights that take part in GEMMs, plus 12 L H D T for the
attention's products, fused or not, as nanoGPT's estimate counts them)
over the step time, against the GEMM rate measured here first (a 4096^3 GEMM in the plan's
type: bf16, or float32 on FP32 or TF32 cores). Every row is credited with the same FLOPs.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402

from graphgpt import jsontext, literals, schedule  # noqa: E402
from graphgpt import plan as plan_io  # noqa: E402
from graphgpt.errors import ArgumentParser, UserError, reported  # noqa: E402
from graphgpt.fsutil import atomic_write_text  # noqa: E402
from graphgpt.runtime import ArenaTooLarge, cuda_available, make_backend  # noqa: E402
from graphgpt.train import init_params, program_inputs  # noqa: E402
from tools import llmc  # noqa: E402

MIN_WARMUP = 2  # graphgpt captures its CUDA graph on the second step; torch.compile compiles on the first
REPORT_BYTES = 1 << 20  # a --json report is kilobytes: a larger file is not one, and is not read


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="tools/bench.py", description=(
        "Time one training step of a compiled plan on the GPU: graphgpt's CUDA backend with and "
        "without its CUDA graph, and the same model and batch in PyTorch (eager, torch.compile, "
        "torch.compile with bf16 autocast)."))
    p.add_argument("--plan", type=Path, required=True, help="plan directory (tools/compile.py --out)")
    p.add_argument("--steps", type=literals.integer, default=20, metavar="N", help="steps per timed block (default: 20)")
    p.add_argument("--warmup", type=literals.integer, default=5, metavar="W",
                   help=f"untimed steps before timing, at least {MIN_WARMUP} (default: 5)")
    p.add_argument("--repeat", type=literals.integer, default=5, metavar="R", help="timed blocks; the median is shown (default: 5)")
    p.add_argument("--tf32", action="store_true", help="float32 matmuls on TF32 tensor cores, in graphgpt and torch")
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=None,
                   help="time PyTorch too (default: when torch is importable)")
    p.add_argument("--eager-only", action="store_true",
                   help="of the PyTorch rows, only eager (torch.compile's compilation takes minutes on large models)")
    p.add_argument("--compiled-only", action="store_true",
                   help="of the PyTorch rows, only torch.compile (eager holds every activation: on large models it "
                        "runs out of memory first)")
    p.add_argument("--optimizer", choices=("exact", "torch"), default="exact",
                   help="torch rows' optimizer: graphgpt's Adam/AdamW formula or torch.optim.Adam/AdamW "
                        "(default: exact)")
    p.add_argument("--llmc", type=Path, metavar="BINARY",
                   help="add a row for llm.c's train_gpt2cu (built), run on the plan's GPT-2 (tools/llmc.py)")
    p.add_argument("--json", type=Path, metavar="OUT",
                   help="write every number, the device and the command here: a new file or an earlier report of "
                        "this tool's")
    args = p.parse_args(argv)
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    if args.repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {args.repeat}")
    if args.warmup < MIN_WARMUP:
        raise UserError(f"--warmup must be at least {MIN_WARMUP} (the first steps load kernels, capture the "
                        f"CUDA graph and run torch.compile), got {args.warmup}")
    if args.eager_only and args.compiled_only:
        raise UserError("--eager-only and --compiled-only leave no PyTorch row between them; give one")
    check_json_out(args.json, "tools/bench.py")
    return args


def check_json_out(path: Path | None, tool: str) -> None:
    """--json may name a new file or a report of `tool` (its "command" says so), which the run
    replaces; any other file there is the user's, and is refused before any work."""
    if path is None or not os.path.lexists(path):
        return
    if path.is_dir():
        raise UserError(f"--json {path} is a directory; name a file")
    if not is_report(path, tool):
        raise UserError(f"--json {path} is a file that {tool} did not write; it is left as it is (name a new file)")


def is_report(path: Path, tool: str) -> bool:
    """Whether `path` is a --json report that `tool` wrote: a JSON object whose command runs it."""
    if path.is_symlink() or not path.is_file() or path.stat().st_size > REPORT_BYTES:
        return False
    try:
        report = jsontext.loads(path.read_bytes())
    except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON
        return False
    command = report.get("command") if isinstance(report, dict) else None
    return isinstance(command, str) and command.startswith(f"python {tool} ")


def want_torch(flag: bool | None) -> bool:
    """--torch: required; --no-torch: off; neither: whenever torch imports."""
    if flag is False:
        return False
    try:
        import torch  # noqa: F401
    except ImportError:
        if flag:
            raise UserError("--torch needs PyTorch (pip install torch), which does not import here") from None
        return False
    return True


# ---- timing -------------------------------------------------------------------------------------
class CupyClock:
    """Events on graphgpt's stream: they time exactly the work queued there."""

    def __init__(self, stream):
        import cupy
        self.cupy, self.stream = cupy, stream

    def mark(self):
        event = self.cupy.cuda.Event()
        event.record(self.stream)
        return event

    def elapsed_ms(self, start, end) -> float:
        end.synchronize()
        return self.cupy.cuda.get_elapsed_time(start, end)

    def sync(self) -> None:
        self.stream.synchronize()


class TorchClock:
    """Events on torch's current stream, where its steps run."""

    def __init__(self):
        import torch
        self.torch = torch

    def mark(self):
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed_ms(self, start, end) -> float:
        end.synchronize()
        return start.elapsed_time(end)

    def sync(self) -> None:
        self.torch.cuda.synchronize()


def measure(step, clock, steps: int, warmup: int, repeat: int) -> list[float]:
    """ms/step of each of `repeat` blocks of `steps` queued steps, after `warmup` steps.

    Events around a block, not around each step: the host keeps queueing while the GPU runs, so a
    block measures throughput, including any time the GPU waits for a host that falls behind.
    """
    for _ in range(warmup):
        step()
    clock.sync()
    out = []
    for _ in range(repeat):
        start = clock.mark()
        for _ in range(steps):
            step()
        out.append(clock.elapsed_ms(start, clock.mark()) / steps)
    return out


# ---- the methods --------------------------------------------------------------------------------
def synthetic_batch(cfg: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random tokens of the plan's shape; targets are the next tokens, as from the data loader."""
    seq = np.random.default_rng(seed).integers(0, cfg["vocab_size"], (cfg["batch_size"], cfg["block_size"] + 1))
    return seq[:, :-1].astype(np.int32), seq[:, 1:].astype(np.int32)


class GraphgptRunner:
    memory_source = "arena_bytes (graphgpt's own allocation)"

    def __init__(self, plan, weights: dict, batch: tuple, graph: bool, tf32: bool):
        self.be = make_backend("cuda", plan, graph=graph, tf32=tf32)
        for name, value in weights.items():
            self.be.set_tensor(name, value)
        self.plan, self.batch, self.updates_done = plan, batch, 0
        self.clock = CupyClock(self.be.stream)

    def _feeds(self) -> dict:
        scalars = schedule.step_scalars(self.plan.optimizer, self.updates_done) | schedule.dropout_scalars(0, self.updates_done)
        self.updates_done += 1
        return program_inputs(self.plan, "train", self.batch, scalars)

    def step(self) -> None:
        self.be.enqueue("train", self._feeds())

    def final_loss(self) -> float:
        """One more step, waited for: its loss shows that every method trained the same model."""
        return float(self.be.run("train", self._feeds())["loss"])

    def peak_bytes(self) -> int:
        return self.be.arena_bytes

    def close(self) -> None:
        import cupy
        self.be.sync()
        del self.be
        gc.collect()  # the backend's bound launches hold it in reference cycles
        cupy.get_default_memory_pool().free_all_blocks()


class TorchRunner:
    memory_source = "torch.cuda.max_memory_allocated"

    def __init__(self, plan, weights: dict, batch: tuple, compiled: bool, precision: str, optimizer: str,
                 device: str = "cuda"):
        import torch
        from tools.torch_gpt2 import GPT2, load_weights, make_optimizer, train_step, use_precision
        from tools.torch_llama import Llama, is_llama
        self.torch, self.train_step, self.device = torch, train_step, torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.autocast = use_precision(precision)
        model = (Llama.from_plan(plan) if is_llama(plan) else GPT2.from_config(plan.config)).to(self.device)
        load_weights(model, weights)
        self.optimizer = make_optimizer(model, optimizer, plan.optimizer)
        self.model = torch.compile(model) if compiled else model
        # The batch waits in host memory and goes up every step, as graphgpt's feeds do.
        pin = self.device.type == "cuda"
        self.host = [torch.from_numpy(a).long().pin_memory() if pin else torch.from_numpy(a).long() for a in batch]
        self.loss = None
        self.clock = TorchClock() if pin else None

    def step(self) -> None:
        tokens, targets = (a.to(self.device, non_blocking=True) for a in self.host)
        self.loss, _ = self.train_step(self.model, self.optimizer, tokens, targets, self.autocast)

    def final_loss(self) -> float:
        self.step()
        return self.loss.item()

    def peak_bytes(self) -> int:
        return self.torch.cuda.max_memory_allocated() if self.device.type == "cuda" else 0

    def close(self) -> None:
        del self.model, self.optimizer, self.loss
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()


@dataclass
class Row:
    name: str
    ms: list[float]          # ms/step of each timed block
    peak_bytes: int
    memory_source: str
    final_loss: float
    derived: dict = field(default_factory=dict)
    failed: str = ""         # why the row has no time (it ran out of memory)


def summarize(rows: list[Row], tokens_per_step: int, flops_per_step: float = 0.0,
              peak_flops: float | None = None) -> list[Row]:
    """Median ms/step, tokens/s, MFU (the step's GEMM FLOPs at the measured peak rate, when one is
    given) and the speed-up over torch eager (above 1: faster than eager)."""
    for r in rows:
        if r.failed:
            r.derived = {"ms_per_step": None, "tokens_per_s": None, "mfu": None, "vs_torch_eager": None}
            continue
        r.derived = {"ms_per_step": statistics.median(r.ms)}
        r.derived["tokens_per_s"] = tokens_per_step / (r.derived["ms_per_step"] / 1e3)
        r.derived["mfu"] = flops_per_step / (r.derived["ms_per_step"] / 1e3) / peak_flops if peak_flops else None
    eager = next((r for r in rows if r.name.startswith("torch eager") and not r.failed), None)
    for r in rows:
        if not r.failed:
            r.derived["vs_torch_eager"] = eager.derived["ms_per_step"] / r.derived["ms_per_step"] if eager else None
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'method':<20} {'ms/step':>9} {'tokens/s':>12} {'MFU':>6} {'vs eager':>9} {'peak MiB':>9} {'loss':>8}"]
    for r in rows:
        d = r.derived
        if r.failed:
            lines.append(f"{r.name:<20} {r.failed}")
            continue
        ratio = f"{d['vs_torch_eager']:.2f}x" if d["vs_torch_eager"] is not None else "-"
        mfu = f"{d['mfu']:.1%}" if d.get("mfu") is not None else "-"
        lines.append(f"{r.name:<20} {d['ms_per_step']:>9.3f} {d['tokens_per_s']:>12,.0f} {mfu:>6} {ratio:>9} "
                     f"{r.peak_bytes / 2**20:>9.1f} {r.final_loss:>8.4f}")
    return "\n".join(lines)


def methods(use_torch: bool, tf32: bool, eager_only: bool = False, bf16: bool = False,
            compiled_only: bool = False) -> list[tuple[str, dict]]:
    """(row name, runner arguments), in table order. A bf16 plan is timed against PyTorch under
    bf16 autocast, eager and compiled."""
    out = [("graphgpt graph", dict(kind="graphgpt", graph=True)),
           ("graphgpt no-graph", dict(kind="graphgpt", graph=False))]
    if not use_torch:
        return out
    if bf16:
        torch_rows = [("torch eager bf16", dict(kind="torch", compiled=False, precision="bf16")),
                      ("torch.compile bf16", dict(kind="torch", compiled=True, precision="bf16"))]
    else:
        precision = "tf32" if tf32 else "fp32"
        torch_rows = [("torch eager", dict(kind="torch", compiled=False, precision=precision)),
                      ("torch.compile", dict(kind="torch", compiled=True, precision=precision)),
                      ("torch.compile bf16", dict(kind="torch", compiled=True, precision="bf16"))]
    out += [(name, o) for name, o in torch_rows
            if not (eager_only and o["compiled"]) and not (compiled_only and not o["compiled"])]
    return out


def run_method(plan, weights, batch, args, kind: str, **options) -> tuple[list[float], int, str, float]:
    if kind == "graphgpt":
        runner = GraphgptRunner(plan, weights, batch, options["graph"], args.tf32)
    else:
        runner = TorchRunner(plan, weights, batch, options["compiled"], options["precision"], args.optimizer)
    try:
        ms = measure(runner.step, runner.clock, args.steps, args.warmup, args.repeat)
        loss = runner.final_loss()
        return ms, runner.peak_bytes(), runner.memory_source, loss
    finally:
        runner.close()


def out_of_memory_errors(use_torch: bool) -> tuple[type, ...]:
    """What a row that does not fit the GPU raises: graphgpt's refusal of an arena larger than the
    GPU (before it allocates), CuPy's and PyTorch's allocation failures."""
    import cupy
    errors: tuple[type, ...] = (ArenaTooLarge, cupy.cuda.memory.OutOfMemoryError)
    if use_torch:
        import torch
        errors += (torch.cuda.OutOfMemoryError,)
    return errors


def free_cached_memory(use_torch: bool) -> None:
    """Give back what the failed row's allocator holds, for the rows after it."""
    import cupy
    gc.collect()
    cupy.get_default_memory_pool().free_all_blocks()
    if use_torch:
        import torch
        torch.cuda.empty_cache()


def peak_gemm_rate(plan, tf32: bool) -> float:
    """FLOP/s of a 4096^3 GEMM in the plan's compute type on this GPU, through graphgpt's cuBLAS binding."""
    import cupy as cp
    from graphgpt.runtime.cublas import WORKSPACE_BYTES, Cublas
    from graphgpt.runtime.profile import gemm_rate
    stream, workspace = cp.cuda.Stream(non_blocking=True), cp.empty(WORKSPACE_BYTES, cp.uint8)
    blas = Cublas(stream.ptr, workspace.data.ptr, tf32)
    try:
        return gemm_rate(cp, stream, blas, plan.config.get("dtype", "f32"))
    finally:
        blas.close()


def precision(plan, args) -> str:
    """What graphgpt's GEMMs run in: the plan's compute dtype, or float32 on FP32 or TF32 cores."""
    if plan.config.get("dtype", "f32") != "f32":
        return plan.config["dtype"]
    return "tf32" if args.tf32 else "fp32"


def device_info() -> tuple[str, dict]:
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    versions = {"python": sys.version.split()[0], "numpy": np.__version__, "cupy": cupy.__version__,
                "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}
    return props["name"].decode(), versions


def report(args, argv: list[str], plan, device: str, versions: dict, rows: list[Row]) -> dict:
    cfg = plan.config
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "command": shlex.join(["python", "tools/bench.py", *argv]),
        "plan": str(args.plan),
        "model_hash": plan.data["model_hash"],
        "config": cfg,
        "tokens_per_step": cfg["batch_size"] * cfg["block_size"],
        "precision": precision(plan, args),
        "torch_optimizer": args.optimizer,
        "steps": args.steps, "warmup": args.warmup, "repeat": args.repeat,
        "versions": versions,
        "rows": [{"name": r.name, **r.derived, "ms_per_step_blocks": r.ms, "peak_bytes": r.peak_bytes,
                  "memory": r.memory_source, "final_loss": r.final_loss, **({"failed": r.failed} if r.failed else {})}
                 for r in rows],
    }


def bench(args, argv: list[str]) -> int:
    plan = plan_io.load(args.plan)
    if "train" not in plan.programs:
        raise UserError(f"{args.plan} was compiled with grad_accum={plan.optimizer['grad_accum']}; tools/bench.py "
                        "times the one-program step of a grad_accum=1 plan")
    if args.llmc is not None:
        llmc.check(plan, args.llmc)
    use_torch = want_torch(args.torch)
    if not cuda_available():
        raise UserError("no NVIDIA GPU visible to CuPy: tools/bench.py measures on the GPU")
    if use_torch:
        import torch
        if not torch.cuda.is_available():
            if args.torch:
                raise UserError(f"--torch needs a CUDA build of PyTorch; torch {torch.__version__} sees no GPU")
            print(f"note: torch {torch.__version__} sees no GPU; timing graphgpt only", file=sys.stderr)
            use_torch = False
    device, versions = device_info()
    if use_torch:
        import torch
        versions |= {"torch": torch.__version__, "torch_cuda": torch.version.cuda}

    cfg = plan.config
    tokens_per_step = cfg["batch_size"] * cfg["block_size"]
    n_params = sum(int(np.prod(t["shape"])) for t in plan.params)
    print(f"plan {args.plan}: {n_params / 1e6:.2f}M parameters, batch {cfg['batch_size']} x {cfg['block_size']} "
          f"= {tokens_per_step} tokens/step; {device}, {precision(plan, args)}; "
          f"{args.warmup} warm-up steps, then {args.repeat} blocks of {args.steps} steps (median)", flush=True)
    weights, batch = init_params(plan, seed=0), synthetic_batch(cfg)
    peak, flops = peak_gemm_rate(plan, args.tf32), plan.program("train").matmul_flops
    print(f"  GEMM rate measured: {peak / 1e12:.1f} TFLOP/s ({precision(plan, args)}); "
          f"{flops / 1e9:.1f} GFLOP of GEMMs per step", flush=True)
    rows = []
    out_of_memory = out_of_memory_errors(use_torch)
    for name, options in methods(use_torch, args.tf32, args.eager_only, plan.config.get("dtype") == "bf16",
                                 args.compiled_only):
        print(f"  {name} ...", flush=True)
        try:
            rows.append(Row(name, *run_method(plan, weights, batch, args, **options)))
            continue
        except out_of_memory as e:  # the other rows still run: the table says which did not fit
            failed = f"out of memory: {str(e).splitlines()[0][:160]}"
        rows.append(Row(name, [], 0, "", float("nan"), failed=failed))
        print(f"  {name}: {failed}", flush=True)
        free_cached_memory(use_torch)  # here, where the exception no longer holds the failed row's tensors
    if args.llmc is not None:
        print("  llm.c ...", flush=True)
        ms, peak_bytes, loss, _ = llmc.run(plan, args.llmc, args.steps * args.repeat, args.warmup)
        rows.append(Row("llm.c", ms, peak_bytes, "llm.c's device memory usage", loss))
    print(format_table(summarize(rows, tokens_per_step, flops, peak)))
    print("MFU: the plan's GEMM FLOPs per step at the measured GEMM rate. vs eager: torch eager's ms/step over "
          "the row's. peak MiB: graphgpt's arena; torch's max_memory_allocated. loss: after the same steps "
          "from the same weights (llm.c: from its own random weights, on random tokens).")
    if args.json:
        data = dict(report(args, argv, plan, device, versions, rows), peak_gemm_flops=peak, matmul_flops_per_step=flops)
        atomic_write_text(args.json, json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return reported(lambda: bench(parse_args(argv), argv))


if __name__ == "__main__":
    sys.exit(main())
