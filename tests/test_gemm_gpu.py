"""cuBLAS and cuBLASLt calls as the plan lowers them, against the ops' NumPy references, on the GPU:
every transpose combination, batched and shared-weight GEMMs, and each GEMM epilogue."""
import numpy as np
import pytest

from graphgpt.gemm import lower_matmul
from graphgpt.ops import REGISTRY
from graphgpt.ops.registry import Spec

pytestmark = pytest.mark.gpu
RTOL = 1e-5

CASES = [  # (a shape, b shape, ta, tb, bias, residual)
    ((2, 5, 3), (3, 4), False, False, False, False),
    ((2, 3, 5), (2, 3, 4), True, False, False, False),
    ((2, 5, 3), (2, 4, 3), False, True, False, False),
    ((6, 8), (6, 7), True, False, False, False),
    ((4, 33, 64), (64, 96), False, False, True, False),
    ((4, 33, 64), (64, 96), False, False, False, True),
    ((4, 33, 64), (64, 96), False, False, True, True),
    ((132, 64), (96, 64), False, True, True, True),
]


def _launch(a_shape, b_shape, ta, tb, bias, residual) -> dict:
    attrs = {"ta": ta, "tb": tb}
    op = "matmul"
    out_shape = REGISTRY["matmul"].infer(attrs, Spec(a_shape, "f32"), Spec(b_shape, "f32")).shape
    ins = [a_shape, b_shape]
    if bias or residual:
        op, attrs = "fused_matmul", dict(attrs, bias=bias, residual=residual)
        ins += ([out_shape[-1:]] if bias else []) + ([out_shape] if residual else [])
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in ins])
    return {"op": op, "attrs": attrs, "out": ["f", int(offsets[-1]), list(out_shape)],
            "in": [["f", int(o), list(s)] for o, s in zip(offsets, ins)]}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}{'T' if c[2] else ''}{'T' if c[3] else ''}"
                         f"{'+bias' if c[4] else ''}{'+res' if c[5] else ''}")
def test_gemm_matches_numpy(case):
    import cupy as cp
    from graphgpt.runtime.cublas import WORKSPACE_BYTES, Cublas
    launch = _launch(*case)
    cuda = lower_matmul(launch)
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(b[2]).astype(np.float32) for b in launch["in"]]
    stream = cp.cuda.Stream(non_blocking=True)
    workspace = cp.empty(WORKSPACE_BYTES, cp.uint8)
    blas = Cublas(stream.ptr, workspace.data.ptr)
    try:
        devs = [cp.asarray(h) for h in host]
        out = cp.full(launch["out"][2], np.nan, cp.float32)
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
        got = cp.asnumpy(out).astype(np.float64)
    finally:
        blas.close()
    ref = REGISTRY[launch["op"]].ref(launch["attrs"], *(h.astype(np.float64) for h in host))
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err <= RTOL, f"relative error {err:.2e}"
