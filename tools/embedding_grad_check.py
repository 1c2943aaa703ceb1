"""python tools/embedding_grad_check.py: the embedding gradient kernel against float64, and timed, by how the ids fall.

graphgpt/families/embedding/embedding.cu.j2's embedding_grad gives each block a few table rows, and each block sums
the gradient rows of its own ids in order. Its time therefore depends on the ids: spread evenly,
every block has a few rows to add; in text, a few frequent ids (and in a byte-pair vocabulary they
have small numbers, so they share blocks) give one block most of the rows. For GPT-2 124M's shape
(16 x 1024 ids, a 50304 x 768 table, bf16 gradient rows, float32 table) the kernel is rendered as a
plan renders it for more ids than one block sorts (2^15 a step; a plan of this shape sorts
its ids once instead, passes/embedding_grads.py) and run on ids drawn three ways:
  uniform -- every id equally likely (tools/bench.py's synthetic batch);
  zipf    -- the k-th id with probability ~ 1/k (word frequencies in text; small ids frequent);
  few     -- 99 ids, each equally likely (a character vocabulary, as in the seed's corpus).
Each run's table is poisoned (NaN) first and checked against a float64 scatter-add on the GPU
(norm-relative); then timed with CUDA events, median of `--repeat` runs after three of warm-up.
`--variants` also renders the kernel with other shares of its shared memory and rows per block
(the family's lowering.py: SUM_FLOATS and MAX_BLOCK_ROWS), the plan's own first.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

import statistics  # noqa: E402

import numpy as np  # noqa: E402

from graphgpt import literals  # noqa: E402
from graphgpt.codegen import NVRTC_OPTIONS, lower_plan  # noqa: E402
from graphgpt.families.embedding import lowering as embedding  # noqa: E402
from graphgpt.plan import Buffer, Launch, Program  # noqa: E402
from graphgpt.errors import ArgumentParser  # noqa: E402
from graphgpt.target import DEFAULT  # noqa: E402

ROWS, C, B, T = 50304, 768, 16, 1024
TOLERANCE = 1e-5  # float32 sums of bf16 rows


def draw_ids(kind: str, rng: np.random.Generator) -> np.ndarray:
    n = B * T
    if kind == "uniform":
        ids = rng.integers(0, ROWS, n)
    elif kind == "zipf":
        p = 1.0 / np.arange(1, ROWS + 1)
        ids = rng.choice(ROWS, n, p=p / p.sum())
    else:
        ids = rng.integers(0, 99, n)
    return ids.astype(np.int32).reshape(B, T)


def render(cp, sum_floats: int, max_rows: int):
    """The kernel as a plan renders it with these constants, and its kernel call."""
    saved = embedding.SUM_FLOATS, embedding.MAX_BLOCK_ROWS
    embedding.SUM_FLOATS, embedding.MAX_BLOCK_ROWS = sum_floats, max_rows
    try:
        launch = Launch(op="embedding_grad", out=Buffer("f32", 0, (ROWS, C)),
                        ins=(Buffer("i32", 0, (B, T)), Buffer("bf16", 0, (B, T, C))), attrs={"dtype": "f32", "rows": ROWS})
        plan = {"programs": {"grad": Program(launches=(launch,))}}
        source = lower_plan(plan, DEFAULT)["kernels/embedding.cu"]
    finally:
        embedding.SUM_FLOATS, embedding.MAX_BLOCK_ROWS = saved
    (launch,) = plan["programs"]["grad"].launches
    cuda = launch.cuda
    fn = cp.RawModule(code=source, options=NVRTC_OPTIONS).get_function(cuda.kernel)
    fn.max_dynamic_shared_size_bytes = cuda.smem
    return fn, cuda


def main(argv=None) -> int:
    p = ArgumentParser(prog="tools/embedding_grad_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=literals.integer, default=20, help="timed runs per distribution; the median is shown")
    p.add_argument("--seed", type=literals.integer, default=0, help="seed of the ids and gradient rows")
    p.add_argument("--variants", nargs="*", default=[], metavar="FLOATS:ROWS",
                   help="other SUM_FLOATS:MAX_BLOCK_ROWS to render and time, e.g. 12288:32")
    args = p.parse_args(argv)
    p.require_gpu("this harness runs the kernels")
    import cupy as cp
    variants = [(embedding.SUM_FLOATS, embedding.MAX_BLOCK_ROWS)] + [tuple(map(int, v.split(":"))) for v in args.variants]
    rng = np.random.default_rng(args.seed)
    g32 = cp.asarray(rng.standard_normal((B, T, C), dtype=np.float32))
    bits = g32.view(cp.uint32)
    g = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(cp.uint16)  # bf16, to nearest even
    g64 = (g.astype(cp.uint32) << 16).view(cp.float32).astype(cp.float64).reshape(B * T, C)
    out = cp.empty((ROWS, C), cp.float32)
    draws = {kind: draw_ids(kind, rng) for kind in ("uniform", "zipf", "few")}
    print(f"embedding_grad {ROWS} x {C} from {B} x {T} ids")
    print(f"{'floats:rows':>11} {'grid':>6} {'block':>5} {'smem':>6} {'ids':8} {'distinct':>8} {'top id':>6} "
          f"{'error':>8} ok  {'ms':>7} {'GB/s':>7}")
    ok = True
    for sum_floats, max_rows in variants:
        fn, cuda = render(cp, sum_floats, max_rows)
        for kind, ids_host in draws.items():
            ids = cp.asarray(ids_host)
            out.fill(np.nan)
            fn(tuple(cuda.grid), tuple(cuda.block), (out, ids, g), shared_mem=cuda.smem)
            ref = cp.zeros((ROWS, C), cp.float64)
            cp.add.at(ref, ids.reshape(-1), g64)
            got = out.astype(cp.float64)
            err = float(cp.linalg.norm(got - ref) / cp.linalg.norm(ref)) if bool(cp.isfinite(got).all()) else float("inf")
            times = []
            for k in range(args.repeat + 3):
                start, end = cp.cuda.Event(), cp.cuda.Event()
                start.record()
                fn(tuple(cuda.grid), tuple(cuda.block), (out, ids, g), shared_mem=cuda.smem)
                end.record()
                end.synchronize()
                if k >= 3:
                    times.append(cp.cuda.get_elapsed_time(start, end))
            ms = statistics.median(times)
            moved = ROWS * C * 4 + B * T * C * 2 + B * T * 4  # the table written, the rows and ids read
            counts = np.bincount(ids_host.reshape(-1), minlength=ROWS)
            ok &= err <= TOLERANCE
            print(f"{sum_floats:>5}:{max_rows:<5} {cuda.grid[0]:6} {cuda.block[0]:5} {cuda.smem:6} {kind:8} "
                  f"{int((counts > 0).sum()):8} {counts.max() / counts.sum():6.3f} {err:8.1e} "
                  f"{'yes' if err <= TOLERANCE else 'NO '} {ms:7.3f} {moved / ms / 1e6:7.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
