"""Every rendered kernel against its op's NumPy reference, on the GPU.

For each distinct (kernel, buffer shapes) launch of the tiny, a GPT-2 124M-shaped and the default
plan (float32 and bf16), of a grouped-query model's (tests/gqa_model.py), and of the synthetic launches of test_kernels_compile: fresh random
inputs of each buffer's dtype in their own arrays (placed at the launch's offset modulo 16 bytes,
so alignment is what the plan has), an output poisoned with NaN, two launches (the second checks
that reductions reset their tickets and give the same bits), and the float64 reference rounded
once to the output's dtype, as the kernel rounds.

Tolerances: a float32 output within 1e-5 (norm-relative) of the float64 reference. A bf16 output
is the float32 result rounded once; it differs from the rounded reference only where the float32
and float64 results fall on different sides of a rounding boundary, by one bf16 step (2^-8
relative) on those few elements, so the norm-relative error stays far below 2^-8: within 2^-10.
The fused attention's tensor-core kernels also round inside: the probabilities and score
gradients become bf16 operands of the second product, as in flash attention, so theirs is 1e-2.
An E4M3 output (quantize's) is the reference's bits: its power-of-two scale makes x 2^e exact in
float32 and float64 alike, so both round the same value once.
"""
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from graphgpt.codegen import NVRTC_OPTIONS, lower_plan
from graphgpt.dtypes import DTYPES, E5M2, FP8, FP8_TYPES
from graphgpt.numpy_ops import BY_OP
from graphgpt.ops import REGISTRY
from graphgpt.plan import Buffer, KernelCall, Launch
from graphgpt.target import DEFAULT
from tests.test_kernels_compile import KERNEL_PLANS, _launch, plan_data, program_data

pytestmark = pytest.mark.gpu
# E4M3 outputs are quantize's, of exact inputs; an E5M2 copy (the loss kernel's) is of a bf16
# gradient that the float64 reference rounds on its own: a bf16 step there flips an E5M2 rounding
# about once in 2^5, by an E5M2 step, 2^-2 (its bits against quantize of the kernel's own gradient
# are checked apart, in test_the_loss_kernels_e5m2_copy_is_quantize_of_its_own_gradient)
RTOL = {"f32": 1e-5, "bf16": 2.0**-10, FP8: 0.0, E5M2: 2.0**-4}
ROUNDS_INSIDE = {"bf16": 1e-2}  # kernels whose second product takes bf16 operands they computed
ATTENTION = ("causal_attention", "causal_attention_grad_q", "causal_attention_grad_kv")
# a row normaliser, its backward and its fused backward -> the normaliser (LayerNorm's, RMSNorm's)
NORMALISER_OF = {name: plain for plain, op in REGISTRY.items() if op.row_normaliser and op.row_normaliser.grad
                 for name in (plain, op.row_normaliser.grad, op.row_normaliser.fused_grad)}


def _distinct_launches(data: dict) -> list[Launch]:
    seen = {}
    for program in data["programs"].values():
        for launch in program.launches:
            if isinstance(launch.cuda, KernelCall):
                key = (launch.cuda.kernel, json.dumps([b.shape for b in launch.cuda.args]))
                seen.setdefault(key, launch)
    return list(seen.values())


def _int_range(launch: Launch) -> int:
    op, ins = launch.op, launch.ins
    if op == "cache_update":      # the position: every new row falls inside the cache
        return launch.out.shape[1] - ins[0].shape[1] + 1
    if op == "cached_attention":
        return ins[1].shape[1] - ins[0].shape[1] + 1
    if op == "rotary":            # the position: every row read falls inside the tables
        return ins[1].shape[0] - ins[0].shape[1] + 1
    if op == "dropout" or op in ATTENTION:
        return 2**31 - 1          # the RNG's seed and counter: any bits
    if op == "embedding":
        return ins[0].shape[0]    # table rows
    if op in ("embedding_grad", "one_hot", "id_order", "embedding_grad_sorted"):
        return launch.attrs["rows"]
    return ins[0].shape[-1]       # cross-entropy targets: the vocabulary


