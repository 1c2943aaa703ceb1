"""python tools/trace_step.py --plan DIR: every kernel of one training step, as the GPU ran it.

`run --profile` times launches one by one between events, which adds a few microseconds to each;
this traces the step as it runs (its CUDA graph, or launch by launch with --no-graph) through
CUPTI, by PyTorch's profiler, which records every kernel of the process, CuPy's, cuBLAS's and
NCCL's included. It prints the middle one of three traced steps kernel by kernel (device time,
and the time before it when nothing ran), then the kernels by name: where a step's time goes when
each kernel takes microseconds. Needs a CUDA build of PyTorch beside CuPy.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

from collections import defaultdict  # noqa: E402

from bench import MIN_WARMUP, GraphgptRunner, synthetic_batch  # noqa: E402

from graphgpt import literals, plan as plan_io  # noqa: E402
from graphgpt.errors import ArgumentParser, UserError, reported  # noqa: E402
from graphgpt.runtime import cuda_available  # noqa: E402
from graphgpt.train import init_params  # noqa: E402

TRACED = 3  # steps traced; the middle one is shown


def parse_args(argv: list[str]):
    p = ArgumentParser(prog="tools/trace_step.py", description=(
        "Trace one training step of a compiled plan on the GPU with CUPTI: each kernel's device time and the "
        "idle time before it, then the kernels by name."))
    p.add_argument("--plan", type=Path, required=True, help="a compiled plan directory (tools/compile.py)")
    p.add_argument("--no-graph", action="store_true", help="launch by launch instead of the step's CUDA graph")
    p.add_argument("--warmup", type=literals.integer, default=6, help="untraced steps first (the graph is captured on the second)")
    p.add_argument("--top", type=literals.integer, default=20, help="kernel names listed by total time (default 20)")
    args = p.parse_args(argv)
    if args.warmup < MIN_WARMUP:
        raise UserError(f"--warmup must be at least {MIN_WARMUP} (the step's CUDA graph is captured on the second "
                        f"step), got {args.warmup}")
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    return args


def covered(ranges: list[tuple[float, float]]) -> float:
    """The time at least one of these (start, end) ranges covers: kernels of two streams overlap."""
    total, reach = 0.0, None
    for start, end in sorted(ranges):
        if reach is None or start > reach:
            total, reach = total + end - start, end
        elif end > reach:
            total, reach = total + end - reach, end
    return total


def trace(argv: list[str]) -> int:
    args = parse_args(argv)
    plan = plan_io.load(args.plan)
    if not cuda_available():
        raise UserError("no NVIDIA GPU visible to CuPy: tools/trace_step.py traces on the GPU")
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        raise UserError("tools/trace_step.py records kernels through PyTorch's profiler: install a CUDA build "
                        "of torch") from None
    runner = GraphgptRunner(plan, init_params(plan, seed=0), synthetic_batch(plan.config), not args.no_graph, False)
    for _ in range(args.warmup):
        runner.step()
    runner.be.sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(TRACED):
            runner.step()
        runner.be.sync()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    n = len(events) // TRACED
    step = events[n:2 * n]
    ranges = [(e.time_range.start, e.time_range.end) for e in step]
    span = max(end for _, end in ranges) - ranges[0][0]
    busy, own = covered(ranges), sum(e.time_range.elapsed_us() for e in step)
    print(f"{args.plan}: {n} kernels and copies a step; {span:.1f} us from the first's start to the last's end, "
          f"{busy:.1f} us of it busy, {span - busy:.1f} us idle; the kernels' own times add to {own:.1f} us "
          f"({own - busy:.1f} us of them beside another, on the side stream)")
    print(f"{'#':>4} {'us':>8} {'idle':>6}  kernel")
    by_name, end = defaultdict(lambda: [0, 0.0]), None
    for i, e in enumerate(step):
        idle = 0.0 if end is None else max(0.0, e.time_range.start - end)  # nothing ran before it
        end = e.time_range.end if end is None else max(end, e.time_range.end)
        print(f"{i:4d} {e.time_range.elapsed_us():8.2f} {idle:6.2f}  {e.name[:90]}")
        name = by_name[e.name.split("(")[0][:60]]
        name[0] += 1
        name[1] += e.time_range.elapsed_us()
    print(f"\nby name (the {args.top} largest): count, us a step")
    for name, (count, us) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"{count:4d} {us:9.1f}  {name}")
    runner.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return reported(lambda: trace(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
