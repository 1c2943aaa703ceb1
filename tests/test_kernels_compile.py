"""Every launch of whole plans gets a CUDA kernel, and every kernel file compiles with NVRTC (no GPU).

NVRTC comes with the dev extra (cuda-bindings + the NVRTC wheel); without it these tests fail.
"""
import copy
import re
from dataclasses import replace

import numpy as np
import pytest

from graphgpt.codegen import LIBRARY_KINDS, compile_cuda, lower_plan
from graphgpt.compiler import compile_model
from graphgpt.dtypes import DTYPES, E5M2, FP8, nbytes
from graphgpt.families import NAMES
from graphgpt.families.attention import lowering as attention
from graphgpt.ops import REGISTRY
from graphgpt.ops.registry import Spec
from graphgpt.plan import Buffer, Launch, Program, to_text
from graphgpt.target import DEFAULT
from tests.conftest import ROOT, TINY

PLANS = {"tiny": TINY, "default": [], "default-bf16": ["dtype=bf16"],
         "gpt2-124M": ["n_layer=1", "n_head=12", "n_embd=768", "block_size=1024", "batch_size=2", "vocab_size=50304"]}
# tests/gqa_model.py, grouped-query attention with dropout, at head dim 64: bf16 takes the tensor cores
GQA = ["n_layer=1", "n_head=4", "n_kv_head=2", "n_embd=256", "block_size=64", "vocab_size=128", "dropout=0.1"]
GQA_PLANS = {"gqa": GQA, "gqa-bf16": [*GQA, "dtype=bf16"]}
MAX_GRID = (2**31 - 1, 65535, 65535)


