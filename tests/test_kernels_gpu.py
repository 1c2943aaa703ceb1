"""Every rendered kernel against its op's NumPy reference, on the GPU.

For each distinct (kernel, buffer shapes) launch of the tiny, a GPT-2 124M-shaped and the default
plan, and of the synthetic launches of test_kernels_compile: fresh random inputs in their own
arrays (placed at the launch's offset modulo 4 floats, so alignment is what the plan has), an
output poisoned with NaN, two launches (the second checks that reductions reset their tickets and
give the same bits), and the float64 reference.
"""
import json

import numpy as np
import pytest

from graphgpt.codegen import lower_plan
from graphgpt.ops import REGISTRY
from tests.test_kernels_compile import plan_data

pytestmark = pytest.mark.gpu
RTOL = 1e-5


def _distinct_launches(data: dict) -> list[dict]:
    seen = {}
    for program in data["programs"].values():
        for launch in program["launches"]:
            if "kernel" in launch.get("cuda", {}):
                key = (launch["cuda"]["kernel"], json.dumps([b[2] for b in launch["cuda"]["args"]]))
                seen.setdefault(key, launch)
    return list(seen.values())


def _int_range(launch: dict) -> int:
    op, ins = launch["op"], launch["in"]
    if op == "embedding":
        return ins[0][2][0]       # table rows
    if op == "embedding_grad":
        return launch["attrs"]["rows"]
    return ins[0][2][-1]          # cross-entropy targets: the vocabulary


def _inputs(launch: dict, rng) -> list[np.ndarray]:
    """Valid random inputs for a launch."""
    op = launch["op"]
    steps = [s[0] for s in launch["attrs"]["program"]] if "program" in launch["attrs"] else [op]
    positive = "log" in steps or "sqrt" in steps
    values = []
    for arena, _, shape in launch["in"]:
        if arena == "i":
            values.append(rng.integers(0, _int_range(launch), shape, dtype=np.int32))
        elif positive:
            values.append(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        else:
            values.append(rng.standard_normal(shape, dtype=np.float32))
    if op == "causal_softmax_grad":  # y must be a causal softmax: zero above the diagonal
        values[0] = REGISTRY["causal_softmax"].ref({"scale": 1.0}, 3 * values[0]).astype(np.float32)
    elif op in ("normalize", "normalize_grad", "fused_normalize_grad"):
        values[0] = 2 * values[0] + 3  # rows with a mean to remove
    elif op.startswith("cross_entropy"):
        values[0] *= 3
    return values


def _place(cp, shape, dtype, offset: int):
    """A fresh array of its own, starting `offset % 4` elements past a 256-byte boundary."""
    shift, n = offset % 4, int(np.prod(shape))
    return cp.empty(n + 4, dtype)[shift:shift + n].reshape(shape)


def _check(cp, modules: dict, launch: dict, rng) -> str | None:
    cuda = launch["cuda"]
    launch = dict(launch, **{"in": cuda["args"][1:]})  # a multi-tensor reduction reads one flat range
    fn = modules[cuda["file"]].get_function(cuda["kernel"])
    host = _inputs(launch, rng)
    ins = [_place(cp, value.shape, value.dtype, buf[1]) for value, buf in zip(host, launch["in"])]
    for array, value in zip(ins, host):
        array.set(value)
    out = _place(cp, launch["out"][2], np.float32, launch["out"][1])
    results = []
    for _ in range(2):
        out.fill(np.nan)
        fn(tuple(cuda["grid"]), tuple(cuda["block"]), (out, *ins), shared_mem=cuda["smem"])
        results.append(cp.asnumpy(out))
    got = results[0].astype(np.float64)
    ref = np.asarray(REGISTRY[launch["op"]].ref(launch["attrs"], *(a.astype(np.float64) if a.dtype == np.float32
                                                                  else a for a in host)), np.float64)
    what = f"{cuda['kernel']} ({launch['op']} {launch['out'][2]} <- {[b[2] for b in launch['in']]})"
    if not np.isfinite(got).all():
        return f"{what}: {np.size(got) - np.isfinite(got).sum()} non-finite outputs"
    if not np.array_equal(results[0], results[1]):
        return f"{what}: a second launch gave different bits"
    err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)
    return f"{what}: relative error {err:.2e}" if err > RTOL else None


@pytest.mark.parametrize("name", ["tiny", "gpt2-124M", "default", "synthetic"])
def test_kernels_match_numpy_references(name):
    import cupy as cp
    data = plan_data(name)
    files = lower_plan(data)
    modules = {path: cp.RawModule(code=source, options=("--std=c++17",)) for path, source in files.items()}
    rng = np.random.default_rng(0)
    failures = [f for launch in _distinct_launches(data) if (f := _check(cp, modules, launch, rng))]
    assert not failures, "\n".join(failures)
