"""python tools/attention_check.py: the fused attention kernels checked and timed in one GPU run.

For each shape, the three kernels (forward, query gradient, key/value gradient) are rendered from
graphgpt/families/attention/attention.cu.j2 exactly as a plan renders them, run on fresh random
inputs with their outputs poisoned (NaN) before each launch, and checked against the float64 NumPy
references of graphgpt/families/attention/reference.py on two batch entries (norm-relative error:
1e-2 in bf16, 1e-5 in float32). Then each is timed with CUDA events (the median of `--repeat`
launches after warm-up; the backward as its two kernels together and each alone), with PyTorch's
scaled_dot_product_attention (causal, same shapes and type) forward and forward + backward timed
in the same process when PyTorch is importable. FLOPs count the causal half: forward 4·B·H·T²·D/2,
backward 2.5 times that (five T x T x D products to the forward's two). The last column is the
largest stack frame of the three kernels in bytes: registers spilled to local memory.
`--tiling` renders the mma.sync kernels with other tilings, `--forward` the forward with the
mma.sync kernel or other Hopper tilings, and `--grad-q` and `--grad-kv` the backward's kernels the
same ways, to compare them in the same run; the kernel column names each kernel's variant where they differ.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

import argparse  # noqa: E402
import contextlib  # noqa: E402
import statistics  # noqa: E402
from unittest import mock  # noqa: E402

import numpy as np  # noqa: E402

from graphgpt import literals  # noqa: E402
from graphgpt.codegen import lower_plan  # noqa: E402
from graphgpt.dtypes import DTYPES  # noqa: E402
from graphgpt.families.attention import lowering as attention  # noqa: E402
from graphgpt.numpy_ops import BY_OP  # noqa: E402
from graphgpt.ops import REGISTRY  # noqa: E402
from graphgpt.ops.registry import Spec  # noqa: E402
from graphgpt.plan import Buffer, Launch, Program  # noqa: E402
from graphgpt.runtime.cuda_backend import device_dtype  # noqa: E402
from graphgpt.target import DEFAULT  # noqa: E402
from graphgpt.errors import ArgumentParser  # noqa: E402

SHAPES = [  # (label, B, H, T, D, dtype, dropout)
    ("124M", 16, 12, 1024, 64, "bf16", 0.0),
    ("124M-drop", 16, 12, 1024, 64, "bf16", 0.1),
    ("T2048", 8, 12, 2048, 64, "bf16", 0.0),
    ("D128", 16, 6, 1024, 128, "bf16", 0.0),
    ("seed", 16, 6, 256, 64, "bf16", 0.0),
    ("shakes", 64, 6, 256, 64, "bf16", 0.2),
    ("odd-T", 2, 3, 100, 64, "bf16", 0.0),
    ("f32", 2, 3, 256, 64, "f32", 0.0),
    ("f32-drop", 2, 3, 64, 64, "f32", 0.2),
    ("f32-odd", 2, 2, 37, 24, "f32", 0.0),
]
SEED, COUNTER, SITE = 1234, 5, 3  # the dropout RNG's key, counter and site in these runs
TOLERANCE = {"bf16": 1e-2, "f32": 1e-5}
OPS = ("causal_attention", "causal_attention_grad_q", "causal_attention_grad_kv")


def launches(b: int, h: int, t: int, d: int, dtype: str, attrs: dict) -> list[Launch]:
    """The three launches of one attention, each buffer in an array of its own (offset 0)."""
    qkv, x, rows = Buffer(dtype, 0, (b, t, 3, h, d)), Buffer(dtype, 0, (b, t, h, d)), Buffer("f32", 0, (b, h, t))
    rng = [Buffer("i32", 0, ()), Buffer("i32", 0, ())] if "dropout" in attrs else []
    ins = {"causal_attention": [qkv, *rng],
           "causal_attention_grad_q": [qkv, x, rows, x, *rng],
           "causal_attention_grad_kv": [qkv, rows, x, rows, x, *rng]}
    out = []
    for op, inputs in ins.items():
        specs = REGISTRY[op].infer(attrs, *[Spec(i.shape, i.dtype) for i in inputs])
        outs = [Buffer(s.dtype, 0, tuple(s.shape)) for s in (specs if isinstance(specs, list) else [specs])]
        out.append(Launch(op=op, out=outs[0], outs=tuple(outs), ins=tuple(inputs), attrs=attrs))
    return out


def to_device(cp, array: np.ndarray, dtype: str):
    return cp.asarray(array.astype(DTYPES[dtype].numpy).view(device_dtype(dtype)))


def from_device(cp, array, dtype: str) -> np.ndarray:
    return cp.asnumpy(array).view(DTYPES[dtype].numpy).astype(np.float64)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def time_ms(cp, fn, repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def check_shape(cp, label, b, h, t, d, dtype, dropout, repeat, torch) -> dict:
    attrs = {"scale": 1.0 / np.sqrt(d), **({"dropout": dropout, "site": SITE} if dropout else {})}
    plan = {"programs": {"attention": Program(launches=tuple(launches(b, h, t, d, dtype, attrs)))}}
    files = lower_plan(plan, DEFAULT)
    module = cp.RawModule(code=files["kernels/attention.cu"], options=tuple(plan["nvrtc_options"]))
    rng = np.random.default_rng(0)
    shapes = {"qkv": (b, t, 3, h, d), "g": (b, t, h, d)}
    host = {n: rng.standard_normal(shape).astype(DTYPES[dtype].numpy).astype(np.float64) for n, shape in shapes.items()}
    dev = {n: to_device(cp, a, dtype) for n, a in host.items()}
    rng = [cp.asarray(np.int32(SEED)), cp.asarray(np.int32(COUNTER))] if dropout else []
    host_rng = [np.int32(SEED), np.int32(COUNTER)] if dropout else []
    fwd, grad_q, grad_kv = plan["programs"]["attention"].launches
    kinds = {"out": dtype, "lse": "f32", "dq": dtype, "delta": "f32", "dqkv": dtype}
    shapes |= {"out": (b, t, h, d), "lse": (b, h, t), "dq": (b, t, h, d), "delta": (b, h, t), "dqkv": (b, t, 3, h, d)}
    bufs = {name: cp.empty(shapes[name], device_dtype(kind)) for name, kind in kinds.items()}

    local_bytes = {}  # per kernel: the stack frame its registers spill to

    def run(launch, outs, ins):
        cuda = launch.cuda
        fn = module.get_function(cuda.kernel)
        if cuda.smem > 48 << 10:
            fn.max_dynamic_shared_size_bytes = cuda.smem
        local_bytes[launch.op] = fn.attributes["local_size_bytes"]
        return lambda: fn(tuple(cuda.grid), tuple(cuda.block), (*[bufs[o] for o in outs], *ins),
                          shared_mem=cuda.smem)

    steps = [(run(fwd, ["out", "lse"], [dev["qkv"], *rng]), ["out", "lse"]),
             (run(grad_q, ["dq", "delta"], [dev["qkv"], bufs["out"], bufs["lse"], dev["g"], *rng]), ["dq", "delta"]),
             (run(grad_kv, ["dqkv"], [dev["qkv"], bufs["lse"], dev["g"], bufs["delta"], bufs["dq"], *rng]), ["dqkv"])]
    for step, outs in steps:  # poisoned, then computed in order: each reads what the one before wrote
        for o in outs:
            bufs[o].fill(0x7FC0 if bufs[o].dtype == np.uint16 else np.nan)
        step()
    cp.cuda.Device().synchronize()
    got = {n: from_device(cp, a, kinds[n]) for n, a in bufs.items()}
    # batch entries compared with NumPy (each is independent): the first and the last; with dropout
    # the first two, whose masks are numbered as they are for a batch of two
    picked = list(range(min(b, 2))) if dropout else sorted({0, b - 1})
    pick = {n: a[picked] for n, a in {**host, **got}.items()}
    ref_out, ref_lse = BY_OP["causal_attention"](attrs, pick["qkv"], *host_rng)
    ref_dq, ref_delta = BY_OP["causal_attention_grad_q"](attrs, pick["qkv"], ref_out, ref_lse, pick["g"], *host_rng)
    ref_dqkv = BY_OP["causal_attention_grad_kv"](attrs, pick["qkv"], ref_lse, pick["g"], ref_delta, ref_dq, *host_rng)
    errors = {n: rel_err(got_, ref) for n, got_, ref in [
        ("out", pick["out"], ref_out), ("lse", pick["lse"], ref_lse), ("delta", pick["delta"], ref_delta),
        ("dq", pick["dqkv"][:, :, 0], ref_dqkv[:, :, 0]), ("dk", pick["dqkv"][:, :, 1], ref_dqkv[:, :, 1]),
        ("dv", pick["dqkv"][:, :, 2], ref_dqkv[:, :, 2])]}
    again = cp.asnumpy(bufs["dqkv"]).copy()
    for step, _ in steps[1:]:
        step()
    deterministic = np.array_equal(again, cp.asnumpy(bufs["dqkv"]))
    ms = {"fwd": time_ms(cp, steps[0][0], repeat),
          "bwd": time_ms(cp, lambda: (steps[1][0](), steps[2][0]()), repeat),
          "grad_q": time_ms(cp, steps[1][0], repeat), "grad_kv": time_ms(cp, steps[2][0], repeat)}
    flops = 4 * b * h * t * t * d / 2
    kinds = [attention.variant(dtype, t, d, op, bool(dropout)) for op in OPS]
    kind = kinds[0] if len(set(kinds)) == 1 else "/".join(kinds)
    tiling = "/".join(",".join(map(str, attention.WGMMA_TILING[op][d] if v == "wgmma" else
                                    attention.mma_tiling(op, t, d, bool(dropout), b * h, DEFAULT)))
                      for op, v in zip(OPS, kinds) if v != "simt")
    row = {"shape": label, "B": b, "H": h, "T": t, "D": d, "dtype": dtype, "dropout": dropout, "variant": kind, "tiling": tiling,
           "errors": errors, "ok": deterministic and all(e <= TOLERANCE[dtype] for e in errors.values()),
           "deterministic": deterministic, "ms": ms, "spill": max(local_bytes.values()),
           "tflops": {"fwd": flops / ms["fwd"] / 1e9, "bwd": 2.5 * flops / ms["bwd"] / 1e9}}
    if torch is not None:
        row["torch_ms"] = torch_sdpa(torch, b, h, t, d, dtype, dropout, repeat)
    return row


def torch_sdpa(torch, b, h, t, d, dtype, dropout, repeat) -> dict:
    import torch.nn.functional as F
    kind = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=kind, requires_grad=True) for _ in range(3))
    g = torch.randn(b, h, t, d, device="cuda", dtype=kind)

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)

    def both():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout).backward(g)

    def timed(fn):
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeat):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        return statistics.median(times)
    fwd_ms, both_ms = timed(fwd), timed(both)
    return {"fwd": fwd_ms, "bwd": both_ms - fwd_ms}


def tiling_arg(text: str) -> dict:
    """M,W,C for all three kernels, or three of them (forward/grad_q/grad_kv), as a tiling per op."""
    try:
        parts = [tuple(int(x) for x in part.split(",")) for part in text.split("/")]
    except ValueError:
        parts = []
    parts = parts * 3 if len(parts) == 1 else parts
    if len(parts) != 3 or any(len(p) != 3 or p[0] not in (1, 2) or p[1] < 1 or 16 * p[0] * p[1] % attention.TILE
                              or p[2] < 16 or p[2] % 16 or attention.TILE % p[2] for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: want M,W,C or three of them joined by /: M 1 or 2, W warps with "
                                         f"16 M W a multiple of {attention.TILE}, C a multiple of 16 dividing it")
    return dict(zip(OPS, parts))


def tiled(by_op: dict | None):
    """The tensor-core kernels rendered with by_op's tilings where T holds whole blocks of them."""
    if by_op is None:
        return contextlib.nullcontext()
    plan_tiling = attention.mma_tiling

    def chosen(op, t, d, dropout, heads, target):
        m, w, _ = by_op[op]
        return by_op[op] if t % (16 * m * w) == 0 else plan_tiling(op, t, d, dropout, heads, target)
    return mock.patch.object(attention, "mma_tiling", chosen)


