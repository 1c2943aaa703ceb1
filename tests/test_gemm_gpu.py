"""cuBLAS and cuBLASLt calls as the plan lowers them, against the ops' NumPy references, on the GPU:
every transpose combination, batched and shared-weight GEMMs, and each GEMM epilogue (bias,
residual, GELU and GELU's gradient), in float32 and with bf16 operands (storing bf16, or float32 as
a weight gradient does).

A bf16 product accumulates in float32 and rounds once: against the float64 reference rounded the
same way it differs by one bf16 step (2^-8) only on the elements whose float32 and float64 sums
round differently, so the norm-relative error stays within 2^-10; a float32 output within 1e-5."""
import numpy as np
import pytest

from graphgpt.dtypes import DTYPES, E5M2, FP8
from graphgpt.kernels.gemm import lower_matmul
from graphgpt.ops import REGISTRY
from graphgpt.ops.registry import Spec
from graphgpt.plan import Buffer, Gemm, Launch

pytestmark = pytest.mark.gpu
RTOL = {"f32": 1e-5, "bf16": 2.0**-10}
TYPES = [("f32", "f32"), ("bf16", "bf16"), ("bf16", "f32")]  # (operands, output)

CASES = [  # (a shape, b shape, ta, tb, bias, residual)
    ((2, 5, 3), (3, 4), False, False, False, False),
    ((2, 3, 5), (2, 3, 4), True, False, False, False),
    ((2, 5, 3), (2, 4, 3), False, True, False, False),
    ((6, 8), (6, 7), True, False, False, False),
    ((4, 33, 64), (64, 96), False, False, True, False),
    ((4, 33, 64), (64, 96), False, False, False, True),
    ((4, 33, 64), (64, 96), False, False, True, True),
    ((132, 64), (96, 64), False, True, True, True),
    ((4, 33, 64), (96, 64), False, True, False, False),   # a tied lm_head: x @ wte.T
    ((132, 96), (132, 64), True, False, False, True),     # its weight gradient, added to the embedding's
]


def _launch(a_shape, b_shape, ta, tb, bias, residual, operands="f32", output="f32") -> Launch:
    attrs = {"ta": ta, "tb": tb} if operands == output else {"ta": ta, "tb": tb, "dtype": output}
    op = "matmul"
    out_shape = REGISTRY["matmul"].infer(attrs, Spec(a_shape, operands), Spec(b_shape, operands)).shape
    ins = [a_shape, b_shape]
    if bias or residual:
        op, attrs = "fused_matmul", dict(attrs, bias=bias, residual=residual)
        ins += ([out_shape[-1:]] if bias else []) + ([out_shape] if residual else [])
    types = [operands, operands] + [output] * (len(ins) - 2)  # the epilogue's operands are the output's type
    offsets = np.cumsum([0] + [int(np.prod(s)) * 4 for s in ins])
    return Launch(op=op, kind="matmul", attrs=attrs, out=Buffer(output, int(offsets[-1]), tuple(out_shape)),
                  ins=tuple(Buffer(t, int(o), tuple(s)) for t, o, s in zip(types, offsets, ins)))