def _inputs(launch: Launch, rng) -> list[np.ndarray]:
    """Valid random inputs for a launch."""
    op = launch.op
    steps = [s[0] for s in launch.attrs["program"]] if "program" in launch.attrs else [op]
    positive = "log" in steps or "sqrt" in steps
    values = []
    for buf in launch.ins:
        if buf.dtype == "i32":
            values.append(rng.integers(0, _int_range(launch), buf.shape, dtype=np.int32))
        elif positive:  # scalars (Adam's 1 - beta) at most 1: a moment's update stays a mean of positives
            values.append(rng.uniform(0.5, 1.0 if not buf.shape else 2.0, buf.shape).astype(np.float32))
        else:
            values.append(rng.standard_normal(buf.shape, dtype=np.float32))
    if op == "causal_softmax_grad":  # y must be a causal softmax: zero above the diagonal
        values[0] = REGISTRY["causal_softmax"].ref({"scale": 1.0}, 3 * values[0]).astype(np.float32)
    elif op in NORMALISER_OF:
        values[0] = 2 * values[0] + 3  # rows with a mean to remove
        if op != NORMALISER_OF[op]:  # the row statistics the forward saved
            _, *statistics = REGISTRY[NORMALISER_OF[op]].ref({"eps": launch.attrs["eps"]}, values[0])
            values[2:2 + len(statistics)] = statistics
    elif op.startswith("cross_entropy"):
        values[0] *= 3
    elif op == "embedding_grad_sorted":  # the order of random ids: each row's run of positions
        n = int(np.prod(launch.ins[1].shape[:-1]))
        values[0] = BY_OP["id_order"](launch.attrs, values[0][:n])
    elif op == "argmax":  # equal maxima, whose first must win, and a NaN, which beats any number
        values[0] = np.round(2 * values[0]) / 2
        values[0].reshape(-1, values[0].shape[-1])[0, 7] = np.nan
    elif op == "quantize":  # amax: x's abs_max, of x as its buffer holds it
        values[1] = BY_OP["abs_max"]({}, values[0].astype(DTYPES[launch.ins[0].dtype].numpy).astype(np.float32))
    elif op in ATTENTION[1:]:  # the saved log-sum-exp (and delta) of these q, k, v and this g
        attrs = launch.attrs
        n = 1 if len(launch.ins[0].shape) == 5 else 3  # the packed qkv, or q, k and v
        rng = values[-2:] if "dropout" in attrs else []
        qkv, g = values[:n], values[n + (2 if op.endswith("_q") else 1)]
        qkv, g = [x.astype(DTYPES[launch.ins[0].dtype].numpy).astype(np.float64) for x in qkv], \
            g.astype(DTYPES[launch.ins[0].dtype].numpy).astype(np.float64)
        out, lse = REGISTRY["causal_attention"].ref(attrs, *qkv, *rng)
        if op.endswith("_q"):
            values[n], values[n + 1] = out, lse
        else:
            values[n] = lse
            values[n + 2] = REGISTRY["causal_attention_grad_q"].ref(attrs, *qkv, out, lse, g, *rng)[1]
    return [v.astype(DTYPES[b.dtype].numpy) for v, b in zip(values, launch.ins)]  # each in its buffer's type


def _place(cp, buf):
    """A fresh array of its own for a plan buffer, starting `offset % 16` bytes past a 256-byte
    boundary (bf16 and E4M3 as their bits: CuPy has neither)."""
    from graphgpt.runtime.cuda_backend import device_dtype
    dtype, itemsize = device_dtype(buf.dtype), DTYPES[buf.dtype].bytes
    shift, n = buf.offset % 16 // itemsize, int(np.prod(buf.shape))
    return cp.empty(n + 16, dtype)[shift:shift + n].reshape(buf.shape)


def _poison(array, dtype: str) -> None:
    """NaN in a float output (bf16's and the FP8 types' as bits); -1, no index, in an int32 one."""
    array.fill(-1 if dtype == "i32" else 0x7FC0 if dtype == "bf16" else 0x7F if dtype in FP8_TYPES else np.nan)