def kernel_arg(text: str):
    """'mma', or a Hopper kernel's tiling G,N,S,B: warpgroups a block, rows of the other side a
    tile, stages, blocks an SM."""
    if text == "mma":
        return text
    try:
        g, n, stages, blocks = (int(x) for x in text.split(","))
    except ValueError:
        g = 0
    if g not in (1, 2, 3) or n not in (32, 64, 128) or not 3 <= stages <= 6 or blocks not in (1, 2, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: want mma or G,N,S,B: G 1 to 3 warpgroups, N 32, 64 or 128 "
                                         f"rows a tile, S 3 to 6 stages, B 1 to 3 blocks an SM")
    return g, n, stages, blocks


def kernel_choice(op: str, choice):
    """op rendered as `choice` says (kernel_arg) where the plan would take the Hopper kernel: the
    tensor-core kernel of the mma variant, or the Hopper one with another tiling at both head dims."""
    if choice is None:
        return contextlib.nullcontext()
    if choice == "mma":
        plan_variant = attention.variant

        def chosen(dtype, t, d, which="causal_attention", dropout=False):
            kind = plan_variant(dtype, t, d, which, dropout)
            return "mma" if kind == "wgmma" and which == op else kind
        return mock.patch.object(attention, "variant", chosen)
    return mock.patch.dict(attention.WGMMA_TILING[op], {64: choice, 128: choice})


