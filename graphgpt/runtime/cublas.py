"""A minimal ctypes binding of cuBLAS and cuBLASLt: the two calls graphgpt makes, capturable in a
CUDA graph.

CuPy's own cuBLAS wrappers refuse to run while a stream is being captured. The same library
called directly works, provided the handle has a workspace of its own (so cuBLAS allocates
nothing during capture). We bind the libcublas that CuPy already loaded, so both share one copy,
and the libcublasLt it loads with it. cuBLASLt runs a plan's matrix products: their descriptors
and algorithm are chosen once, when a plan is bound (among several candidates, by
runtime/gemm_choice.py), so a step only calls cublasLtMatmul.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Callable

from ..dtypes import DTYPES
from ..plan import Buffer, Gemm

CUDA_R_32F = 0
CUBLAS_COMPUTE_32F = 68
CUBLAS_COMPUTE_32F_FAST_TF32 = 77
CUBLAS_GEMM_DEFAULT = -1
WORKSPACE_BYTES = 32 << 20  # cuBLAS's recommendation for Hopper
# cublasLt.h
LT_DESC_TRANSA, LT_DESC_TRANSB, LT_DESC_EPILOGUE, LT_DESC_BIAS_POINTER = 3, 4, 7, 8
LT_DESC_AUX_POINTER, LT_DESC_AUX_LD, LT_DESC_AUX_DATA_TYPE, LT_DESC_BIAS_DATA_TYPE = 11, 12, 22, 26
LT_DESC_A_SCALE_POINTER, LT_DESC_B_SCALE_POINTER = 17, 18  # device float32s the accumulator is multiplied by
LT_DESC_FAST_ACCUM = 25  # an FP8 product's sums kept in the tensor cores' accumulator, never moved to float32 registers
# cublasLtEpilogue_t, by the names plans use. "bias" adds a vector to every column of D (cuBLAS's
# rows, our columns); "gelu_aux[_bias]" stores the [biased] product in aux and writes GELU (tanh)
# of it; "dgelu" multiplies the product by GELU's derivative at aux; "bgrada"/"bgradb" write into
# the bias pointer the sums of op(A)'s rows / op(B)'s columns over k, a weight gradient's bias
# gradient (measured by tools/gemm_epilogue_check.py, slower than the column sums plans run).
LT_EPILOGUES = {"default": 1, "bias": 4, "gelu_aux": 160, "gelu_aux_bias": 164, "dgelu": 192, "bgrada": 256, "bgradb": 512}
# What each epilogue writes besides D, by the roles of Trial.run's pointers
LT_WRITES = {"gelu_aux": ("aux",), "gelu_aux_bias": ("aux",), "bgrada": ("bias",), "bgradb": ("bias",)}
LT_LAYOUT_BATCH_COUNT, LT_LAYOUT_STRIDED_BATCH_OFFSET = 5, 6
LT_PREF_MAX_WORKSPACE_BYTES = 1
CANDIDATES = 8  # of cuBLASLt's heuristic answers, offered to a chooser


@dataclass(frozen=True)
class Trial:
    """A matmul's candidate algorithms, cuBLASLt's best guess first, to run on memory of a
    chooser's own: run(i, **pointers) runs candidate i with device pointers by role, as keywords
    (a, b and d; c, the residual, where the product adds one; bias and aux where its epilogue has
    them; scale_a and scale_b for an FP8 product), each addressing as much memory as `operands` gives for its role, (plan dtype, elements);
    `written` names the roles it writes, and `key` is the same for matmuls that have the same
    candidates."""
    count: int
    operands: dict
    written: tuple[str, ...]
    key: tuple
    run: Callable[..., None]


class _HeuristicResult(ctypes.Structure):  # cublasLtMatmulHeuristicResult_t
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace_size", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


def _library(name: str) -> ctypes.CDLL:
    import cupy_backends.cuda.libs.cublas  # noqa: F401  (makes CuPy load libcublas, and with it libcublasLt)
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if f"/{name}.so" in line}
    if not paths:
        raise RuntimeError(f"{name} is not loaded in this process")
    return ctypes.CDLL(sorted(paths)[0])


class Cublas:
    def __init__(self, stream_ptr: int, workspace_ptr: int, tf32: bool = False):
        self.lib = _library("libcublas")
        self.handle = ctypes.c_void_p()
        self._check(self.lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream_ptr)), "cublasSetStream")
        self._check(self.lib.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(workspace_ptr),
                                                   ctypes.c_size_t(WORKSPACE_BYTES)), "cublasSetWorkspace")
        self.tf32 = tf32
        self.stream, self.workspace = ctypes.c_void_p(stream_ptr), ctypes.c_void_p(workspace_ptr)
        self.lt, self.lt_handle, self._lt_objects = None, ctypes.c_void_p(), []
        self.one, self.zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
        fn = self.lib.cublasGemmStridedBatchedEx
        i, p, ll = ctypes.c_int, ctypes.c_void_p, ctypes.c_longlong
        fn.argtypes = [p, i, i, i, i, i, p, p, i, i, ll, p, i, i, ll, p, p, i, i, ll, i, i, i]
        fn.restype = i
        self._gemm = fn

    def compute_type(self, g: Gemm) -> int:
        """float accumulation; TF32 tensor cores for float32 operands when asked for."""
        return CUBLAS_COMPUTE_32F_FAST_TF32 if self.tf32 and g.a.dtype == "f32" else CUBLAS_COMPUTE_32F

    def gemm(self, g: Gemm, a: int, b: int, c: int) -> None:
        """C = op(A) @ op(B) in cuBLAS's column-major terms; a, b, c are device pointers, and the
        dtypes are those of the plan buffers g.a, g.b, g.c."""
        ta, tb, tc = (DTYPES[x.dtype].cuda for x in (g.a, g.b, g.c))
        status = self._gemm(self.handle, g.transa, g.transb, g.m, g.n, g.k,
                            ctypes.addressof(self.one), a, ta, g.lda, g.stride_a,
                            b, tb, g.ldb, g.stride_b, ctypes.addressof(self.zero),
                            c, tc, g.ldc, g.stride_c, g.batch, self.compute_type(g), CUBLAS_GEMM_DEFAULT)
        self._check(status, "cublasGemmStridedBatchedEx")

    def lt_plan(self, g: Gemm, a: int, b: int, d: int, epilogue: str = "default", bias: tuple | None = None,
                residual: int | None = None, aux: tuple | None = None, scales: tuple[int, int] | None = None,
                fast_accumulation: bool = False, choose: Callable[[Trial], int] | None = None):
        """The cuBLASLt call for one matrix product on these device pointers: D = op(A) op(B) with
        `epilogue` (a key of LT_EPILOGUES), `bias` and `aux` as (pointer, plan dtype), [+ residual];
        an FP8 product's A and B multiplied by the float32s at `scales` (two pointers), its sums
        kept in the FP8 accumulator where `fast_accumulation` says;
        descriptors and algorithm chosen now: cuBLASLt's first heuristic answer, or the one that
        `choose` picks from a Trial of the first CANDIDATES. Returns run()."""
        if self.lt is None:
            self.lt = _library("libcublasLt")
            self._check(self.lt.cublasLtCreate(ctypes.byref(self.lt_handle)), "cublasLtCreate")
        lt, p = self.lt, ctypes.c_void_p

        def new(kind: str, *args) -> ctypes.c_void_p:
            """A cuBLASLt object (kind: MatmulDesc, MatrixLayout, MatmulPreference), destroyed by close()."""
            obj = p()
            self._check(getattr(lt, f"cublasLt{kind}Create")(ctypes.byref(obj), *args), f"cublasLt{kind}Create")
            self._lt_objects.append((getattr(lt, f"cublasLt{kind}Destroy"), obj))
            return obj

        def set_attr(fn, obj, attr: int, value) -> None:
            self._check(fn(obj, attr, ctypes.byref(value), ctypes.sizeof(value)), fn.__name__)

        desc = new("MatmulDesc", ctypes.c_int(self.compute_type(g)), ctypes.c_int(CUDA_R_32F))
        set_attr(lt.cublasLtMatmulDescSetAttribute, desc, LT_DESC_TRANSA, ctypes.c_int32(g.transa))
        set_attr(lt.cublasLtMatmulDescSetAttribute, desc, LT_DESC_TRANSB, ctypes.c_int32(g.transb))
        set_desc = lt.cublasLtMatmulDescSetAttribute
        set_attr(set_desc, desc, LT_DESC_EPILOGUE, ctypes.c_uint32(LT_EPILOGUES[epilogue]))

        def point(bias_at: int | None, aux_at: int | None, scales_at: tuple | None) -> None:  # pointers in the descriptor
            if bias_at is not None:
                set_attr(set_desc, desc, LT_DESC_BIAS_POINTER, ctypes.c_void_p(bias_at))
            if aux_at is not None:
                set_attr(set_desc, desc, LT_DESC_AUX_POINTER, ctypes.c_void_p(aux_at))
            if scales_at is not None:
                for attr, at in zip((LT_DESC_A_SCALE_POINTER, LT_DESC_B_SCALE_POINTER), scales_at):
                    set_attr(set_desc, desc, attr, ctypes.c_void_p(at))
        if scales is not None and fast_accumulation:
            set_attr(set_desc, desc, LT_DESC_FAST_ACCUM, ctypes.c_int8(1))
        if bias is not None:  # before the heuristic, which looks at its alignment and type
            set_attr(set_desc, desc, LT_DESC_BIAS_DATA_TYPE, ctypes.c_int32(DTYPES[bias[1]].cuda))
        if aux is not None:  # the pre-activation, laid out as D
            set_attr(set_desc, desc, LT_DESC_AUX_LD, ctypes.c_int64(g.ldc))
            set_attr(set_desc, desc, LT_DESC_AUX_DATA_TYPE, ctypes.c_int32(DTYPES[aux[1]].cuda))
        point(bias and bias[0], aux and aux[0], scales)

        def layout(operand: Buffer, rows: int, cols: int, ld: int, stride: int) -> ctypes.c_void_p:
            lay = new("MatrixLayout", ctypes.c_int(DTYPES[operand.dtype].cuda), ctypes.c_uint64(rows),
                      ctypes.c_uint64(cols), ctypes.c_int64(ld))
            if g.batch > 1:
                set_attr(lt.cublasLtMatrixLayoutSetAttribute, lay, LT_LAYOUT_BATCH_COUNT, ctypes.c_int32(g.batch))
                set_attr(lt.cublasLtMatrixLayoutSetAttribute, lay, LT_LAYOUT_STRIDED_BATCH_OFFSET,
                         ctypes.c_int64(stride))
            return lay

        m, n, k = g.m, g.n, g.k  # the stored matrices: op(A) is m x k, op(B) is k x n
        a_lay = layout(g.a, *((k, m) if g.transa else (m, k)), g.lda, g.stride_a)
        b_lay = layout(g.b, *((n, k) if g.transb else (k, n)), g.ldb, g.stride_b)
        c_lay = layout(g.c, m, n, g.ldc, g.stride_c)  # D, and C: the residual, of D's type
        pref = new("MatmulPreference")
        set_attr(lt.cublasLtMatmulPreferenceSetAttribute, pref, LT_PREF_MAX_WORKSPACE_BYTES,
                 ctypes.c_uint64(WORKSPACE_BYTES))
        results, found = (_HeuristicResult * (CANDIDATES if choose else 1))(), ctypes.c_int(0)
        self._check(lt.cublasLtMatmulAlgoGetHeuristic(self.lt_handle, desc, a_lay, b_lay, c_lay, c_lay, pref, len(results),
                                                      results, ctypes.byref(found)),
                    "cublasLtMatmulAlgoGetHeuristic")
        if found.value < 1:
            raise RuntimeError(f"cuBLASLt has no algorithm for a {m}x{n}x{k} GEMM with this epilogue")
        alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0 if residual is None else 1.0)
        matmul = lt.cublasLtMatmul

        def call(i: int, a: int, b: int, c: int, d: int) -> tuple:  # cublasLtMatmul's arguments
            return (self.lt_handle, desc, ctypes.byref(alpha), p(a), a_lay, p(b), b_lay, ctypes.byref(beta),
                    p(c), c_lay, p(d), c_lay, ctypes.byref(results[i].algo),
                    self.workspace, ctypes.c_size_t(WORKSPACE_BYTES), self.stream)
        chosen = 0
        if choose is not None and found.value > 1:
            def trial(i: int, a: int, b: int, d: int, c: int | None = None, bias: int | None = None,
                      aux: int | None = None, scale_a: int | None = None, scale_b: int | None = None) -> None:
                point(bias, aux, scales and (scale_a, scale_b))
                self._check(matmul(*call(i, a, b, d if c is None else c, d)), "cublasLtMatmul")

            def extent(rows: int, cols: int, ld: int, stride: int) -> int:  # elements a column-major operand spans
                return (cols - 1) * ld + rows + (g.batch - 1) * stride
            d_extent = extent(m, n, g.ldc, g.stride_c)
            operands = {"a": (g.a.dtype, extent(*((k, m) if g.transa else (m, k)), g.lda, g.stride_a)),
                        "b": (g.b.dtype, extent(*((n, k) if g.transb else (k, n)), g.ldb, g.stride_b)),
                        "d": (g.c.dtype, d_extent)}
            operands |= {"c": (g.c.dtype, d_extent)} if residual is not None else {}
            operands |= {"bias": (bias[1], m)} if bias is not None else {}
            operands |= {"aux": (aux[1], d_extent)} if aux is not None else {}
            operands |= {"scale_a": ("f32", 1), "scale_b": ("f32", 1)} if scales is not None else {}
            shape = (g.transa, g.transb, m, n, k, g.lda, g.ldb, g.ldc, g.stride_a, g.stride_b, g.stride_c, g.batch)
            key = (shape, g.a.dtype, g.b.dtype, g.c.dtype, epilogue, bias and bias[1], aux and aux[1], residual is None,
                   scales is None, fast_accumulation, tuple(bytes(r.algo) for r in results[:found.value]))
            chosen = choose(Trial(found.value, operands, ("d", *LT_WRITES.get(epilogue, ())), key, trial))
            point(bias and bias[0], aux and aux[0], scales)
        args = call(chosen, a, b, d if residual is None else residual, d)

        def run() -> None:
            self._check(matmul(*args), "cublasLtMatmul")
        return run

    def close(self) -> None:
        for destroy, obj in reversed(self._lt_objects):
            destroy(obj)
        self._lt_objects = []
        if self.lt_handle:
            self.lt.cublasLtDestroy(self.lt_handle)
            self.lt_handle = ctypes.c_void_p()
        if self.handle:
            self.lib.cublasDestroy_v2(self.handle)
            self.handle = ctypes.c_void_p()

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")
