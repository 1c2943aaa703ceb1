"""Per-kernel time of one program on the CUDA backend, against the device's measured ceilings.

The program runs eagerly with an event between every two launches (a CUDA graph would hide
them); each launch's time is the median over several runs. Every row shows what its launch
achieved of the copy bandwidth (GB/s, for kernels) or of the GEMM rate (TFLOP/s, for cuBLAS),
both measured here first, so the next bottleneck is the row furthest from its ceiling.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..dtypes import DTYPES, nbytes
from ..plan import Buffer, Gemm, GemmCall, Launch
from .cuda_backend import device_dtype


def ceilings(backend) -> dict[str, float]:
    """Device-to-device copy bandwidth (bytes read + written) and the GEMM rate of this backend, in
    the type its plan computes in."""
    cp, stream = backend.cp, backend.stream
    src, dst = cp.ones(1 << 28, cp.float32), cp.empty(1 << 28, cp.float32)  # 1 GiB each
    copy = _median_ms(cp, stream, lambda: cp.copyto(dst, src))
    return {"bandwidth": 2 * src.nbytes / (copy / 1e3),
            "flops": gemm_rate(cp, stream, backend.blas, backend.plan.config.get("dtype", "f32"))}


def gemm_rate(cp, stream, blas, dtype: str, n: int = 4096) -> float:
    """FLOP/s of an n x n x n GEMM with operands and output of `dtype`, through `blas` (runtime.cublas)."""
    one = np.ones(1, DTYPES[dtype].numpy).view(device_dtype(dtype))  # 1.0 in that type
    a, b, c = (cp.full((n, n), one[0], one.dtype) for _ in range(3))
    square = Buffer(dtype, 0, (n, n))
    g = Gemm(transa=0, transb=0, m=n, n=n, k=n, a=square, lda=n, stride_a=0, b=square, ldb=n, stride_b=0,
             c=square, ldc=n, stride_c=0, batch=1)
    ms = _median_ms(cp, stream, lambda: blas.gemm(g, a.data.ptr, b.data.ptr, c.data.ptr))
    return 2 * n ** 3 / (ms / 1e3)


def _median_ms(cp, stream, fn, repeats: int = 10) -> float:
    with stream:
        fn()
        times = []
        for _ in range(repeats):
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
    return float(np.median(times))


def profile(backend, program: str, feeds: dict, repeats: int = 5) -> list[dict]:
    """Rows per kernel (or GEMM shape): calls per run, ms per run, bytes and FLOPs per run."""
    cp = backend.cp
    backend.run(program, feeds)  # inputs in place, modules loaded
    launches = backend.programs[program].launches
    samples = np.zeros((repeats, len(launches)))
    with backend.stream:
        for r in range(repeats):
            events = [cp.cuda.Event() for _ in range(len(launches) + 1)]
            events[0].record(backend.stream)
            for i, launch in enumerate(launches):
                getattr(launch, "run", launch)()  # a side-stream launch here on the main stream, alone
                events[i + 1].record(backend.stream)
            events[-1].synchronize()
            samples[r] = [cp.cuda.get_elapsed_time(events[i], events[i + 1]) for i in range(len(launches))]
    per_launch = np.median(samples, axis=0)
    rows: dict[str, dict] = defaultdict(lambda: {"calls": 0, "ms": 0.0, "bytes": 0, "flops": 0})
    for fn, ms in zip(launches, per_launch):
        launch = getattr(fn, "launch", None)
        name, nbytes, flops = _describe(launch)
        row = rows[name]
        row["calls"] += 1
        row["ms"] += float(ms)
        row["bytes"] += nbytes
        row["flops"] += flops
    return sorted(({"name": k, **v} for k, v in rows.items()), key=lambda r: -r["ms"])


def _describe(launch: Launch | None) -> tuple[str, int, int]:
    if launch is None:
        return "allreduce (join)", 0, 0
    if isinstance(launch.cuda, GemmCall):
        g, epilogue = launch.cuda.gemm, launch.cuda.epilogue
        name = f"gemm {g.m}x{g.n}x{g.k}" + (f" x{g.batch}" if g.batch > 1 else "")
        if epilogue:
            name += "".join(f" +{k}" for k, b in (("bias", epilogue.bias), ("residual", epilogue.residual)) if b)
            name += {"gelu_aux": " +gelu", "gelu_aux_bias": " +gelu", "dgelu": " +gelu_grad"}.get(epilogue.kind, "")
        # a GELU epilogue also writes its pre-activation
        return name, sum(nbytes(b) for b in [*launch.outputs, *launch.ins]), 2 * g.m * g.n * g.k * g.batch
    buffers = {launch.out, *launch.ins}
    return f"{launch.cuda.kernel} ({launch.op})", sum(nbytes(b) for b in buffers), 0


def format_profile(rows: list[dict], ceiling: dict[str, float], top: int = 25) -> str:
    total = sum(r["ms"] for r in rows)
    lines = [f"measured ceilings: copy {ceiling['bandwidth'] / 1e9:,.0f} GB/s, GEMM {ceiling['flops'] / 1e12:,.1f} TFLOP/s",
             f"{'kernel':58s} {'calls':>5s} {'ms/step':>8s} {'share':>6s}  achieved"]
    for r in rows[:top]:
        if r["flops"]:
            rate = r["flops"] / (r["ms"] / 1e3)
            achieved = f"{rate / 1e12:7.1f} TFLOP/s ({rate / ceiling['flops']:4.0%})"
        else:
            rate = r["bytes"] / (r["ms"] / 1e3) if r["ms"] else 0.0
            achieved = f"{rate / 1e9:7.0f} GB/s    ({rate / ceiling['bandwidth']:4.0%})"
        lines.append(f"{r['name'][:58]:58s} {r['calls']:5d} {r['ms']:8.3f} {r['ms'] / total:6.1%}  {achieved}")
    lines.append(f"{'total':58s} {sum(r['calls'] for r in rows):5d} {total:8.3f}")
    return "\n".join(lines)
