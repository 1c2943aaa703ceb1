"""A captured program as a CUDA graph whose memsets run as kernels.

cuBLASLt clears a few bytes of its workspace before each of its cooperative (stream-K) kernels,
and under capture each clear becomes a memset node. A memset node costs far more than its work in
a replayed graph: GPT-2 124M's traced step (H100, docs/PERFORMANCE.md) waited 3-7 us before each
of its 104 memsets and 2.8 us after, where a kernel that follows a kernel waits 0.6. So after
capture every memset node is replaced by a kernel node that writes the same bytes, with the same
edges in and out, before the graph is instantiated. The bytes written, and their order against
every other node, are the capture's, so the step computes the same bits.

The graph is edited through the driver API (libcuda, by ctypes): CuPy captures and launches graphs
but hides their nodes.
"""
from __future__ import annotations

import ctypes
import functools

FILL_KERNEL = r"""
extern "C" __global__ void fill(unsigned char* dst, unsigned long long pitch, unsigned int value,
                                unsigned int element_bytes, unsigned long long width, unsigned long long height) {
    const unsigned long long n = width * height;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        unsigned char* p = dst + (i / width) * pitch + (i % width) * element_bytes;
        if (element_bytes == 4) *(unsigned int*)p = value;
        else if (element_bytes == 2) *(unsigned short*)p = (unsigned short)value;
        else *p = (unsigned char)value;
    }
}
"""
FILL_THREADS, FILL_MAX_BLOCKS = 256, 1024
NODE_TYPE_MEMSET = 2  # CUgraphNodeType


class _MemsetParams(ctypes.Structure):  # CUDA_MEMSET_NODE_PARAMS
    _fields_ = [("dst", ctypes.c_uint64), ("pitch", ctypes.c_size_t), ("value", ctypes.c_uint),
                ("element_size", ctypes.c_uint), ("width", ctypes.c_size_t), ("height", ctypes.c_size_t)]


class _KernelParams(ctypes.Structure):  # CUDA_KERNEL_NODE_PARAMS_v2
    _fields_ = [("func", ctypes.c_void_p), ("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_mem", ctypes.c_uint), ("kernel_params", ctypes.POINTER(ctypes.c_void_p)),
                ("extra", ctypes.c_void_p), ("kern", ctypes.c_void_p), ("ctx", ctypes.c_void_p)]


class _EdgeData(ctypes.Structure):  # CUgraphEdgeData: how a dependency is kept (a full one, or programmatic)
    _fields_ = [("from_port", ctypes.c_ubyte), ("to_port", ctypes.c_ubyte), ("type", ctypes.c_ubyte),
                ("reserved", ctypes.c_ubyte * 5)]


@functools.cache
def _driver():
    lib = ctypes.CDLL("libcuda.so.1")

    def call(name):
        fn = getattr(lib, name)

        def checked(*args):
            status = fn(*args)
            if status:
                raise RuntimeError(f"{name} failed: CUresult {status}")
        return checked
    return call


def _listed(getter, node):
    """The nodes at the other ends of `node`'s edges, one way, with each edge's data."""
    count = ctypes.c_size_t(0)
    getter(node, None, None, ctypes.byref(count))
    nodes, edges = (ctypes.c_void_p * count.value)(), (_EdgeData * count.value)()
    if count.value:
        getter(node, nodes, edges, ctypes.byref(count))
    return nodes, edges, count.value


class StepGraph:
    """Captures what `queue()` puts on `stream` (and the streams it forks) and instantiates it,
    each memset node a `fill` kernel node; `launch(stream)` replays it. `memsets` counts the nodes
    replaced."""

    def __init__(self, cp, stream, queue, fill_function):
        runtime, call = cp.cuda.runtime, _driver()
        runtime.streamBeginCapture(stream.ptr, runtime.streamCaptureModeRelaxed)
        try:
            queue()
        finally:
            graph = runtime.streamEndCapture(stream.ptr)
        try:
            self.memsets = _memsets_as_kernels(call, graph, fill_function)
            self._exec = runtime.graphInstantiate(graph)
        finally:
            runtime.graphDestroy(graph)
        self._runtime = runtime

    def launch(self, stream) -> None:
        self._runtime.graphLaunch(self._exec, stream.ptr)

    def __del__(self):
        if getattr(self, "_exec", None):
            self._runtime.graphExecDestroy(self._exec)


def _memsets_as_kernels(call, graph: int, fill_function: int) -> int:
    graph = ctypes.c_void_p(graph)
    count = ctypes.c_size_t(0)
    call("cuGraphGetNodes")(graph, None, ctypes.byref(count))
    nodes = (ctypes.c_void_p * count.value)()
    call("cuGraphGetNodes")(graph, nodes, ctypes.byref(count))
    replaced = 0
    for node in nodes:
        kind = ctypes.c_int()
        call("cuGraphNodeGetType")(ctypes.c_void_p(node), ctypes.byref(kind))
        if kind.value == NODE_TYPE_MEMSET:
            _replace(call, graph, ctypes.c_void_p(node), fill_function)
            replaced += 1
    return replaced


def _replace(call, graph, memset, fill_function: int) -> None:
    """A fill kernel node in `memset`'s place: the same bytes, the same edges in and out."""
    p = _MemsetParams()
    call("cuGraphMemsetNodeGetParams")(memset, ctypes.byref(p))
    args = (ctypes.c_uint64(p.dst), ctypes.c_uint64(p.pitch), ctypes.c_uint(p.value),
            ctypes.c_uint(p.element_size), ctypes.c_uint64(p.width), ctypes.c_uint64(p.height))
    pointers = (ctypes.c_void_p * len(args))(*map(ctypes.addressof, args))
    blocks = max(1, min(-(-p.width * p.height // FILL_THREADS), FILL_MAX_BLOCKS))
    kernel = _KernelParams(func=fill_function, grid=(blocks, 1, 1), block=(FILL_THREADS, 1, 1), shared_mem=0,
                           kernel_params=ctypes.cast(pointers, ctypes.POINTER(ctypes.c_void_p)))
    fill = ctypes.c_void_p()
    call("cuGraphAddKernelNode_v2")(ctypes.byref(fill), graph, None, ctypes.c_size_t(0), ctypes.byref(kernel))
    before, into, n_before = _listed(call("cuGraphNodeGetDependencies_v2"), memset)
    after, out_of, n_after = _listed(call("cuGraphNodeGetDependentNodes_v2"), memset)
    call("cuGraphDestroyNode")(memset)  # its edges go with it
    if n_before:
        call("cuGraphAddDependencies_v2")(graph, before, (ctypes.c_void_p * n_before)(*[fill.value] * n_before),
                                          into, ctypes.c_size_t(n_before))
    if n_after:
        call("cuGraphAddDependencies_v2")(graph, (ctypes.c_void_p * n_after)(*[fill.value] * n_after), after,
                                          out_of, ctypes.c_size_t(n_after))
