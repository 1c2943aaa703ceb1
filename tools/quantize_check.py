"""python tools/quantize_check.py: the FP8 kernels (abs_max, quantize) checked against NumPy, and timed.

For each shape (rows x columns of a bf16 or float32 matrix, copied as it lies or transposed, to
E4M3 or to E5M2),
abs_max and quantize are rendered from their template (graphgpt/families/quantize/) as a plan
renders them and run as the fp8 pass chains them, quantize reading abs_max's result, over poisoned
outputs on fresh random x (3 x standard normal). The largest magnitude must be NumPy's exactly, the
FP8 copy the NumPy reference's bytes and the factor its float32 bits. Then each kernel is timed with
CUDA events around its launch alone, median of `--repeat` runs after warm-up, and shown as GB/s of
the bytes it must move (abs_max: x read once; quantize: x read once, the copy written once).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

import numpy as np  # noqa: E402

from graphgpt import literals  # noqa: E402
from graphgpt.codegen import NVRTC_OPTIONS, lower_plan  # noqa: E402
from graphgpt.dtypes import DTYPES, E5M2, FP8  # noqa: E402
from graphgpt.errors import ArgumentParser  # noqa: E402
from graphgpt.numpy_ops import BY_OP  # noqa: E402
from graphgpt.ops import REGISTRY  # noqa: E402
from graphgpt.ops.registry import Spec  # noqa: E402
from graphgpt.plan import Buffer, Launch, Program  # noqa: E402
from graphgpt.target import DEFAULT  # noqa: E402
from tools.attention_check import time_ms  # noqa: E402
from tools.cross_entropy_check import from_float32  # noqa: E402

SHAPES = [  # (label, rows, columns, dtype, transposed, FP8 type)
    ("124M-acts", 16 * 1024, 768, "bf16", False, FP8),   # a GPT-2 124M step's activations into a 768-wide product
    ("seed-acts", 4 * 1024, 768, "bf16", False, FP8),
    ("wte", 50304, 768, "bf16", False, FP8),             # GPT-2's token embedding, the classifier's weight
    ("wte-T", 50304, 768, "bf16", True, FP8),
    ("fc-T", 768, 3072, "bf16", True, FP8),              # an MLP's first weight (k, n), quantized as (n, k)
    ("124M-dh", 16 * 1024, 3072, "bf16", False, E5M2),   # the gradient into an MLP's first product (fp8_grad)
]


def launches(rows: int, cols: int, dtype: str, transpose: bool, fp8: str) -> list[Launch]:
    """abs_max of x and quantize of x to `fp8` reading it, each buffer at offset 0 of an array of its own."""
    x = Buffer(dtype, 0, (rows, cols))
    amax = Buffer("f32", 0, ())
    attrs = {"transpose": transpose, "dtype": fp8}
    specs = REGISTRY["quantize"].infer(attrs, Spec(x.shape, x.dtype), Spec((), "f32"))
    q, factor = (Buffer(s.dtype, 0, tuple(s.shape)) for s in specs)
    return [Launch(op="abs_max", out=amax, ins=(x,)),
            Launch(op="quantize", out=q, outs=(q, factor), ins=(x, amax), attrs=attrs)]


def check_shape(cp, label: str, rows: int, cols: int, dtype: str, transpose: bool, fp8: str, repeat: int, seed: int) -> dict:
    plan = {"programs": {"fp8": Program(launches=tuple(launches(rows, cols, dtype, transpose, fp8)))}}
    module = cp.RawModule(code=lower_plan(plan, DEFAULT)["kernels/quantize.cu"], options=NVRTC_OPTIONS)
    find, quantize = plan["programs"]["fp8"].launches
    x = from_float32(cp, 3 * cp.random.default_rng(seed).standard_normal((rows, cols), dtype=cp.float32), dtype)
    amax, factor = cp.full((), np.nan, np.float32), cp.full((), np.nan, np.float32)
    q = cp.full(quantize.out.shape, 0x7F, np.uint8)  # a NaN of both FP8 types
    kernels = {"abs_max": (module.get_function(find.cuda.kernel), find.cuda, (amax, x)),
               "quantize": (module.get_function(quantize.cuda.kernel), quantize.cuda, (q, factor, x, amax))}

    def launch(name: str):
        fn, cuda, args = kernels[name]
        fn(tuple(cuda.grid), tuple(cuda.block), args)

    launch("abs_max")
    launch("quantize")
    host = cp.asnumpy(x).view(DTYPES[dtype].numpy).astype(np.float32)
    want_amax = BY_OP["abs_max"]({}, host)
    want_q, want_factor = BY_OP["quantize"](quantize.attrs, host, want_amax)
    got_q = cp.asnumpy(q)
    want_q = want_q.astype(DTYPES[fp8].numpy).view(np.uint8)
    checks = {"amax": cp.asnumpy(amax).tobytes() == want_amax.tobytes(),
              "q": got_q.tobytes() == want_q.tobytes(), "factor": cp.asnumpy(factor).tobytes() == want_factor.tobytes()}
    ms = {name: time_ms(cp, lambda name=name: launch(name), repeat) for name in kernels}
    x_bytes = rows * cols * DTYPES[dtype].bytes
    moved = {"abs_max": x_bytes, "quantize": x_bytes + rows * cols}
    return {"shape": label, "rows": rows, "cols": cols, "dtype": dtype, "transpose": transpose, "fp8": fp8, "checks": checks,
            "ok": all(checks.values()), "ms": ms, "GBps": {name: moved[name] / ms[name] / 1e6 for name in ms}}


def main(argv=None) -> int:
    p = ArgumentParser(prog="tools/quantize_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=literals.integer, default=20, help="timed runs per kernel; the median is shown")
    p.add_argument("--only", nargs="*", help="shape labels to run (default: all)")
    p.add_argument("--seed", type=literals.integer, default=int(np.random.SeedSequence().generate_state(1)[0]),
                   help="the random x's seed (default: a fresh one, printed)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only or ()) - {s[0] for s in SHAPES})
    if unknown:
        p.error(f"--only: unknown shape {', '.join(unknown)}; known: {', '.join(s[0] for s in SHAPES)}")
    p.require_gpu("this harness runs the kernels")
    import cupy as cp
    print(f"seed {args.seed}")
    rows = [check_shape(cp, *s, args.repeat, args.seed) for s in SHAPES if not args.only or s[0] in args.only]
    print(f"{'shape':10} {'rows':>6} {'cols':>5} {'type':5} {'T':1} {'to':4} {'amax':4} {'q':4} {'1/s':4} ok  "
          f"{'abs_max ms':>10} {'GB/s':>6} {'quantize ms':>11} {'GB/s':>6}")
    yes = {True: "yes", False: "NO"}
    for r in rows:
        ms, gbps, c = r["ms"], r["GBps"], r["checks"]
        print(f"{r['shape']:10} {r['rows']:6} {r['cols']:5} {r['dtype']:5} {'T' if r['transpose'] else '-'} {r['fp8']:4} "
              f"{yes[c['amax']]:4} {yes[c['q']]:4} {yes[c['factor']]:4} {yes[r['ok']]:3} "
              f"{ms['abs_max']:10.4f} {gbps['abs_max']:6.0f} {ms['quantize']:11.4f} {gbps['quantize']:6.0f}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
