"""The step's CUDA graph with its memset nodes replaced by kernel nodes (runtime/step_graph.py)."""
import ctypes

import numpy as np
import pytest

from tests.test_cuda_backend import small_plan, train

pytestmark = pytest.mark.gpu


def test_memsets_become_kernels_that_write_the_same_bytes_in_the_same_order():
    """Memsets of 1-, 2- and 4-byte elements, one of them two-dimensional, each between a kernel
    that writes the bytes before and one that reads them after: the replayed graph holds no
    memset, and what the readers copy is what the memsets wrote over the writers' values."""
    import cupy as cp

    from graphgpt.runtime.step_graph import FILL_KERNEL, StepGraph
    driver = ctypes.CDLL("libcuda.so.1")
    stream = cp.cuda.Stream(non_blocking=True)
    x = cp.zeros(4096, cp.uint8)
    out = cp.full(4096, 0xEE, cp.uint8)  # poisoned: a reader that never ran leaves this
    pitch, width, height = 512, 96, 3  # the 2-D memset: 96 words in each of 3 rows 512 bytes apart
    u32 = ctypes.c_uint32

    def queue():
        with stream:
            x.fill(0x11)
            driver.cuMemsetD8Async(ctypes.c_uint64(x.data.ptr + 5), ctypes.c_ubyte(0xA5), ctypes.c_size_t(7),
                                   ctypes.c_void_p(stream.ptr))
            driver.cuMemsetD16Async(ctypes.c_uint64(x.data.ptr + 64), ctypes.c_ushort(0xBEEF), ctypes.c_size_t(9),
                                    ctypes.c_void_p(stream.ptr))
            driver.cuMemsetD2D32Async(ctypes.c_uint64(x.data.ptr + 1024), ctypes.c_size_t(pitch), u32(0x01020304),
                                      ctypes.c_size_t(width), ctypes.c_size_t(height), ctypes.c_void_p(stream.ptr))
            out[...] = x

    queue()  # CuPy compiles its two kernels outside the capture
    stream.synchronize()
    out.fill(0xEE)
    fill = cp.RawKernel(FILL_KERNEL, "fill")
    graph = StepGraph(cp, stream, queue, fill.kernel.ptr)
    assert graph.memsets == 3
    graph.launch(stream)
    stream.synchronize()

    want = np.full(4096, 0x11, np.uint8)
    want[5:12] = 0xA5
    want[64:82] = np.full(9, 0xBEEF, np.uint16).view(np.uint8)
    for row in range(height):
        start = 1024 + row * pitch
        want[start:start + 4 * width] = np.full(width, 0x01020304, np.uint32).view(np.uint8)
    np.testing.assert_array_equal(out.get(), want)


def test_a_step_in_the_graph_gives_the_bits_of_the_step_launched_eagerly():
    """Four bf16 steps replayed from the graph (memsets and all replaced) and four launched one by
    one give the same losses and weights, bit for bit."""
    from graphgpt.runtime.cuda_backend import CudaBackend
    plan = small_plan("dtype=bf16")
    graphed = CudaBackend(plan, graph=True)
    losses, params = train(graphed, plan, steps=4)
    assert graphed.programs["train"].graph is not None
    ref_losses, ref_params = train(CudaBackend(plan, graph=False), plan, steps=4)
    assert losses == ref_losses
    for name, value in ref_params.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