def _launch(op, *inputs, out_offset=0, **attrs):
    """A launch as the passes leave it; out_offset counts elements of the output's dtype (an op
    with several outputs gets them one after another from there)."""
    specs = [Spec(b.shape, b.dtype) for b in inputs]
    out = REGISTRY[op].infer(attrs, *specs)
    outs, at = [], out_offset * DTYPES[(out[0] if isinstance(out, list) else out).dtype].bytes
    for spec in out if isinstance(out, list) else [out]:
        outs.append(Buffer(spec.dtype, at, tuple(spec.shape)))
        at += -(-int(np.prod(spec.shape)) * DTYPES[spec.dtype].bytes // 256) * 256
    return Launch(op=op, kind=REGISTRY[op].kind, out=outs[0], outs=tuple(outs) if isinstance(out, list) else None,
                  ins=tuple(inputs), attrs=attrs, node=0, where="synthetic")


def program_data(launches, name: str = "p") -> dict:
    """A plan's data as lower_plan takes it, with one program of these launches."""
    return {"programs": {name: Program(launches=tuple(launches))}}


def _ids(shape):
    return Buffer("i32", 0, tuple(shape))


def _attention(f, f32, b, t, h, d, dropout=0.0, kv_heads=None) -> list[Launch]:
    """The fused attention's three launches over packed (B, T, 3, H, D) q, k, v of f's type or,
    given kv_heads, over q (B, T, H, D) with k and v (B, T, kv_heads, D), with the RNG's seed and
    counter after their inputs when they drop."""
    x, rows = f((b, t, h, d)), f32((b, h, t))
    rng, attrs = ([_ids([]), _ids([])], {"dropout": dropout, "site": 4}) if dropout else ([], {})
    if kv_heads is None:
        qkv = f((b, t, 3, h, d))
        return [_launch("causal_attention", qkv, *rng, scale=0.3, **attrs),
                _launch("causal_attention_grad_q", qkv, x, rows, x, *rng, scale=0.3, **attrs),
                _launch("causal_attention_grad_kv", qkv, rows, x, rows, x, *rng, scale=0.3, **attrs)]
    q, k, v = f((b, t, h, d)), f((b, t, kv_heads, d)), f((b, t, kv_heads, d))
    return [_launch("causal_attention", q, k, v, *rng, scale=0.3, **attrs),
            _launch("causal_attention_grad_q", q, k, v, x, rows, x, *rng, scale=0.3, **attrs),
            _launch("causal_attention_grad_kv", q, k, v, rows, x, rows, *rng, scale=0.3, **attrs)]


def _decoding(f, b, t, h, d, length, kv_heads=None) -> list[dict]:
    """A layer's decoding launches: t new positions written into a cache of `length` rows at the
    position input, then their attention over it; and a whole window's prefill from row 0. Given
    kv_heads, the separate form's: q, k and v apart and a cache of kv_heads heads."""
    position = _ids([])
    if kv_heads is None:
        cache, qkv = f((b, length, 2, h, d)), f((b, t, 3, h, d))
        return [_launch("cache_update", cache, qkv, position),
                _launch("cached_attention", qkv, cache, position, scale=0.4),
                _launch("cache_update", cache, f((b, length, 3, h, d)))]
    cache, q, kv = f((b, length, 2, kv_heads, d)), f((b, t, h, d)), f((b, t, kv_heads, d))
    return [_launch("cache_update", cache, kv, kv, position),
            _launch("cached_attention", q, cache, position, scale=0.4),
            _launch("cache_update", cache, f((b, length, kv_heads, d)), f((b, length, kv_heads, d)))]


def _rotary(f, f32, b, t, h, d, rows, offset=0) -> list[dict]:
    """Rotary over x (B, T, H, D) of f's type with float32 tables of `rows` positions: the forward
    from position 0, its inverse (the gradient), and from the decode program's position input."""
    x, table = f((b, t, h, d), offset), f32((rows, d // 2))
    return [_launch("rotary", x, table, table, inverse=False, out_offset=offset),
            _launch("rotary", x, table, table, inverse=True),
            _launch("rotary", x, table, table, _ids([]), inverse=False)]


def synthetic_plan(dtype: str = "f32") -> dict:
    """Launches GPT-2's plans do not make but another model may: every kernel mode, odd widths,
    offsets that rule out 16-byte accesses, with every float of type `dtype` (the loss and its
    incoming gradient stay float32) and, beyond float32, casts and mixed operands too."""
    def _f(shape, offset=0, of=dtype):
        """A buffer `offset` elements into the arena."""
        return Buffer(of, offset * DTYPES[of].bytes, tuple(shape))

    def _f32(shape, offset=0):
        return _f(shape, offset, "f32")

    launches = [
        # shape: tiled transposes (the contiguous axis moves), gathers, windows, copies
        _launch("transpose", _f((64, 48)), perm=[1, 0]),
        _launch("transpose", _f((3, 40, 37)), perm=[0, 2, 1]),
        _launch("transpose", _f((5, 33, 7)), perm=[2, 1, 0]),
        _launch("transpose", _f((4, 6, 8)), perm=[1, 0, 2]),
        _launch("broadcast_to", _f((384,)), shape=[4, 384]),
        _launch("broadcast_to", _f((5, 1, 3)), shape=[2, 5, 7, 3]),
        _launch("broadcast_to", _f(()), shape=[10]),
        _launch("slice", _f((4, 10, 6)), axis=1, start=2, stop=7),
        _launch("slice", _f((10, 8)), axis=0, start=3, stop=9),
        _launch("slice", _f((4, 6, 48)), axis=2, start=16, stop=32),  # k of a projection's q, k, v
        _launch("slice", _f((3, 5, 7)), axis=2, start=4, stop=7),
        _launch("pad", _f((4, 5, 6)), axis=1, before=2, after=3),
        _launch("pad", _f((4, 8, 4)), axis=2, before=4, after=0),
        _launch("copy", _f((7, 5), 1), out_offset=2),
        _launch("copy", _f((64,), 4), out_offset=8),
        _launch("reshape", _f((6, 4)), shape=[4, 6]),
        # reduce: every mode, splits, keepdims, misaligned
        _launch("sum", _f((6, 50, 40)), axes=[1], keepdims=False),
        _launch("sum", _f((6, 50, 40)), axes=[0, 2], keepdims=True),
        _launch("sum", _f((300, 5000)), axes=[1], keepdims=False),
        _launch("sum", _f((3, 100_000)), axes=[1], keepdims=False),
        _launch("sum", _f((10_000_000,)), axes=[0], keepdims=False),
        _launch("sum", _f((1001,), 3), axes=[0], keepdims=False),
        _launch("sum", _f((4, 1, 5)), axes=[], keepdims=False),
        # two sums in one pass (LayerNorm's parameter gradients): split, and odd and misaligned
        _launch("fused_sum", _f((4000, 96)), _f((4000, 96)), axes=[0], keepdims=False,
                program=[["mul", [], [-1, -2]]], results=[-1, 0]),
        _launch("fused_sum", _f((5, 10, 37), 1), _f((5, 10, 37)), axes=[0, 1], keepdims=True,
                program=[["mul", [], [-1, -2]]], results=[0, -2]),
        # pointwise: broadcasting in the middle, splats, misaligned operands, every op
        _launch("add", _f((4, 1, 8)), _f((4, 5, 8))),
        _launch("mul", _f((4, 1, 6)), _f((4, 5, 6))),
        _launch("sub", _f((6, 1)), _f((6, 8))),
        _launch("div", _f((8, 16), 2), _f((8, 16))),
        _launch("maximum", _f((33,)), _f(())),
        *(_launch(op, _f((64,))) for op in ("neg", "exp", "log", "sqrt", "tanh", "gelu", "silu", "sigmoid", "relu", "square")),
        *(_launch(op, _f((3, 7)), _f((3, 7))) for op in ("gelu_grad", "silu_grad", "relu_grad")),
        _launch("fused", _f((6, 8)), _f((8,)), _f((6, 1)), program=[
            ["exp", [], [-1]], ["log", [], [0]], ["tanh", [], [1]], ["neg", [], [2]],
            ["maximum", [], [3, -2]], ["sqrt", [], [-3]], ["div", [], [4, 5]]]),
        # row ops: uncached and partial LayerNorm and softmax rows, odd widths
        _launch("normalize", _f((16, 3000)), eps=1e-5),
        _launch("normalize_grad", _f((16, 3000)), _f((16, 3000)), _f32((16,)), _f32((16,)), eps=1e-5),
        _launch("normalize_grad", _f((8, 1536)), _f((8, 1536)), _f32((8,)), _f32((8,)), eps=1e-5),
        _launch("normalize", _f((10, 100)), eps=1e-5),
        _launch("normalize_grad", _f((7, 50)), _f((7, 50)), _f32((7,)), _f32((7,)), eps=1e-5),
        # RMSNorm's uncentred forms of the same kernels: uncached and partial rows, the weight as the
        # forward's epilogue, the backward scaled by it and accumulating into a residual gradient
        _launch("rms_normalize", _f((16, 3000)), eps=1e-5),
        _launch("rms_normalize", _f((10, 100)), eps=1e-6),
        _launch("rms_normalize_grad", _f((16, 3000)), _f((16, 3000)), _f32((16,)), eps=1e-5),
        _launch("rms_normalize_grad", _f((7, 50)), _f((7, 50)), _f32((7,)), eps=1e-5),
        _launch("fused_rms_normalize", _f((6, 96)), _f((96,)), eps=1e-5, program=[["mul", [], [-1, -2]]]),
        _launch("fused_rms_normalize_grad", _f((6, 96)), _f((6, 96)), _f32((6,)), _f((96,)), _f((6, 96)),
                eps=1e-5, scaled=True, accumulate=True),
        _launch("fused_rms_normalize_grad", _f((5, 40)), _f((5, 40)), _f32((5,)), _f((5, 40)),
                eps=1e-5, scaled=False, accumulate=True),
        _launch("causal_softmax", _f((3, 5, 5)), scale=0.7),
        _launch("causal_softmax", _f((2, 2100, 2100)), scale=0.05),  # a row too long for registers
        _launch("causal_softmax_grad", _f((3, 5, 5)), _f((3, 5, 5)), scale=0.7),
        *_attention(_f, _f32, 2, 37, 3, 24),  # odd T and head dim: the CUDA-core kernels
        *_attention(_f, _f32, 1, 70, 2, 16, dropout=0.25),
        *_attention(_f, _f32, 2, 37, 4, 24, kv_heads=2),  # grouped-query, on the CUDA cores
        *_attention(_f, _f32, 1, 70, 4, 16, dropout=0.25, kv_heads=1),
        _launch("argmax", _f((3, 1000), 1), limit=999),
        _launch("argmax", _f((2, 5, 50304)), limit=50257),
        _launch("argmax", _f((4, 20)), limit=20),
        # FP8 operands: abs_max in blocks whose last adds a second level, over a wave of blocks, and
        # in one misaligned block; quantize as x lies (16-byte vectors, misaligned ones) and
        # transposed (partial tiles, misaligned rows of x)
        _launch("abs_max", _f((37, 1000))),
        _launch("abs_max", _f((4096, 768))),
        _launch("abs_max", _f((3, 5), 1)),
        _launch("quantize", _f((4, 37, 24)), _f32(()), transpose=False, dtype=FP8),
        _launch("quantize", _f((5, 7), 1), _f32(()), transpose=False, dtype=FP8),
        _launch("quantize", _f((3, 80, 48)), _f32(()), transpose=True, dtype=FP8),
        _launch("quantize", _f((32, 48), 1), _f32(()), transpose=True, dtype=FP8),
        _launch("quantize", _f((4, 37, 24)), _f32(()), transpose=False, dtype=E5M2),  # a gradient's copies
        _launch("quantize", _f((3, 80, 48)), _f32(()), transpose=True, dtype=E5M2),
        *_decoding(_f, 3, 1, 4, 24, 37),  # odd length, a head dim no 16-byte access divides in bf16
        *_decoding(_f, 2, 3, 2, 64, 130),  # several new positions per step
        *_decoding(_f, 3, 1, 4, 24, 37, kv_heads=2),  # grouped-query caches
        *_decoding(_f, 2, 3, 4, 64, 130, kv_heads=1),
        _launch("dropout", _f((5, 333)), _ids([]), _ids([]), p=0.1, site=2),
        *_rotary(_f, _f32, 2, 8, 3, 16, 8),         # vectors of pairs
        *_rotary(_f, _f32, 3, 5, 2, 6, 9, 1),       # odd half-rows, misaligned: pair by pair
        *_rotary(_f, _f32, 1, 1, 4, 64, 37),        # one decoded position, LLaMA's head size
        _launch("cross_entropy", _f((37, 1000)), _ids([37])),
        _launch("cross_entropy_grad", _f((37, 1000)), _ids([37]), _f32(())),
        _launch("cross_entropy", _f((5, 3001)), _ids([5])),
        _launch("cross_entropy_grad", _f((3, 3000)), _ids([3]), _f32(()), out_offset=2),
        _launch("cross_entropy_with_grad", _f((37, 1000)), _ids([37]), _f32(())),  # a warp per row
        _launch("cross_entropy_with_grad", _f((5, 50304)), _ids([5]), _f32(())),   # a block per row
        _launch("cross_entropy_with_grad", _f((3, 3000)), _ids([3]), _f32(()), out_offset=2),  # misaligned
        *(_launch("cross_entropy_with_grad", _f(shape), _ids(shape[:1]), _f32(()), fp8_grad=E5M2, grad_dtype=dtype)
          for shape in ((37, 1000), (5, 50304))),  # also writing the gradient's E5M2 copy
        _launch("embedding", _f((40, 6)), _ids([3, 11])),
        _launch("embedding_grad", _ids([300]), _f((300, 50)), rows=7),
        _launch("embedding_grad", _ids([1000]), _f((1000, 2048)), rows=500),
        _launch("id_order", _ids([300]), rows=7),
        _launch("id_order", _ids([16, 1024]), rows=50304),  # GPT-2 124M's: 64 KiB of keys
        _launch("embedding_grad_sorted", _ids([300 + 7 + 1]), _f((300, 50)), rows=7),
        _launch("embedding_grad_sorted", _ids([1000 + 500 + 1]), _f((2, 500, 2048)), rows=500),
    ]
    if dtype != "f32":
        launches += [
            _launch("cast", _f32((8, 40)), dtype=dtype),
            _launch("cast", _f((8, 40), 3), dtype="f32", out_offset=1),
            _launch("mul", _f((4, 64)), _f32(())),
            _launch("fused", _f((6, 8)), _f32(()), program=[["cast", [["dtype", "f32"]], [-1]],
                                                            ["mul", [], [0, -2]], ["cast", [["dtype", dtype]], [1]],
                                                            ["exp", [], [2]], ["cast", [["dtype", "f32"]], [3]]]),
            _launch("sum", _f((6, 50, 40)), axes=[1], keepdims=False, dtype="f32"),
            _launch("sum", _f((300, 5000)), axes=[1], keepdims=False, dtype="f32"),
            _launch("fused_sum", _f((2048, 768)), _f((2048, 768)), axes=[0], keepdims=False, dtype="f32",
                    program=[["mul", [], [-1, -2]]], results=[-1, 0]),
            _launch("embedding_grad", _ids([300]), _f((300, 64)), rows=7, dtype="f32"),
            *_attention(_f, _f32, 2, 128, 2, 64),   # the tensor-core kernels, both head dims
            *_attention(_f, _f32, 1, 192, 2, 128),
            *_attention(_f, _f32, 1, 256, 2, 64),   # head dim 64: blocks of 128 rows, two of them
            *_attention(_f, _f32, 1, 192, 2, 64),   # and of 64 where 128 does not divide T
            *_attention(_f, _f32, 2, 128, 2, 64, dropout=0.2),
            *_attention(_f, _f32, 1, 128, 1, 128, dropout=0.1),
            *_attention(_f, _f32, 2, 128, 4, 64, kv_heads=2),  # grouped-query on the tensor cores
            *_attention(_f, _f32, 1, 192, 4, 128, kv_heads=1),
            *_attention(_f, _f32, 1, 256, 4, 64, kv_heads=2),  # blocks of 128 rows
            *_attention(_f, _f32, 2, 128, 4, 64, dropout=0.2, kv_heads=2),
        ]
    return program_data(launches, "synthetic")


def plan_data(name: str) -> dict:
    """The plan's launches as the passes leave them: the compiler's own kernel lowering taken out."""
    if name.startswith("synthetic"):
        return synthetic_plan("bf16" if name.endswith("bf16") else "f32")
    if name in GQA_PLANS:
        data = compile_model(ROOT / "tests" / "gqa_model.py", GQA_PLANS[name], log=lambda *a: None).data
    else:
        data = compile_model(ROOT / "model.py", PLANS[name], log=lambda *a: None).data
    for name, program in data["programs"].items():
        data["programs"][name] = replace(program, launches=tuple(
            launch if REGISTRY[launch.op].kind in LIBRARY_KINDS else replace(launch, cuda=None)
            for launch in program.launches))
    return data


# The plans whose kernels NVRTC compiles here and tests/test_kernels_gpu.py runs against NumPy
KERNEL_PLANS = ("tiny", "gpt2-124M", "default", "default-bf16", "gqa", "gqa-bf16", "synthetic", "synthetic-bf16")


def test_every_family_and_every_op_it_renders_is_compiled_and_run_on_the_gpu():
    """A new op or template family must come with launches in these plans (the synthetic ones take
    any op), so it is compiled in CI and checked against NumPy on the GPU before it ships."""
    launched = {launch.op for name in KERNEL_PLANS for program in plan_data(name)["programs"].values()
                for launch in program.launches}
    rendered = {name for name, op in REGISTRY.items() if op.template}
    assert rendered <= launched, f"ops with a template but no launch here: {sorted(rendered - launched)}"
    assert set(NAMES) == {REGISTRY[op].template for op in rendered}, "a family no op renders, or the reverse"


@pytest.fixture(scope="module", params=[name for name in KERNEL_PLANS if name != "gpt2-124M"])
def lowered(request):
    data = plan_data(request.param)
    before = copy.deepcopy(data)
    return before, data, lower_plan(data, DEFAULT)


def test_every_kernel_file_compiles_for_sm90(lowered):
    """With the options the plan hands the runtime's NVRTC."""
    _, data, files = lowered
    assert files
    for path, source in files.items():
        assert path.startswith("kernels/") and path.endswith(".cu")
        assert not re.search(r"^\s*#\s*include", source, re.M), f"{path} includes a header"
        assert len(compile_cuda(source, "sm_90", tuple(data["nvrtc_options"]))) > 0, path


def test_every_launch_names_a_kernel_of_its_file(lowered):
    before, data, files = lowered
    for name, program in data["programs"].items():
        for old, launch in zip(before["programs"][name].launches, program.launches):
            if REGISTRY[launch.op].kind in LIBRARY_KINDS:
                assert launch == old, "matmul and collective launches are left as they are"
                continue
            cuda = launch.cuda
            assert replace(launch, cuda=None) == old
            source = files[cuda.file]
            params = re.search(rf'extern "C" __global__ void (?:__launch_bounds__\(\d+(?:, \d+)?\) )?{cuda.kernel}\((.*)\)',
                               source)
            assert params, f"{cuda.kernel} is not defined in {cuda.file}"
            if launch.op == "sum_squares":  # its tensors as one flat range, from the first to the last
                (flat,) = cuda.args[1:]
                first, last = launch.ins[0], launch.ins[-1]
                assert flat.offset == first.offset and flat.offset + nbytes(flat) == last.offset + nbytes(last)
            elif launch.op == "cache_update":  # it writes over the cache it is given: passed once
                assert launch.ins[0] == launch.out and cuda.args == (launch.out, *launch.ins[1:])
            else:
                assert cuda.args == (*launch.outputs, *launch.ins)
            assert params.group(1).count(",") + 1 == len(cuda.args)
            assert all(1 <= g <= m for g, m in zip(cuda.grid, MAX_GRID)), cuda
            x, y, z = cuda.block
            assert 1 <= x * y * z <= 1024 and z <= 64, cuda
            assert 0 <= cuda.smem <= DEFAULT.smem_per_block, cuda


def test_kernel_names_are_unique_and_defined_once(lowered):
    _, _, files = lowered
    for source in files.values():
        names = re.findall(r'extern "C" __global__ void (?:__launch_bounds__\(\d+(?:, \d+)?\) )?(\w+)\(', source)
        assert len(names) == len(set(names))


@pytest.mark.parametrize("b,h,t,d,dropout,rows", [(16, 12, 1024, 64, 0.0, 128), (16, 12, 192, 64, 0.0, 64),
                                                  (16, 12, 1024, 64, 0.1, 64), (16, 6, 1024, 128, 0.0, 64),
                                                  (16, 6, 256, 64, 0.0, 64), (2, 2, 1024, 64, 0.0, 64)],
                         ids=["124M", "T192", "dropout", "D128", "seed", "small-grid"])
def test_tensor_core_attention_blocks_own_128_rows_where_that_was_measured_faster(b, h, t, d, dropout, rows):
    """The mma.sync kernels (where Hopper's do not serve them):
    head dim 64 without dropout, T a multiple of 128 and at least two such blocks per SM (264):
    blocks of 128 rows; else 64 (PERFORMANCE.md). The seed's 2 x 96 would be 192."""
    f = lambda shape: Buffer("bf16", 0, shape)  # noqa: E731
    plan = program_data(_attention(f, lambda shape: Buffer("f32", 0, shape), b, t, h, d, dropout))
    lower_plan(plan, DEFAULT)
    launches = plan["programs"]["p"].launches
    kinds = {launch.op: attention.variant("bf16", t, d, launch.op, dropout > 0) for launch in launches}
    hopper = {op for op in attention.WGMMA_TILING if dropout == 0 and attention.wgmma_fits(op, t, d)}
    assert {op for op, kind in kinds.items() if kind == "wgmma"} == hopper
    for launch in launches:
        if kinds[launch.op] == "mma":
            assert launch.cuda.grid[:2] == (t // rows, b * h) and launch.cuda.block[0] == 128, launch.op


ALL = {"causal_attention", "causal_attention_grad_q", "causal_attention_grad_kv"}


@pytest.mark.parametrize("b,h,t,d,dropout,kv_heads,hopper", [
    (16, 12, 1024, 64, 0.0, None, ALL), (16, 6, 1024, 128, 0.0, None, ALL), (16, 12, 1024, 64, 0.0, 4, ALL),
    (16, 6, 256, 64, 0.0, None, ALL), (16, 12, 1024, 64, 0.1, None, set()),
    (16, 12, 192, 64, 0.0, None, ALL - {"causal_attention"}),
    (16, 6, 192, 128, 0.0, None, {"causal_attention_grad_kv"})],
    ids=["124M", "D128", "grouped", "seed", "dropout", "T192", "T192-D128"])
def test_attention_runs_on_hoppers_warpgroup_products_where_its_blocks_and_tiles_fit(
        b, h, t, d, dropout, kv_heads, hopper):
    """bf16 without dropout, T a multiple of a block's rows (64 a warpgroup: 128 for the forward,
    for the query gradient 64 at head dim 64 and 128 at 128, and 64 for the key/value gradient)
    and of its tiles: those kernels take wgmma, the plan's NVRTC options name sm_90a and the
    file's prelude has the helpers; the rest stay on mma.sync. Elsewhere nothing names sm_90a, so
    such a plan runs on any GPU."""
    f = lambda shape: Buffer("bf16", 0, shape)  # noqa: E731
    plan = program_data(_attention(f, lambda shape: Buffer("f32", 0, shape), b, t, h, d, dropout, kv_heads))
    source = lower_plan(plan, DEFAULT)["kernels/attention.cu"]
    assert ("--gpu-architecture=sm_90a" in plan["nvrtc_options"]) == bool(hopper)
    assert ("wgmma.mma_async" in source) == ("__device__ __forceinline__ void wgmma_ss64(" in source) == bool(hopper)
    for launch in plan["programs"]["p"].launches:
        if launch.op in hopper:
            groups, rows, stages, blocks = attention.WGMMA_TILING[launch.op][d]
            heads = b * (kv_heads or h) if launch.op == "causal_attention_grad_kv" else b * h
            assert launch.cuda.grid[:2] == (t // (64 * groups), heads) and launch.cuda.block[0] == 128 * groups
            assert f"__launch_bounds__({128 * groups}, {blocks}) {launch.cuda.kernel}(" in source
            owned = 1 if launch.op == "causal_attention" else 2  # the owned rows' matrices: q; q and g; k and v
            stats = 2 * stages * rows * 4 if launch.op == "causal_attention_grad_kv" else 0
            assert launch.cuda.smem == (owned * 64 * groups + 2 * stages * rows) * d * 2 + stats + 1024
        else:
            assert f"{launch.op} (Hopper" not in source


def test_lowering_is_deterministic():
    for name in ("tiny", "synthetic", "synthetic-bf16"):
        runs = []
        for _ in range(2):
            data = plan_data(name)
            files = lower_plan(data, DEFAULT)
            runs.append((to_text(data), files))
        assert runs[0] == runs[1]


def test_an_nvrtc_error_carries_its_log():
    from graphgpt.codegen import CudaCompileError
    with pytest.raises(CudaCompileError, match="undefined_thing"):
        compile_cuda('extern "C" __global__ void k(float* o) { o[0] = undefined_thing; }')


def test_every_family_is_lowered_and_every_op_names_one():
    from graphgpt.codegen import ENV, FAMILIES, template_name
    assert set(FAMILIES) == set(NAMES)
    assert all(ENV.get_template(template_name(family)) for family in NAMES)
    assert {op.template for op in REGISTRY.values() if op.template} <= set(FAMILIES)


def test_compiling_leaves_pythons_shared_bytes_alone():
    """NVRTC writes its log and cubin into buffers it is handed: an empty log is one NUL byte, and
    handing it `b" " * 1` (the interpreter's one shared b" ") would turn every b" " into b"\\x00"."""
    compile_cuda('extern "C" __global__ void k() {}', "sm_90")
    assert b" " == bytes([32]) and b" " * 3 == bytes([32, 32, 32])


def test_a_kernel_whose_parameters_differ_from_its_launchs_buffers_is_refused_when_rendered():
    """A launch with one buffer more than its template declares (here a normalize given a second
    input) is refused by codegen, before any GPU would read past the kernel's arguments."""
    launch = _launch("normalize", Buffer("f32", 0, (4, 64)), eps=1e-5)
    launch = replace(launch, ins=(*launch.ins, Buffer("f32", 4096, (64,))))
    with pytest.raises(ValueError, match=r"takes 4 parameters, but its launch passes 5 buffers"):
        lower_plan(program_data([launch]), DEFAULT)
