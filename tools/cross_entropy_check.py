"""python tools/cross_entropy_check.py: the fused loss kernel checked against the two it replaces, and timed.

For each shape (rows x vocabulary), cross_entropy, cross_entropy_grad and cross_entropy_with_grad
are rendered from their template (graphgpt/families/cross_entropy/) as a plan renders them and run as a training plan
runs them, the gradient written over the logits: the pair (the loss, then its gradient) and the
fused kernel, each on a fresh copy of the same random logits with the loss poisoned (NaN) first.
The fused kernel must give the pair's bits (loss and every gradient element); both are compared
with float64 references computed on the GPU (norm-relative). The fused kernel that also writes the
gradient's E5M2 copy (passes/fp8.py's fp8_grad) must give the fused kernel's loss and gradient bits,
and a copy and factor with the bytes quantize's reference makes of that gradient at the bound
|dloss| / rows (checked on the host, for shapes of at most CHECKED_COPY elements). Then each variant is timed with
CUDA events around its launches alone (the logits are restored from an untimed copy before every
run, so each run reads logits, not the last run's gradient), median of `--repeat` runs after
warm-up; the pair is timed again after the fused kernel, so the table shows the spread.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

import statistics  # noqa: E402

import numpy as np  # noqa: E402

from graphgpt import literals  # noqa: E402
from graphgpt.codegen import NVRTC_OPTIONS, lower_plan  # noqa: E402
from graphgpt.dtypes import DTYPES, E5M2  # noqa: E402
from graphgpt.numpy_ops import BY_OP  # noqa: E402
from graphgpt.ops import REGISTRY  # noqa: E402
from graphgpt.ops.registry import Spec  # noqa: E402
from graphgpt.plan import Buffer, Launch, Program  # noqa: E402
from graphgpt.errors import ArgumentParser  # noqa: E402
from graphgpt.target import DEFAULT  # noqa: E402

TOLERANCE = {"bf16": 4e-3, "f32": 1e-5}  # the gradient's; bf16's is its rounding on store (2^-9 relative)
SHAPES = [  # (label, rows, vocabulary, dtype)
    ("124M", 16 * 1024, 50304, "bf16"),
    ("124M-chunk", 4 * 1024, 50304, "bf16"),  # one of the four chunks a 124M plan's classifier runs in
    ("124M-f32", 16 * 1024, 50304, "f32"),
    ("seed", 16 * 256, 172, "bf16"),
]
CHECKED_COPY = 4096 * 50304  # the E5M2 copies checked against the host's reference: a 124M chunk's at most


def launches(rows: int, vocab: int, dtype: str) -> list[Launch]:
    """The four launches (the loss, its gradient, both, both with the gradient's E5M2 copy), each
    buffer at offset 0 of an array of its own."""
    ins = [Buffer(dtype, 0, (rows, vocab)), Buffer("i32", 0, (rows,)), Buffer("f32", 0, ())]
    out = []
    for op, attrs in (("cross_entropy", {}), ("cross_entropy_grad", {}), ("cross_entropy_with_grad", {}),
                      ("cross_entropy_with_grad", {"fp8_grad": E5M2, "grad_dtype": dtype})):
        inputs = ins[:2] if op == "cross_entropy" else ins
        specs = REGISTRY[op].infer(attrs, *[Spec(b.shape, b.dtype) for b in inputs])
        outs = [Buffer(s.dtype, 0, tuple(s.shape)) for s in (specs if isinstance(specs, list) else [specs])]
        out.append(Launch(op=op, out=outs[0], outs=tuple(outs) if len(outs) > 1 else None, ins=tuple(inputs), attrs=attrs))
    return out


def to_float64(cp, array, dtype: str):
    """A device array of the plan's dtype (bf16 as its bits) as float64, on the device."""
    if dtype == "bf16":
        return (array.astype(cp.uint32) << 16).view(cp.float32).astype(cp.float64)
    return array.astype(cp.float64)


def from_float32(cp, x, dtype: str):
    """Float32 values as a device array of the plan's dtype (bf16 rounded to nearest even, as its bits)."""
    if dtype == "f32":
        return x.astype(cp.float32)
    bits = x.astype(cp.float32).view(cp.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(cp.uint16)


def random_logits(cp, rows: int, vocab: int, dtype: str, seed: int):
    """3 x standard normal in the plan's dtype."""
    return from_float32(cp, 3 * cp.random.default_rng(seed).standard_normal((rows, vocab), dtype=cp.float32), dtype)


def rel_err(cp, got, ref) -> float:
    if not bool(cp.isfinite(got).all()):
        return float("inf")
    return float(cp.linalg.norm(got - ref) / max(float(cp.linalg.norm(ref)), 1e-30))


def check_shape(cp, label: str, rows: int, vocab: int, dtype: str, repeat: int, seed: int) -> dict:
    plan = {"programs": {"loss": Program(launches=tuple(launches(rows, vocab, dtype)))}}
    module = cp.RawModule(code=lower_plan(plan, DEFAULT)["kernels/cross_entropy.cu"], options=NVRTC_OPTIONS)
    kernels = {ln.op + ("_copy" if ln.attrs else ""): (module.get_function(ln.cuda.kernel), ln.cuda)
               for ln in plan["programs"]["loss"].launches}
    pristine = random_logits(cp, rows, vocab, dtype, seed)
    targets = cp.asarray(np.random.default_rng(seed).integers(0, vocab, rows, dtype=np.int32))
    g = cp.asarray(np.float32(1.0))
    z, loss = cp.empty_like(pristine), cp.empty((), cp.float32)
    copy, factor = cp.empty((rows, vocab), cp.uint8), cp.empty((), cp.float32)

    def launch(op, *args):
        fn, cuda = kernels[op]
        if cuda.smem > 48 << 10:  # a wide row staged in shared memory
            fn.max_dynamic_shared_size_bytes = cuda.smem
        fn(tuple(cuda.grid), tuple(cuda.block), args, shared_mem=cuda.smem)

    variants = {"pair": lambda: (launch("cross_entropy", loss, z, targets),
                                 launch("cross_entropy_grad", z, z, targets, g)),
                "fused": lambda: launch("cross_entropy_with_grad", loss, z, z, targets, g),
                "fused+copy": lambda: launch("cross_entropy_with_grad_copy", loss, z, copy, factor, z, targets, g),
                "loss": lambda: launch("cross_entropy", loss, z, targets),
                "grad": lambda: launch("cross_entropy_grad", z, z, targets, g)}
    got = {}
    for name in ("pair", "fused", "fused+copy"):
        z[...] = pristine
        loss.fill(np.nan)
        copy.fill(0x7F)  # E5M2's NaN
        factor.fill(np.nan)
        variants[name]()
        cp.cuda.Device().synchronize()
        got[name] = (cp.asnumpy(loss).tobytes(), float(loss), z.copy())
    same = all(got["pair"][0] == got[k][0] and bool((got["pair"][2] == got[k][2]).all()) for k in ("fused", "fused+copy"))
    copied = rows * vocab > CHECKED_COPY or copy_matches(cp.asnumpy(got["fused"][2]), cp.asnumpy(copy), cp.asnumpy(factor),
                                                         dtype, float(g), rows)
    zf = to_float64(cp, pristine, dtype)
    m = zf.max(axis=1, keepdims=True)
    lse = m + cp.log(cp.exp(zf - m).sum(axis=1, keepdims=True))
    at = cp.arange(rows)
    ref_loss = float((lse[:, 0] - zf[at, targets]).mean())
    ref_grad = cp.exp(zf - lse)
    ref_grad[at, targets] -= 1.0
    ref_grad /= rows
    del zf
    errors = {"loss": abs(got["fused"][1] - ref_loss) / abs(ref_loss),
              "grad": rel_err(cp, to_float64(cp, got["fused"][2], dtype), ref_grad)}
    del ref_grad, got

    def time_ms(name: str) -> float:
        times = []
        for k in range(repeat + 3):  # three runs of warm-up
            z[...] = pristine
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            variants[name]()
            end.record()
            end.synchronize()
            if k >= 3:
                times.append(cp.cuda.get_elapsed_time(start, end))
        return statistics.median(times)
    ms = {name: time_ms(name) for name in ("pair", "fused", "fused+copy", "loss", "grad")}
    ms["pair again"] = time_ms("pair")
    logits_bytes = rows * vocab * DTYPES[dtype].bytes
    ok = same and copied and errors["loss"] <= 1e-5 and errors["grad"] <= TOLERANCE[dtype]
    return {"shape": label, "rows": rows, "vocab": vocab, "dtype": dtype, "same_bits": same, "ok": ok, "errors": errors,
            "ms": ms, "logits_GB": logits_bytes / 1e9,
            "fused_TBps": 2 * logits_bytes / ms["fused"] / 1e9}  # its floor: the logits read once, written once


def copy_matches(grad_bits: np.ndarray, copy: np.ndarray, factor: np.ndarray, dtype: str, g: float, rows: int) -> bool:
    """Whether the kernel's E5M2 copy and factor are the bytes of quantize's reference of the
    gradient it stored, at the bound |g| / rows."""
    grad = grad_bits.view(DTYPES[dtype].numpy).astype(np.float32)
    want, want_factor = BY_OP["quantize"]({"dtype": E5M2, "transpose": False}, grad, np.float32(abs(g)) / np.float32(rows))
    return (want.astype(DTYPES[E5M2].numpy).view(np.uint8).tobytes() == copy.tobytes()
            and want_factor.tobytes() == factor.tobytes())


def main(argv=None) -> int:
    p = ArgumentParser(prog="tools/cross_entropy_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=literals.integer, default=20, help="timed runs per variant; the median is shown")
    p.add_argument("--only", nargs="*", help="shape labels to run (default: all)")
    p.add_argument("--seed", type=literals.integer, default=None, help="the random logits' seed (default: a fresh one, printed)")
    args = p.parse_args(argv)
    p.require_gpu("this harness runs the kernels")
    import cupy as cp
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
    print(f"seed {seed}")
    rows = [check_shape(cp, *s, args.repeat, seed) for s in SHAPES if not args.only or s[0] in args.only]
    print(f"{'shape':9} {'rows':>6} {'vocab':>6} {'type':5} {'same bits':9} {'loss err':>8} {'grad err':>8} ok  "
          f"{'pair ms':>8} {'fused ms':>8} {'+copy ms':>8} {'again':>8} {'loss ms':>8} {'grad ms':>8} {'fused TB/s':>10}")
    for r in rows:
        ms = r["ms"]
        print(f"{r['shape']:9} {r['rows']:6} {r['vocab']:6} {r['dtype']:5} {'yes' if r['same_bits'] else 'NO':9} "
              f"{r['errors']['loss']:8.1e} {r['errors']['grad']:8.1e} {'yes' if r['ok'] else 'NO '} "
              f"{ms['pair']:8.3f} {ms['fused']:8.3f} {ms['fused+copy']:8.3f} "
              f"{ms['pair again']:8.3f} {ms['loss']:8.3f} {ms['grad']:8.3f} {r['fused_TBps']:10.2f}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