def main(argv=None) -> int:
    p = ArgumentParser(prog="tools/attention_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=literals.integer, default=20, help="timed launches per kernel; the median is shown")
    p.add_argument("--only", nargs="*", help="shape labels to run (default: all)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch's timings")
    p.add_argument("--tiling", action="append", type=tiling_arg, metavar="M,W,C[/M,W,C/M,W,C]",
                   help="run the tensor-core kernels with this tiling instead of the plan's "
                        "(graphgpt/families/attention/lowering.py, mma_tiling): M 16-row m-tiles a warp, W warps, "
                        "the other side's rows C at a time; one for all three kernels or forward/grad_q/grad_kv. "
                        "Repeat to compare several; each shape runs once per tiling, PyTorch timed on the first")
    for flag, op in (("--forward", "forward"), ("--grad-q", "query gradient"), ("--grad-kv", "key/value gradient")):
        p.add_argument(flag, action="append", type=kernel_arg, metavar="mma|G,N,S,B",
                       help=f"the {op} where the plan takes Hopper's warpgroup products (lowering.py, variant): mma for "
                            "the mma.sync kernel, or the Hopper kernel with G warpgroups a block, N rows of the other "
                            "side a tile, S stages and B blocks an SM. Repeat to compare several, as --tiling")
    args = p.parse_args(argv)
    p.require_gpu("this harness runs the kernels")
    import cupy as cp
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            pass
    rows = []
    for s in SHAPES:
        if not args.only or s[0] in args.only:
            runs = [(by_op, choice, dq, dkv) for by_op in args.tiling or [None] for choice in args.forward or [None]
                    for dq in args.grad_q or [None] for dkv in args.grad_kv or [None]]
            for n, (by_op, choice, dq, dkv) in enumerate(runs):
                with tiled(by_op), kernel_choice(OPS[0], choice), kernel_choice(OPS[1], dq), kernel_choice(OPS[2], dkv):
                    rows.append(check_shape(cp, *s, args.repeat, torch if n == 0 else None))
    print(f"{'shape':9} {'B':>3} {'H':>3} {'T':>5} {'D':>4} {'type':5} {'drop':>4} {'kernel':9} {'tiling':20} {'max err':>8} ok  "
          f"{'fwd ms':>7} {'bwd ms':>7} {'dq ms':>7} {'dkv ms':>7} {'fwd TF/s':>8} {'bwd TF/s':>8} {'sdpa fwd':>8} {'sdpa bwd':>8} spill")
    for r in rows:
        t = r.get("torch_ms", {})
        print(f"{r['shape']:9} {r['B']:3} {r['H']:3} {r['T']:5} {r['D']:4} {r['dtype']:5} {r['dropout']:4.2f} {r['variant']:9} {r['tiling']:20} "
              f"{max(r['errors'].values()):8.1e} {'yes' if r['ok'] else 'NO '} {r['ms']['fwd']:7.3f} "
              f"{r['ms']['bwd']:7.3f} {r['ms']['grad_q']:7.3f} {r['ms']['grad_kv']:7.3f} {r['tflops']['fwd']:8.1f} "
              f"{r['tflops']['bwd']:8.1f} {t.get('fwd', float('nan')):8.3f} {t.get('bwd', float('nan')):8.3f} {r['spill']:5}")
        if not r["ok"]:
            print("   errors:", {k: f"{v:.2e}" for k, v in r["errors"].items()}, "deterministic:", r["deterministic"])
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