def _launch_twice(cp, modules: dict, launch: Launch, rng) -> tuple:
    """Run a launch twice on fresh inputs, its outputs poisoned before each; returns what `_compare`
    needs: the launch (reading its kernel's arguments), the output buffers, the host inputs, the
    output's starting values where it is written in place, and both launches' outputs."""
    cuda = launch.cuda
    n_out = len(launch.outputs)
    out_bufs = cuda.args[:n_out]
    # an op that writes some rows over its input 0 (a cache update) gets that input as its output
    # buffer: it starts as random values instead of poison, and the rows left alone must stay so
    over = REGISTRY[launch.op].in_place and REGISTRY[launch.op].view is None
    launch = replace(launch, ins=cuda.args[n_out:])  # a multi-tensor reduction reads one flat range
    fn = modules[cuda.file].get_function(cuda.kernel)
    if cuda.smem > 48 << 10:
        fn.max_dynamic_shared_size_bytes = cuda.smem
    host = _inputs(launch, rng)
    ins = [_place(cp, buf) for buf in launch.ins]
    for array, value in zip(ins, host):
        array.set(value.view(array.dtype))
    outs = [_place(cp, buf) for buf in out_bufs]
    before = rng.standard_normal(out_bufs[0].shape).astype(DTYPES[out_bufs[0].dtype].numpy) if over else None
    results = []
    for _ in range(2):
        for out, buf in zip(outs, out_bufs):
            if over:
                out.set(before.view(out.dtype))
            else:
                _poison(out, buf.dtype)
        fn(tuple(cuda.grid), tuple(cuda.block), (*outs, *ins), shared_mem=cuda.smem)
        results.append([cp.asnumpy(out) for out in outs])
    return launch, out_bufs, host, before, results


def _compare(launch: Launch, out_bufs: list, host: list, before, results: list) -> str | None:
    """The launch's outputs against its op's float64 reference, rounded once as they are stored."""
    refs = REGISTRY[launch.op].ref(launch.attrs, *(a.astype(np.float64) if a.dtype != np.int32 else a
                                                         for a in ([before] if before is not None else []) + host))
    what = f"{launch.cuda.kernel} ({launch.op} {[b.shape for b in out_bufs]} <- {[b.shape for b in launch.ins]})"
    for k, (buf, ref) in enumerate(zip(out_bufs, refs if len(out_bufs) > 1 else [refs])):
        if buf.dtype == "i32":  # indices: exactly the reference's
            if not np.array_equal(results[0][k], ref) or not np.array_equal(results[1][k], ref):
                return f"{what}: output {k}: {np.sum(results[0][k] != ref)} indices differ"
            continue
        got = results[0][k].view(DTYPES[buf.dtype].numpy).astype(np.float64)
        ref = np.asarray(ref, np.float64).astype(DTYPES[buf.dtype].numpy).astype(np.float64)  # rounded once, as stored
        if not np.isfinite(got).all():
            return f"{what}: output {k}: {np.size(got) - np.isfinite(got).sum()} non-finite values"
        if not np.array_equal(results[0][k], results[1][k]):
            return f"{what}: output {k}: a second launch gave different bits"
        err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)
        if err > (ROUNDS_INSIDE.get(buf.dtype, RTOL[buf.dtype]) if launch.op in ATTENTION else RTOL[buf.dtype]):
            return f"{what}: output {k}: relative error {err:.2e}"
    return None


@pytest.mark.parametrize("name", KERNEL_PLANS)
def test_kernels_match_numpy_references(name):
    """The launches run one after another on the GPU; their float64 references, most of the time
    at GPT-2 124M's shapes, are computed on threads meanwhile (NumPy's large array operations let
    go of the interpreter's lock)."""
    import cupy as cp
    data = plan_data(name)
    files = lower_plan(data, DEFAULT)
    modules = {path: cp.RawModule(code=source, options=tuple(data["nvrtc_options"])) for path, source in files.items()}
    rng = np.random.default_rng(0)
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        checks = [pool.submit(_compare, *_launch_twice(cp, modules, launch, rng)) for launch in _distinct_launches(data)]
        failures = [f for check in checks if (f := check.result())]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("dtype,rows,vocab", [("f32", 37, 1000), ("bf16", 37, 1000), ("f32", 5, 3001),
                                              ("bf16", 64, 50304)])