def _run_lowered(launch: Launch, host: list, in_place: bool = False, choose=True) -> list:
    """The launch as the plan lowers it and the CUDA backend runs it (its algorithm chosen among
    cuBLASLt's candidates, or with choose=False cuBLASLt's first), on fresh device copies of `host`
    (its inputs) with every output poisoned first (`in_place`: the output is the residual's own
    memory, as the plan places a sum over chunks); its outputs as float64."""
    import cupy as cp
    from graphgpt.runtime.cublas import WORKSPACE_BYTES, Cublas
    from graphgpt.runtime.cuda_backend import device_dtype
    from graphgpt.runtime.gemm_choice import GemmChooser
    cuda = lower_matmul(launch)
    stream = cp.cuda.Stream(non_blocking=True)
    workspace = cp.empty(WORKSPACE_BYTES, cp.uint8)
    blas = Cublas(stream.ptr, workspace.data.ptr)
    outs = launch.outputs
    try:
        devs = [cp.asarray(h.view(device_dtype(b.dtype))) for h, b in zip(host, launch.ins)]
        results = [cp.full(b.shape, 0x7FC0 if b.dtype == "bf16" else np.nan, device_dtype(b.dtype)) for b in outs]
        if in_place:
            results[0] = devs[-1]
        ptr = {id(b): d.data.ptr for b, d in zip([*launch.ins, *outs], [*devs, *results])}
        ptr[id(launch.out)] = results[0].data.ptr
        g, epi = cuda.gemm, cuda.epilogue
        typed = {k: None if epi is None or b is None else (ptr[id(b)], b.dtype)
                 for k, b in (("bias", epi and epi.bias), ("aux", epi and epi.aux))}
        residual = None if epi is None or epi.residual is None else ptr[id(epi.residual)]
        scales = cuda.scales and (ptr[id(cuda.scales.a)], ptr[id(cuda.scales.b)])
        run = blas.lt_plan(g, ptr[id(g.a)], ptr[id(g.b)], ptr[id(g.c)], epi.kind if epi else "default",
                           residual=residual, scales=scales, fast_accumulation=bool(cuda.scales and cuda.scales.fast),
                           choose=GemmChooser(cp, stream) if choose else None, **typed)
        with stream:
            run()
        stream.synchronize()
        return [cp.asnumpy(r).view(DTYPES[b.dtype].numpy).astype(np.float64) for r, b in zip(results, outs)]
    finally:
        blas.close()


def _error(got, ref, dtype) -> float:
    """Norm-relative, against the float64 reference rounded once to `dtype`."""
    ref = ref.astype(DTYPES[dtype].numpy).astype(np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _assert_close(got, ref, dtype):
    err = _error(got, ref, dtype)
    assert err <= RTOL[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("types", TYPES, ids=lambda t: f"{t[0]}->{t[1]}")
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}{'T' if c[2] else ''}{'T' if c[3] else ''}"
                         f"{'+bias' if c[4] else ''}{'+res' if c[5] else ''}")
def test_gemm_matches_numpy(case, types):
    if types[0] != types[1] and case[4]:
        pytest.skip("a plan folds a cast only into a GEMM without a bias")
    launch = _launch(*case, *types)
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(b.shape).astype(DTYPES[b.dtype].numpy) for b in launch.ins]
    (got,) = _run_lowered(launch, host)
    ref = REGISTRY[launch.op].ref(launch.attrs, *(h.astype(np.float64) for h in host))
    _assert_close(got, ref, launch.out.dtype)


@pytest.mark.parametrize("types", [("f32", "f32"), ("bf16", "f32")], ids=lambda t: f"{t[0]}->{t[1]}")
def test_gemm_adds_its_residual_in_place(types):
    """D = A.T B + D, the output over its residual: a weight gradient summed over the classifier's
    chunks of rows (passes/chunk_classifier.py), where the memory plan gives the sum so far and the
    new sum one buffer."""
    launch = _launch((132, 96), (132, 64), True, False, False, True, *types)
    rng = np.random.default_rng(2)
    host = [rng.standard_normal(b.shape).astype(DTYPES[b.dtype].numpy) for b in launch.ins]
    (got,) = _run_lowered(launch, host, in_place=True)
    ref = REGISTRY[launch.op].ref(launch.attrs, *(h.astype(np.float64) for h in host))
    _assert_close(got, ref, launch.out.dtype)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("epilogue", ["gelu+bias", "gelu", "gelu_grad"])
