"""cuBLAS and cuBLASLt calls as the plan lowers them, against the ops' NumPy references, on the GPU:
every transpose combination, batched and shared-weight GEMMs, and each GEMM epilogue, in float32
and with bf16 operands (storing bf16, or float32 as a weight gradient does).

A bf16 product accumulates in float32 and rounds once: against the float64 reference rounded the
same way it differs by one bf16 step (2^-8) only on the elements whose float32 and float64 sums
round differently, so the norm-relative error stays within 2^-10; a float32 output within 1e-5."""
import numpy as np
import pytest

from graphgpt.dtypes import DTYPES
from graphgpt.kernels.gemm import lower_matmul
from graphgpt.ops import REGISTRY
from graphgpt.ops.registry import Spec

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


def _launch(a_shape, b_shape, ta, tb, bias, residual, operands="f32", output="f32") -> dict:
    attrs = {"ta": ta, "tb": tb} if operands == output else {"ta": ta, "tb": tb, "dtype": output}
    op = "matmul"
    out_shape = REGISTRY["matmul"].infer(attrs, Spec(a_shape, operands), Spec(b_shape, operands)).shape
    ins = [a_shape, b_shape]
    if bias or residual:
        op, attrs = "fused_matmul", dict(attrs, bias=bias, residual=residual)
        ins += ([out_shape[-1:]] if bias else []) + ([out_shape] if residual else [])
    types = [operands, operands] + [output] * (len(ins) - 2)  # the epilogue's operands are the output's type
    offsets = np.cumsum([0] + [int(np.prod(s)) * 4 for s in ins])
    return {"op": op, "attrs": attrs, "out": [output, int(offsets[-1]), list(out_shape)],
            "in": [[t, int(o), list(s)] for t, o, s in zip(types, offsets, ins)]}


@pytest.mark.parametrize("types", TYPES, ids=lambda t: f"{t[0]}->{t[1]}")
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}{'T' if c[2] else ''}{'T' if c[3] else ''}"
                         f"{'+bias' if c[4] else ''}{'+res' if c[5] else ''}")
def test_gemm_matches_numpy(case, types):
    import cupy as cp
    from graphgpt.runtime.cublas import WORKSPACE_BYTES, Cublas
    from graphgpt.runtime.cuda_backend import device_dtype
    if types[0] != types[1] and (case[4] or case[5]):
        pytest.skip("a plan folds a cast only into a GEMM without an epilogue")
    launch = _launch(*case, *types)
    cuda = lower_matmul(launch)
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(b[2]).astype(DTYPES[b[0]].numpy) for b in launch["in"]]
    stream = cp.cuda.Stream(non_blocking=True)
    workspace = cp.empty(WORKSPACE_BYTES, cp.uint8)
    blas = Cublas(stream.ptr, workspace.data.ptr)
    try:
        devs = [cp.asarray(h.view(device_dtype(b[0]))) for h, b in zip(host, launch["in"])]
        out_type = launch["out"][0]
        out = cp.full(launch["out"][2], 0x7FC0 if out_type == "bf16" else np.nan, device_dtype(out_type))
        ptr = {id(b): d.data.ptr for b, d in zip(launch["in"], devs)}
        ptr[id(launch["out"])] = out.data.ptr
        g = cuda["gemm"]
        with stream:
            if "epilogue" in cuda:
                epi = cuda["epilogue"]
                blas.lt_plan(g, ptr[id(g["a"])], ptr[id(g["b"])], ptr[id(g["c"])],
                             *(None if epi[k] is None else ptr[id(epi[k])] for k in ("bias", "residual")))()
            else:
                blas.gemm(g, ptr[id(g["a"])], ptr[id(g["b"])], ptr[id(g["c"])])
        stream.synchronize()
        got = cp.asnumpy(out).view(DTYPES[out_type].numpy).astype(np.float64)
    finally:
        blas.close()
    ref = REGISTRY[launch["op"]].ref(launch["attrs"], *(h.astype(np.float64) for h in host))
    ref = ref.astype(DTYPES[out_type].numpy).astype(np.float64)
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err <= RTOL[out_type], f"relative error {err:.2e}"
