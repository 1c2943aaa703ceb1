"""A minimal ctypes binding of cuBLAS: the one call graphgpt makes, capturable in a CUDA graph.

CuPy's own cuBLAS wrappers refuse to run while a stream is being captured. The same library
called directly works, provided the handle has a workspace of its own (so cuBLAS allocates
nothing during capture). We bind the libcublas that CuPy already loaded, so both share one copy.
"""
from __future__ import annotations

import ctypes

CUDA_R_32F = 0
CUBLAS_COMPUTE_32F = 68
CUBLAS_COMPUTE_32F_FAST_TF32 = 77
CUBLAS_GEMM_DEFAULT = -1
WORKSPACE_BYTES = 32 << 20  # cuBLAS's recommendation for Hopper


def _library() -> ctypes.CDLL:
    import cupy_backends.cuda.libs.cublas  # noqa: F401  (makes CuPy load libcublas)
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "/libcublas.so" in line}
    if not paths:
        raise RuntimeError("libcublas is not loaded in this process")
    return ctypes.CDLL(sorted(paths)[0])


class Cublas:
    def __init__(self, stream_ptr: int, workspace_ptr: int, tf32: bool = False):
        self.lib = _library()
        self.handle = ctypes.c_void_p()
        self._check(self.lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream_ptr)), "cublasSetStream")
        self._check(self.lib.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(workspace_ptr),
                                                   ctypes.c_size_t(WORKSPACE_BYTES)), "cublasSetWorkspace")
        self.compute = CUBLAS_COMPUTE_32F_FAST_TF32 if tf32 else CUBLAS_COMPUTE_32F
        self.one, self.zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
        fn = self.lib.cublasGemmStridedBatchedEx
        i, p, ll = ctypes.c_int, ctypes.c_void_p, ctypes.c_longlong
        fn.argtypes = [p, i, i, i, i, i, p, p, i, i, ll, p, i, i, ll, p, p, i, i, ll, i, i, i]
        fn.restype = i
        self._gemm = fn

    def gemm(self, g: dict, a: int, b: int, c: int) -> None:
        """C = op(A) @ op(B) in cuBLAS's column-major terms; a, b, c are device pointers."""
        status = self._gemm(self.handle, g["transa"], g["transb"], g["m"], g["n"], g["k"],
                            ctypes.addressof(self.one), a, CUDA_R_32F, g["lda"], g["stride_a"],
                            b, CUDA_R_32F, g["ldb"], g["stride_b"], ctypes.addressof(self.zero),
                            c, CUDA_R_32F, g["ldc"], g["stride_c"], g["batch"], self.compute, CUBLAS_GEMM_DEFAULT)
        self._check(status, "cublasGemmStridedBatchedEx")

    def close(self) -> None:
        if self.handle:
            self.lib.cublasDestroy_v2(self.handle)
            self.handle = ctypes.c_void_p()

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")