def test_gelu_epilogues_match_numpy(epilogue, dtype):
    """GELU of the [biased] product with the product as a second output (cuBLASLt's aux), and the
    product times GELU's derivative at a given pre-activation, as the fusion pass makes them: x of
    (4, 33, 64) against a (64, 96) weight, and the gradient's GEMM against its transpose."""
    rng = np.random.default_rng(1)
    x_shape, out_shape = (4, 33, 64), [4, 33, 96]
    if epilogue == "gelu_grad":
        attrs = {"ta": False, "tb": True, "bias": False, "residual": False, "gelu_grad": True}
        shapes = [x_shape, (96, 64), out_shape]
    else:
        attrs = {"ta": False, "tb": False, "bias": epilogue == "gelu+bias", "residual": False, "gelu": True}
        shapes = [x_shape, (64, 96)] + ([(96,)] if attrs["bias"] else [])
    offsets = np.cumsum([0] + [int(np.prod(s)) * 4 for s in shapes] + [int(np.prod(out_shape)) * 4] * 2)
    outs = [Buffer(dtype, int(offsets[-3]), tuple(out_shape)), Buffer(dtype, int(offsets[-2]), tuple(out_shape))]
    launch = Launch(op="fused_matmul", kind="matmul", attrs=attrs,
                    ins=tuple(Buffer(dtype, int(o), tuple(s)) for o, s in zip(offsets, shapes)),
                    out=outs[0], outs=tuple(outs) if attrs.get("gelu") else None)
    host = [(2 * rng.standard_normal(s) / np.sqrt(64)).astype(DTYPES[dtype].numpy) for s in shapes]
    got = _run_lowered(launch, host)
    exact = [h.astype(np.float64) for h in host]
    ref = REGISTRY["fused_matmul"].ref(attrs, *exact)
    if epilogue == "gelu_grad" and dtype == "bf16":
        # Where cuBLASLt rounds depends on the kernel it picks. At this size the result is that of
        # the product rounded to bf16 before the derivative multiplies it, as the separate
        # gelu_grad kernel read it (2.8e-3 from the accumulator's, within 2^-10 of this one); at
        # GPT-2 124M's size it is one rounding of the accumulator's (tools/gemm_epilogue_check.py).
        product = REGISTRY["matmul"].ref(attrs, *exact[:2]).astype(DTYPES[dtype].numpy).astype(np.float64)
        errors = [_error(got[0], r, dtype) for r in (ref, REGISTRY["gelu_grad"].ref({}, exact[2], product))]
        assert min(errors) <= RTOL[dtype], f"relative errors {errors[0]:.2e} (accumulator), {errors[1]:.2e} (rounded product)"
        return
    for g, r in zip(got, ref if attrs.get("gelu") else (ref,)):
        _assert_close(g, r, dtype)


def test_the_chosen_algorithm_gives_the_bits_of_cublasLts_first():
    """A weight gradient of the LLaMA at 124M's scale (bf16 operands, float32 out, 16384 deep),
    where a later candidate was measured faster than cuBLASLt's first: the algorithm the bind
    chooses gives the first's bits on operands it was not chosen on, so a resumed run, which
    chooses again, computes what the run it resumes computed."""
    import cupy as cp
    from graphgpt.runtime.cublas import WORKSPACE_BYTES, Cublas
    from graphgpt.runtime.gemm_choice import GemmChooser
    m, n, k = 2048, 768, 16384
    g = Gemm(transa=0, transb=1, m=m, n=n, k=k, a=Buffer("bf16", 0, (k, m)), lda=m, stride_a=0,
             b=Buffer("bf16", 0, (k, n)), ldb=n, stride_b=0, c=Buffer("f32", 0, (n, m)), ldc=m, stride_c=0, batch=1)
    stream = cp.cuda.Stream(non_blocking=True)
    workspace = cp.empty(WORKSPACE_BYTES, cp.uint8)
    blas = Cublas(stream.ptr, workspace.data.ptr)
    rng = np.random.default_rng(5)
    a, b = (cp.asarray(rng.standard_normal(shape).astype(DTYPES["bf16"].numpy).view(np.uint16)) for shape in ((k, m), (k, n)))
    outs = [cp.full((n, m), np.nan, cp.float32) for _ in range(2)]
    chooser = GemmChooser(cp, stream)
    try:
        runs = [blas.lt_plan(g, a.data.ptr, b.data.ptr, d.data.ptr, choose=choose) for d, choose in zip(outs, (None, chooser))]
        with stream:
            for run in runs:
                run()
        stream.synchronize()
    finally:
        blas.close()
    assert len(chooser.chosen) == 1  # cuBLASLt offered more than one algorithm, and they were tried
    assert not bool(cp.isnan(outs[0]).any()) and bool(cp.array_equal(outs[0], outs[1])), chooser.chosen