def test_the_fused_loss_kernel_gives_the_bits_of_the_two_it_replaces(dtype, rows, vocab):
    """cross_entropy_with_grad writing its gradient over its logits, as a training plan runs it,
    against cross_entropy then cross_entropy_grad over the logits (the plan without the fusion) on
    the same fresh random logits: the loss and every gradient element with the same bits."""
    import cupy as cp
    from graphgpt.runtime.cuda_backend import device_dtype
    logits, ids, dloss = Buffer(dtype, 0, (rows, vocab)), Buffer("i32", 0, (rows,)), Buffer("f32", 0, ())
    data = program_data([_launch("cross_entropy", logits, ids), _launch("cross_entropy_grad", logits, ids, dloss),
                         _launch("cross_entropy_with_grad", logits, ids, dloss)], "loss")
    module = cp.RawModule(code=lower_plan(data, DEFAULT)["kernels/cross_entropy.cu"], options=NVRTC_OPTIONS)
    forward, grad, fused = ((module.get_function(ln.cuda.kernel), ln.cuda)
                            for ln in data["programs"]["loss"].launches)
    rng = np.random.default_rng()
    z = cp.asarray((3 * rng.standard_normal((rows, vocab))).astype(DTYPES[dtype].numpy).view(device_dtype(dtype)))
    targets = cp.asarray(rng.integers(0, vocab, rows, dtype=np.int32))
    g = cp.asarray(np.float32(rng.uniform(0.5, 2.0)))

    def run(kernel, *args):
        fn, cuda = kernel
        if cuda.smem > 48 << 10:  # a wide row staged in shared memory
            fn.max_dynamic_shared_size_bytes = cuda.smem
        fn(tuple(cuda.grid), tuple(cuda.block), args, shared_mem=cuda.smem)

    results = []
    for kernels in ([forward, grad], [fused]):
        loss, dz = cp.full((), np.nan, np.float32), z.copy()
        if len(kernels) == 2:
            run(forward, loss, dz, targets)
            run(grad, dz, dz, targets, g)
        else:
            run(fused, loss, dz, dz, targets, g)
        results.append((cp.asnumpy(loss), cp.asnumpy(dz).view(DTYPES[dtype].numpy)))
    (loss_pair, grad_pair), (loss_fused, grad_fused) = results
    assert np.isfinite(loss_fused) and np.isfinite(grad_fused.astype(np.float32)).all()
    assert loss_fused.tobytes() == loss_pair.tobytes(), (float(loss_fused), float(loss_pair))
    assert grad_fused.tobytes() == grad_pair.tobytes()
    assert not np.array_equal(grad_fused, cp.asnumpy(z).view(DTYPES[dtype].numpy)), "the logits were not overwritten"


@pytest.mark.parametrize("dtype,rows,vocab", [("bf16", 37, 1000), ("f32", 5, 3001), ("bf16", 64, 50304)])
def test_the_loss_kernels_e5m2_copy_is_quantize_of_its_own_gradient(dtype, rows, vocab):
    """cross_entropy_with_grad also writing its gradient's E5M2 copy (passes/fp8.py's fp8_grad),
    over a poisoned copy and factor, on fresh random logits: the loss and the gradient with the bits
    of the kernel without the copy, and the copy and its factor with the bits quantize's reference
    makes of that stored gradient at the bound |dloss| / rows (a warp a row, a block a row with
    scalar loads, a block a row staged in shared memory)."""
    import cupy as cp
    from graphgpt.runtime.cuda_backend import device_dtype
    logits, ids, dloss = Buffer(dtype, 0, (rows, vocab)), Buffer("i32", 0, (rows,)), Buffer("f32", 0, ())
    data = program_data([_launch("cross_entropy_with_grad", logits, ids, dloss),
                         _launch("cross_entropy_with_grad", logits, ids, dloss, fp8_grad=E5M2, grad_dtype=dtype)], "loss")
    module = cp.RawModule(code=lower_plan(data, DEFAULT)["kernels/cross_entropy.cu"], options=NVRTC_OPTIONS)
    rng = np.random.default_rng()
    z = cp.asarray((3 * rng.standard_normal((rows, vocab))).astype(DTYPES[dtype].numpy).view(device_dtype(dtype)))
    targets = cp.asarray(rng.integers(0, vocab, rows, dtype=np.int32))
    g = np.float32(rng.uniform(0.5, 2.0))
    results = []
    for launch in data["programs"]["loss"].launches:
        fn, cuda = module.get_function(launch.cuda.kernel), launch.cuda
        if cuda.smem > 48 << 10:
            fn.max_dynamic_shared_size_bytes = cuda.smem
        loss, dz = cp.full((), np.nan, np.float32), z.copy()
        copy, factor = cp.full((rows, vocab), 0x7F, np.uint8), cp.full((), np.nan, np.float32)  # E5M2's NaN
        copies = (copy, factor) if launch.attrs else ()
        fn(tuple(cuda.grid), tuple(cuda.block), (loss, dz, *copies, dz, targets, cp.asarray(g)), shared_mem=cuda.smem)
        results.append((cp.asnumpy(loss), cp.asnumpy(dz).view(DTYPES[dtype].numpy), cp.asnumpy(copy), cp.asnumpy(factor)))
    (loss, grad, _, _), (loss_c, grad_c, copy, factor) = results
    assert loss_c.tobytes() == loss.tobytes() and grad_c.tobytes() == grad.tobytes()
    want_q, want_factor = BY_OP["quantize"]({"dtype": E5M2, "transpose": False}, grad.astype(np.float32),
                                            np.float32(g) / np.float32(rows))
    want_q = want_q.astype(DTYPES[E5M2].numpy).view(np.uint8)
    assert copy.tobytes() == want_q.tobytes(), f"{np.sum(copy != want_q)} of {copy.size} bytes differ"
    assert factor.tobytes() == want_factor.tobytes(), (float(factor), float(want_factor))
    assert np.count_nonzero(want_q & 0x7F) > copy.size // 2  # most of the copy is not flushed to zero


