"""python tools/gemm_epilogue_check.py: cuBLASLt's GELU and bias-gradient epilogues on GPT-2's GEMMs,
checked against float64 and timed against the plain GEMM they would replace a kernel beside.

For each model shape (tokens T, width C) and dtype, three kinds of GEMM, each lowered from a
matmul launch by kernels/gemm.py as a plan lowers it and run through runtime/cublas.py:
- "fc forward": x[T,C] @ W[C,4C] + b with epilogue gelu_aux_bias (D = GELU(pre), aux = pre),
  against the same GEMM with the bias epilogue alone (a gelu kernel then reads pre, writes D);
- "proj dgrad": dy[T,C] @ W[4C,C]^T with epilogue dgelu at aux = pre (D = GELU'(pre) * product),
  against the plain GEMM (a gelu_grad kernel then reads both, writes D);
- "wgrad <in>x<out>": X[T,in]^T @ dY[T,out] into float32 with epilogue bgrada writing dY's column
  sums (the bias gradient) in float32, against the plain GEMM (a column sum then reads dY).
Every output is poisoned (NaN) before its checked run and compared with float64 on the GPU,
norm-relative; a bf16 proj dgrad is also compared with the product rounded to bf16 before the
derivative multiplies it, which tells where cuBLASLt rounds. Times: CUDA events around single
calls, median of --repeat after warm-up. A case cuBLASLt has no algorithm for is reported as such.

Measured on an H200 (2026-12-01), extra microseconds over the plain GEMM: the GELU epilogues +35
(forward) and +43 (gradient) at GPT-2 124M's 16384 x 3072, where the gelu and gelu_grad kernels
take 60 and 77; +2 and +16 at the seed's 4096 x 1536, where they take about 6 and 7 (so the plan
keeps the seed's gelu_grad kernel: passes/fuse.py). The bias-gradient epilogue costs more than the
column sums it would replace at both sizes (+119 us a layer at 124M against about 58), so plans
do not use it.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

import statistics  # noqa: E402

from graphgpt import literals  # noqa: E402
from graphgpt.kernels.gemm import lower_matmul  # noqa: E402
from graphgpt.families.elementwise.reference import GELU_C  # noqa: E402
from graphgpt.plan import Buffer, Gemm, Launch  # noqa: E402
from graphgpt.errors import ArgumentParser  # noqa: E402
from tools.cross_entropy_check import from_float32 as from_f32, rel_err, to_float64 as to_f64  # noqa: E402

TOLERANCE = {"bf16": 1e-2, "f32": 1e-5}
SHAPES = [("124M", 16 * 1024, 768, "bf16"), ("seed", 16 * 256, 384, "bf16"), ("seed-f32", 16 * 256, 384, "f32")]


def poison(cp, x, dtype):
    x.fill(0x7FC0 if dtype == "bf16" else float("nan"))


def gelu64(cp, x):
    return 0.5 * x * (1.0 + cp.tanh(GELU_C * (x + 0.044715 * x ** 3)))


def gelu_grad64(cp, x):
    t = cp.tanh(GELU_C * (x + 0.044715 * x ** 3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3 * 0.044715 * x * x)


def gemm_of(a, b, out, ta=False, tb=False) -> Gemm:
    return lower_matmul(Launch(op="matmul", ins=(a, b), out=out, attrs={"ta": ta, "tb": tb})).gemm


def buf(dtype, shape) -> Buffer:
    return Buffer(dtype, 0, tuple(shape))


def time_ms(cp, run, repeat: int) -> float:
    times = []
    for k in range(repeat + 3):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        run()
        end.record()
        end.synchronize()
        if k >= 3:
            times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def cases(cp, blas, T: int, C: int, dtype: str, rng):
    """(name, run with epilogue or None, plain run, check() -> error) for one shape."""
    dt = cp.uint16 if dtype == "bf16" else cp.float32

    def rand(*shape, scale=1.0):
        return from_f32(cp, scale * rng.standard_normal(shape, dtype=cp.float32), dtype)

    def plan(g, a, b, d, *args, **kw):
        try:
            return blas.lt_plan(g, a.data.ptr, b.data.ptr, d.data.ptr, *args, **kw)
        except RuntimeError as e:
            return str(e)

    out = []
    # fc forward
    x, w, bias = rand(T, C), rand(C, 4 * C, scale=C ** -0.5), rand(4 * C, scale=0.1)
    d, aux = cp.empty((T, 4 * C), dt), cp.empty((T, 4 * C), dt)
    g = gemm_of(buf(dtype, (T, C)), buf(dtype, (C, 4 * C)), buf(dtype, (T, 4 * C)))
    fused = plan(g, w, x, d, "gelu_aux_bias", bias=(bias.data.ptr, dtype), aux=(aux.data.ptr, dtype))
    plain = plan(g, w, x, d, "bias", bias=(bias.data.ptr, dtype))

    def check_fc(fused=fused):
        poison(cp, d, dtype), poison(cp, aux, dtype)
        fused()
        pre = to_f64(cp, x, dtype) @ to_f64(cp, w, dtype) + to_f64(cp, bias, dtype)
        return max(rel_err(cp, to_f64(cp, aux, dtype), pre), rel_err(cp, to_f64(cp, d, dtype), gelu64(cp, pre)))
    out.append(("fc forward", fused, plain, check_fc))
    # proj dgrad, aux = the pre-activation of the forward just run
    pre = from_f32(cp, 1.5 * rng.standard_normal((T, 4 * C), dtype=cp.float32), dtype)
    dy, wp, dx = rand(T, C), rand(4 * C, C, scale=C ** -0.5), cp.empty((T, 4 * C), dt)
    g = gemm_of(buf(dtype, (T, C)), buf(dtype, (4 * C, C)), buf(dtype, (T, 4 * C)), tb=True)
    fused = plan(g, wp, dy, dx, "dgelu", aux=(pre.data.ptr, dtype))
    plain = plan(g, wp, dy, dx)

    def check_dgrad(fused=fused):
        poison(cp, dx, dtype)
        fused()
        product = to_f64(cp, dy, dtype) @ to_f64(cp, wp, dtype).T
        derivative = gelu_grad64(cp, to_f64(cp, pre, dtype))
        if dtype == "bf16":  # also against the product rounded to bf16 first, as separate ops round it
            rounded = to_f64(cp, from_f32(cp, product, dtype), dtype) * derivative
            print(f"  dgelu {T}x{4 * C} bf16: error {rel_err(cp, to_f64(cp, dx, dtype), product * derivative):.2e}"
                  f" against the unrounded product, {rel_err(cp, to_f64(cp, dx, dtype), rounded):.2e} against"
                  f" it rounded to bf16 first; the rounded reference against the unrounded one:"
                  f" {rel_err(cp, to_f64(cp, from_f32(cp, rounded, dtype), dtype), product * derivative):.2e}")
        return rel_err(cp, to_f64(cp, dx, dtype), product * derivative)
    out.append(("proj dgrad", fused, plain, check_dgrad))
    # weight gradients with their bias gradient
    for n_in, n_out in ((C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)):
        xs, gy = rand(T, n_in), rand(T, n_out)
        dw, db = cp.empty((n_in, n_out), cp.float32), cp.empty(n_out, cp.float32)
        g = gemm_of(buf(dtype, (T, n_in)), buf(dtype, (T, n_out)), buf("f32", (n_in, n_out)), ta=True)
        fused = plan(g, gy, xs, dw, "bgrada", bias=(db.data.ptr, "f32"))
        plain = plan(g, gy, xs, dw)

        def check_wgrad(xs=xs, gy=gy, dw=dw, db=db, fused=fused):
            dw.fill(float("nan")), db.fill(float("nan"))
            fused()
            gy64 = to_f64(cp, gy, dtype)
            return max(rel_err(cp, dw.astype(cp.float64), to_f64(cp, xs, dtype).T @ gy64),
                       rel_err(cp, db.astype(cp.float64), gy64.sum(0)))
        out.append((f"wgrad {n_in}x{n_out} + bias grad", fused, plain, check_wgrad))
    return out


def main() -> int:
    parser = ArgumentParser(prog="tools/gemm_epilogue_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=literals.integer, default=20)
    args = parser.parse_args()
    parser.require_gpu("this harness runs the kernels")
    import cupy as cp

    from graphgpt.runtime.cublas import WORKSPACE_BYTES, Cublas
    stream = cp.cuda.Stream(non_blocking=True)
    workspace = cp.empty(WORKSPACE_BYTES, cp.uint8)
    rows, failed = [], False
    with stream:
        blas = Cublas(stream.ptr, workspace.data.ptr)
        rng = cp.random.default_rng(0)
        for label, T, C, dtype in SHAPES:
            for name, fused, plain, check in cases(cp, blas, T, C, dtype, rng):
                if isinstance(fused, str):
                    rows.append((label, name, "no algorithm", "", "", "")), print(label, name, fused)
                    continue
                err = check()
                ok = err <= TOLERANCE[dtype]
                failed |= not ok
                ms_f, ms_p = time_ms(cp, fused, args.repeat), time_ms(cp, plain, args.repeat)
                rows.append((label, name, f"{err:.1e}{'' if ok else ' FAIL'}", f"{ms_p:.4f}", f"{ms_f:.4f}",
                             f"{(ms_f - ms_p) * 1e3:+.1f}"))
        blas.close()
    print(f"{'shape':9} {'GEMM':30} {'error':>12} {'plain ms':>9} {'epilogue ms':>12} {'extra us':>9}")
    for r in rows:
        print(f"{r[0]:9} {r[1]:30} {r[2]:>12} {r[3]:>9} {r[4]:>12} {r[5]:>9}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