# An FP8 product's float32 output: the tensor cores' FP8 accumulator keeps fewer bits than float32
# does (7.7e-5 from float64 at k = 64 on an H100, where float32 operands give under 1e-5); a bf16
# output's rounding hides it.
FP8_RTOL = {"f32": 2.0**-12}
SCALED_CASES = [  # (x's type, output dtype, epilogue attrs): the products passes/fp8.py makes
    (FP8, "bf16", {}),                                # a classifier's logits
    (FP8, "f32", {}),
    (FP8, "bf16", {"bias": True}),
    (FP8, "bf16", {"residual": True}),                # an attention projection adding the residual stream
    (FP8, "bf16", {"bias": True, "residual": True}),
    (FP8, "bf16", {"bias": True, "gelu": True}),      # GPT-2's first MLP product
    (E5M2, "bf16", {}),                               # the classifier's input gradient
    (E5M2, "f32", {}),
]


@pytest.mark.parametrize("x_type,dtype,epilogue", SCALED_CASES,
                         ids=lambda c: c if isinstance(c, str) else "+".join(c) or "plain")
def test_fp8_products_match_numpy(x_type, dtype, epilogue):
    """An FP8 product, x (4, 32, k) against a (96, k) E4M3 weight, both read along k, its
    accumulator multiplied by the two operands' factors: against the float64 product of the same
    FP8 values, every partial product exact, rounded once to the output's type. x is E4M3 (a
    forward product, k = 64, its sums in the FP8 accumulator) or an E5M2 gradient (k = 2048, its
    sums moved into float32 as they go)."""
    rng = np.random.default_rng(4)
    k = 64 if x_type == FP8 else 2048
    x_shape, w_shape, out_shape = (4, 32, k), (96, k), (4, 32, 96)
    attrs = {"ta": False, "tb": True, "fp8": True, "dtype": dtype}
    shapes, types = [x_shape, w_shape, (), ()], [x_type, FP8, "f32", "f32"]
    op = "matmul"
    if epilogue:
        op, attrs = "fused_matmul", {**attrs, "bias": False, "residual": False, **epilogue}
        shapes += [(96,)] * attrs["bias"] + [out_shape] * attrs["residual"]
        types += [dtype] * (attrs["bias"] + attrs["residual"])
    offsets = np.cumsum([0] + [max(int(np.prod(s)), 1) * 4 for s in shapes] + [int(np.prod(out_shape)) * 4] * 2)
    outs = [Buffer(dtype, int(offsets[-3]), out_shape), Buffer(dtype, int(offsets[-2]), out_shape)]
    launch = Launch(op=op, kind="matmul", attrs=attrs,
                    ins=tuple(Buffer(t, int(o), tuple(s)) for t, o, s in zip(types, offsets, shapes)),
                    out=outs[0], outs=tuple(outs) if attrs.get("gelu") else None)
    host = [(16 * rng.standard_normal(shapes[0])).astype(DTYPES[x_type].numpy),
            (40 * rng.standard_normal(shapes[1])).astype(DTYPES[FP8].numpy),
            np.array(2.0**-7, np.float32), np.array(2.0**-9, np.float32),
            *(rng.standard_normal(s).astype(DTYPES[dtype].numpy) for s in shapes[4:])]
    got = _run_lowered(launch, host)
    ref = REGISTRY[op].ref(attrs, *(h.astype(np.float64) for h in host))
    for g, r in zip(got, ref if attrs.get("gelu") else (ref,)):
        err = _error(g, r, dtype)
        assert err <= FP8_RTOL.get(dtype, RTOL[dtype]), f"relative error {err:.2e}"