@pytest.mark.parametrize("dtype,shape,rows,positioned", [("f32", (2, 64, 4, 64), 64, False), ("bf16", (2, 64, 4, 64), 64, False),
                                                         ("f32", (3, 5, 2, 6), 9, False), ("bf16", (2, 1, 4, 128), 100, True)])
def test_rotary_gives_the_numpy_backends_bits(dtype, shape, rows, positioned):
    """The rotary kernel, forward and inverse, rounds each product and sum as NumPy's float32 does,
    and once as it stores: the NumPy backend's bits on fresh inputs, over a poisoned output."""
    import cupy as cp
    from graphgpt.runtime.cuda_backend import device_dtype
    x, table, position = Buffer(dtype, 0, shape), Buffer("f32", 0, (rows, shape[-1] // 2)), Buffer("i32", 0, ())
    extra = [position] if positioned else []
    data = program_data([_launch("rotary", x, table, table, *extra, inverse=inverse) for inverse in (False, True)])
    module = cp.RawModule(code=lower_plan(data, DEFAULT)["kernels/rotary.cu"], options=NVRTC_OPTIONS)
    rng = np.random.default_rng()
    host = rng.standard_normal(shape).astype(np.float32).astype(DTYPES[dtype].numpy)
    angles = rng.uniform(0, 100, (rows, shape[-1] // 2))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    p = np.int32(rng.integers(0, rows - shape[1] + 1))
    ins = [cp.asarray(host.view(device_dtype(dtype))), cp.asarray(cos), cp.asarray(sin), *([cp.asarray(p)] if positioned else [])]
    for launch in data["programs"]["p"].launches:
        cuda = launch.cuda
        out = cp.full(shape, 0x7FC0 if dtype == "bf16" else np.nan, device_dtype(dtype))
        module.get_function(cuda.kernel)(tuple(cuda.grid), tuple(cuda.block), (out, *ins))
        got = cp.asnumpy(out).view(DTYPES[dtype].numpy)
        want = BY_OP["rotary"](launch.attrs, host.astype(np.float32), cos, sin, *([p] if positioned else []))
        assert want.dtype == np.float32
        assert got.tobytes() == want.astype(DTYPES[dtype].numpy).tobytes(), launch.attrs


@pytest.mark.parametrize("n,rows,pattern", [(16384, 50304, "random"), (16384, 50304, "one id"), (16384, 50304, "last row"),
                                            (300, 7, "two ids"), (1000, 3, "random")])
def test_sorted_embedding_gradient_on_adversarial_ids(n, rows, pattern):
    """id_order's one-block sort and the sorted gradient on ids a text can give: every id the same
    (one table row sums all n gradient rows), only the table's last row, two alternating ids, and
    counts that are not a power of two (the sort's padding): over poisoned outputs, the order and
    the float32 sums (added in position order, as np.add.at adds) are NumPy's bits."""
    import cupy as cp
    rng = np.random.default_rng()
    ids = {"random": rng.integers(0, rows, n), "one id": np.full(n, rows // 2), "last row": np.full(n, rows - 1),
           "two ids": np.arange(n) % 2 * (rows - 1)}[pattern].astype(np.int32)
    c = 64
    ids_buf, g_buf = Buffer("i32", 0, (n,)), Buffer("f32", 0, (n, c))
    order_buf = Buffer("i32", 0, (n + rows + 1,))
    data = program_data([_launch("id_order", ids_buf, rows=rows), _launch("embedding_grad_sorted", order_buf, g_buf, rows=rows)])
    module = cp.RawModule(code=lower_plan(data, DEFAULT)["kernels/embedding.cu"], options=NVRTC_OPTIONS)
    sort, grad = data["programs"]["p"].launches
    g = rng.standard_normal((n, c)).astype(np.float32)
    order, out = cp.full(n + rows + 1, -1, np.int32), cp.full((rows, c), np.nan, np.float32)
    for launch, args in ((sort, (order, cp.asarray(ids))), (grad, (out, order, cp.asarray(g)))):
        fn, cuda = module.get_function(launch.cuda.kernel), launch.cuda
        if cuda.smem > 48 << 10:
            fn.max_dynamic_shared_size_bytes = cuda.smem
        fn(tuple(cuda.grid), tuple(cuda.block), args, shared_mem=cuda.smem)
    want_order = BY_OP["id_order"]({"rows": rows}, ids)
    np.testing.assert_array_equal(cp.asnumpy(order), want_order)
    want = BY_OP["embedding_grad_sorted"]({"rows": rows}, want_order, g)
    assert want.dtype == np.float32
    assert cp.asnumpy(out).tobytes() == want.tobytes()


QUANTIZED = {"normal": 3.0, "huge": 2.0**100, "small": 2.0**-118, "tiny": 2.0**-130, "zeros": 0.0, "nan": 1.0}


@pytest.mark.parametrize("fp8", [FP8, E5M2])
@pytest.mark.parametrize("dtype", ["bf16", "f32"])
@pytest.mark.parametrize("shape,transpose,values", [
    ((3, 1000, 24), False, "normal"), ((3, 1008, 48), True, "normal"), ((4096, 768), True, "huge"),
    ((768, 3072), True, "tiny"), ((64, 3072), False, "small"), ((16, 7), False, "zeros"), ((7, 50), False, "nan"), ((64, 32), True, "nan")])
def test_abs_max_and_quantize_give_the_references_bits(dtype, shape, transpose, values, fp8):
    """abs_max, then quantize reading its result, as the fp8 pass chains them, over poisoned outputs
    on fresh random x: the largest magnitude exactly (NaN where x holds one), the FP8 copy the
    reference's bytes and the factor its float32 bits. x standard normal times QUANTIZED[values]:
    huge (a negative exponent), small (the exponent at its bound, some elements float32
    subnormals: zeros of their signs), tiny (all subnormal: unscaled, zeros of their signs), zeros
    (nothing to scale) or with one NaN (amax NaN: unscaled); the shapes leave partial tiles."""
    import cupy as cp
    from graphgpt.runtime.cuda_backend import device_dtype
    x_buf = Buffer(dtype, 0, shape)
    find = _launch("abs_max", x_buf)
    data = program_data([find, _launch("quantize", x_buf, find.out, transpose=transpose, dtype=fp8)])
    module = cp.RawModule(code=lower_plan(data, DEFAULT)["kernels/quantize.cu"], options=NVRTC_OPTIONS)
    find, quantize = data["programs"]["p"].launches
    rng = np.random.default_rng()
    x = rng.standard_normal(shape, dtype=np.float32) * np.float32(QUANTIZED[values])
    if values == "nan":
        x.flat[rng.integers(x.size)] = np.nan
    host = x.astype(DTYPES[dtype].numpy)
    x_dev = cp.asarray(host.view(device_dtype(dtype)))
    amax, factor = cp.full((), np.nan, np.float32), cp.full((), np.nan, np.float32)
    q = cp.full(quantize.out.shape, 0xFF, np.uint8)  # a NaN of both types, not the one the kernel writes
    for launch, args in ((find, (amax, x_dev)), (quantize, (q, factor, x_dev, amax))):
        cuda = launch.cuda
        module.get_function(cuda.kernel)(tuple(cuda.grid), tuple(cuda.block), args)
    want_amax = BY_OP["abs_max"]({}, host.astype(np.float32))
    want_q, want_factor = BY_OP["quantize"](quantize.attrs, host.astype(np.float32), want_amax)
    assert np.array_equal(cp.asnumpy(amax), want_amax, equal_nan=True), (float(amax), float(want_amax))
    got_q = cp.asnumpy(q)
    # the GPU's conversion writes every NaN as 0x7F, whatever its sign (ml_dtypes' E5M2 keeps the sign)
    want_q = np.where(np.isnan(want_q), np.uint8(0x7F), want_q.astype(DTYPES[fp8].numpy).view(np.uint8))
    assert got_q.tobytes() == want_q.tobytes(), f"{np.sum(got_q != want_q)} of {got_q.size} bytes differ"
    assert cp.asnumpy(factor).tobytes() == want_factor.tobytes(), (float(factor), float(want_factor))
