"""The CUDA backend: the plan's rendered kernels through CuPy, its GEMMs through cuBLASLt (each
product's algorithm chosen when the plan is bound, runtime/gemm_choice.py).

One byte arena is allocated once; every launch reads and writes views of it at the plan's byte
offsets, on one non-default stream; the launches a plan puts on its side stream (the gradient
branch's kernels, passes/streams.py) on a second one, ordered by events where the plan says they
wait. A program runs eagerly the first time (which also loads every module and warms cuBLAS up);
after that, unless graphs are off, it is captured into a CUDA graph once (its memsets made
kernels, runtime/step_graph.py) and replayed, so a training step costs one graph launch plus the
copies of its inputs and outputs. Inputs go up and outputs come down through pinned buffers with
events: the host never waits inside a step, only when it reads a result.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

from ..dtypes import DTYPES, FP8_TYPES, nbytes
from ..plan import Buffer, GemmCall, Launch, Plan, Program
from . import check_architecture, check_arena_fits, target_mismatch
from .cublas import WORKSPACE_BYTES, Cublas
from .dist import SingleWorld
from .gemm_choice import GemmChooser
from .step_graph import FILL_KERNEL, StepGraph
from .weight_copies import WeightCopies

SLOTS = 2  # pinned buffers per input/output: one being filled while the other is in flight
STATIC_SMEM_LIMIT = 48 << 10  # shared memory a kernel may use without opting in
NARROW_BITS = {"bf16": np.uint16} | {t: np.uint8 for t in FP8_TYPES}  # plan dtypes CuPy holds as their bits


def device_dtype(name: str) -> np.dtype:
    """How CuPy holds a plan dtype: bf16 and the FP8 types as their bits (CuPy has neither type; kernels
    and cuBLASLt see them as they are)."""
    if name in NARROW_BITS:
        return np.dtype(NARROW_BITS[name])
    return DTYPES[name].numpy


@dataclass
class _Program:
    launches: list                      # callables, in plan order
    inputs: dict                        # name -> (device view, [pinned host] * SLOTS)
    outputs: dict                       # name -> (device view, [pinned host] * SLOTS)
    events: list                        # per slot: the last transfer that used it
    fork: object = None                 # where the program has side-stream launches: the side
    join: object = None                 # stream follows the main one first, and it the side one last
    calls: int = 0
    slot: int = 0
    graph: object = None


@dataclass
class Pending:
    """A result on its way to the host; `result()` waits for it."""
    event: object
    host: dict = field(default_factory=dict)

    def result(self) -> dict[str, np.ndarray]:
        self.event.synchronize()
        return {k: v.copy() for k, v in self.host.items()}


def _follow(cp, first, then):
    """A call that makes stream `then` wait for everything queued on stream `first` so far."""
    event = cp.cuda.Event(disable_timing=True)

    def follow():
        event.record(first)
        then.wait_event(event)
    return follow


def _on_stream(run, stream, main, waits: list, done):
    """`run` (a bound launch, which launches on the current stream) on `stream`, after the events
    `waits`, recording `done` after it where another launch waits for it. `.run` is the bare
    launch, which the profiler queues on the main stream alone."""
    if stream is main and not waits and done is None:
        return run

    def call():
        for event in waits:
            stream.wait_event(event)
        with stream:
            run()
        if done is not None:
            done.record(stream)
    call.run, call.launch = run, run.launch
    return call


class CudaBackend(WeightCopies):
    name = "cuda"
    pipeline_depth = 1  # step t+1 is queued before step t's loss is read

    def __init__(self, plan: Plan, graph: bool = True, tf32: bool = False, world=None):
        import cupy as cp
        import cupyx
        self.cp, self.plan, self.use_graph = cp, plan, graph
        self.world = world or SingleWorld()
        cp.cuda.Device(self.world.rank % cp.cuda.runtime.getDeviceCount()).use()
        check_arena_fits(plan.data["arena"]["bytes"] + WORKSPACE_BYTES, cp.cuda.runtime.memGetInfo()[1],
                         f"GPU {cp.cuda.Device().id}'s memory")
        check_architecture(plan.data["nvrtc_options"], cp.cuda.Device().compute_capability)
        mismatch = target_mismatch(plan.data["target"], cp.cuda.Device().attributes["MultiProcessorCount"])
        if mismatch and self.world.rank == 0:
            print(mismatch, file=sys.stderr, flush=True)
        self.arena = cp.zeros(plan.data["arena"]["bytes"], cp.uint8)
        self.align = plan.data["arena"]["align"]
        self.workspace = cp.empty(WORKSPACE_BYTES, cp.uint8)
        self.arena_bytes = self.arena.nbytes + self.workspace.nbytes
        start, size = plan.data["arena"]["regions"]["consts"]
        consts, host = plan.data["consts"], np.zeros(size, np.uint8)
        for off, value in consts["values"]:
            host[off - start:off - start + DTYPES[consts["dtype"]].bytes].view(DTYPES[consts["dtype"]].numpy)[0] = value
        for buf, values in plan.constant_buffers():  # the constant tensors, float32
            host[buf.offset - start:buf.offset - start + nbytes(buf)] = values.reshape(-1).view(np.uint8)
        self.arena[start:start + size].set(host)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.blas = Cublas(self.stream.ptr, self.workspace.data.ptr, tf32)
        self.choose_gemm = GemmChooser(cp, self.stream)
        self.collective, self.side = None, None
        if self.world.size > 1 or self.world.force_collectives:
            # NCCL refuses two ranks on one GPU; those fall back to MPI through host memory,
            # which cannot be captured, so they run without CUDA graphs.
            where = self.world.gather((os.uname().nodename, cp.cuda.Device().id))
            shared = len(set(where)) < len(where)
            self.collective = _HostReduce(self.world) if shared else _Nccl(self.world)
            self.use_graph = self.use_graph and not shared
        options = tuple(plan.data["nvrtc_options"])
        self.modules = {path: cp.RawModule(code=src, options=options)
                        for path, src in sorted(plan.kernels.items())}
        self._fill = cp.RawKernel(FILL_KERNEL, "fill")  # the graphs' memsets, as kernels
        self._pinned = cupyx.empty_pinned
        self.programs = {name: self._bind(prog) for name, prog in plan.programs.items()}
        cp.cuda.Device().synchronize()
        cp.get_default_memory_pool().free_all_blocks()  # the products' trials' scratch memory

    # ---- binding the plan ----------------------------------------------------------------------
    def view(self, buf: Buffer):
        return self.arena[buf.offset:buf.offset + nbytes(buf)].view(device_dtype(buf.dtype)).reshape(buf.shape)

    def _pointer(self, buf: Buffer) -> int:
        return self.arena.data.ptr + buf.offset

    def _bind(self, prog: Program) -> _Program:
        launches, pending = [], []  # pending: gradient buckets still being reduced
        grads_start, grads_size = self.plan.data["arena"]["regions"]["grads"]
        plan_launches = prog.launches
        side = self._side_stream() if any(launch.stream for launch in plan_launches) else None
        streams = (self.stream, side)
        # an event after each launch that a launch of the other stream waits for
        done = {j: self.cp.cuda.Event(disable_timing=True) for launch in plan_launches for j in launch.waits}
        for i, launch in enumerate(plan_launches):
            waits = [done[j] for j in launch.waits if j in done]
            if launch.kind == "collective":
                if self.collective:  # one process: the mean over ranks is the identity
                    out = launch.out
                    padded = -(-nbytes(out) // self.align) * self.align
                    self.collective.add_to_bucket(launches, pending, out.dtype, out.offset, padded, self, waits)
                    if i in done:  # a side launch waits for the reduction of its bucket
                        done[i] = launches[-1].done
                else:
                    done.pop(i, None)
                continue
            stream = streams[launch.stream]
            if pending and any(grads_start <= b.offset < grads_start + grads_size for b in launch.ins):
                launches.append(self.collective.join(pending, stream))
                pending = []
            launches.append(_on_stream(self._bind_launch(launch), stream, self.stream, waits, done.get(i)))
        if pending:
            launches.append(self.collective.join(pending, self.stream))

        def staged(buffers):
            return {name: (self.view(b), [self._pinned(b.shape, DTYPES[b.dtype].numpy) for _ in range(SLOTS)])
                    for name, b in buffers.items()}
        return _Program(launches, staged(prog.inputs), staged(prog.outputs),
                        [self.cp.cuda.Event(disable_timing=True) for _ in range(SLOTS)],
                        *((_follow(self.cp, self.stream, side), _follow(self.cp, side, self.stream)) if side else ()))

    def _side_stream(self):
        """The stream of the plan's side launches (passes/streams.py): kernels only, never cuBLAS,
        whose handle is bound to the main stream."""
        if self.side is None:
            self.side = self.cp.cuda.Stream(non_blocking=True)
        return self.side

    def _bind_launch(self, launch: Launch):
        cuda = launch.cuda
        if isinstance(cuda, GemmCall) and launch.stream:
            raise ValueError(f"the plan puts a cuBLAS call ({launch.op}) on stream {launch.stream}; "
                             f"this backend runs them on the main stream")
        if isinstance(cuda, GemmCall):
            g, epi = cuda.gemm, cuda.epilogue

            def typed(b):  # (pointer, dtype) of a plan buffer, or None
                return None if b is None else (self._pointer(b), b.dtype)
            run = self.blas.lt_plan(g, self._pointer(g.a), self._pointer(g.b), self._pointer(g.c),
                                    epi.kind if epi else "default", bias=typed(epi and epi.bias),
                                    aux=typed(epi and epi.aux),
                                    residual=None if epi is None or epi.residual is None else self._pointer(epi.residual),
                                    scales=cuda.scales and (self._pointer(cuda.scales.a), self._pointer(cuda.scales.b)),
                                    fast_accumulation=bool(cuda.scales and cuda.scales.fast), choose=self.choose_gemm)
        else:
            fn = self.modules[cuda.file].get_function(cuda.kernel)
            grid, block, smem = cuda.grid, cuda.block, cuda.smem
            if smem > STATIC_SMEM_LIMIT:  # beyond 48 KiB a kernel must opt in to dynamic shared memory
                fn.max_dynamic_shared_size_bytes = smem
            args = tuple(self.view(b) for b in cuda.args)

            def run():
                fn(grid, block, args, shared_mem=smem)
        run.launch = launch  # for the profiler
        return run

    # ---- running ---------------------------------------------------------------------------------
    def enqueue(self, program: str, feeds: dict, fetch=None) -> Pending:
        """Queue one run of `program` on the stream; nothing here waits for the GPU. Its outputs
        come back, or only those named in `fetch` (a greedy step needs its tokens, not its logits)."""
        self.refresh_copies(program)
        prog = self.programs[program]
        slot = prog.slot = (prog.slot + 1) % SLOTS
        prog.events[slot].synchronize()  # the transfers that last used this slot are done
        with self.stream:
            for name, (dev, hosts) in prog.inputs.items():
                hosts[slot][...] = feeds[name]
                dev.data.copy_from_host_async(hosts[slot].ctypes.data, dev.nbytes, self.stream)
            self._execute(prog)
            outputs = {name: prog.outputs[name] for name in (fetch or prog.outputs)}
            for name, (dev, hosts) in outputs.items():
                dev.data.copy_to_host_async(hosts[slot].ctypes.data, dev.nbytes, self.stream)
            prog.events[slot].record(self.stream)
        return Pending(prog.events[slot], {k: hosts[slot] for k, (_, hosts) in outputs.items()})

    def _execute(self, prog: _Program) -> None:
        prog.calls += 1
        if not self.use_graph or prog.calls == 1:  # the first run is eager: it loads and warms up
            self._queue(prog)
            return
        if prog.graph is None:
            prog.graph = StepGraph(self.cp, self.stream, lambda: self._queue(prog), self._fill.kernel.ptr)
        prog.graph.launch(self.stream)

    @staticmethod
    def _queue(prog: _Program) -> None:
        if prog.fork:
            prog.fork()
        for launch in prog.launches:
            launch()
        if prog.join:
            prog.join()

    def run(self, program: str, feeds: dict, fetch=None) -> dict[str, np.ndarray]:
        return self.enqueue(program, feeds, fetch).result()

    def sync(self) -> None:
        self.stream.synchronize()

    # ---- persistent tensors --------------------------------------------------------------------
    def tensor(self, name: str, grad: bool = False):
        t = next(t for t in self.plan.tensors if t["name"] == name)
        return self.view(Buffer.of_tensor(t, grad))

    def set_tensor(self, name: str, value: np.ndarray) -> None:
        self.sync()
        t = self.tensor(name)
        t.set(np.asarray(value, DTYPES[self._dtype_of(name)].numpy).view(t.dtype), stream=self.stream)
        self.sync()
        self.weights_written(name)

    def get_tensor(self, name: str, grad: bool = False) -> np.ndarray:
        self.sync()
        host = self.cp.asnumpy(self.tensor(name, grad), stream=self.stream, blocking=True)
        return host.view(DTYPES[self._dtype_of(name)].numpy)

    def _dtype_of(self, name: str) -> str:
        return next(t["dtype"] for t in self.plan.tensors if t["name"] == name)

    def broadcast_region(self, name: str) -> None:
        """Rank 0's copy of an arena region (the parameters) to every rank, through the host."""
        self.sync()
        host = self.cp.asnumpy(self.region(name))
        self.world.bcast(host)
        self.region(name).set(host)
        self.sync()
        if name == "params":
            self.weights_written()

    def region(self, name: str):
        """A region of float32 tensors (params, grads, state) as one flat array."""
        start, size = self.plan.data["arena"]["regions"][name]
        return self.view(Buffer("f32", start, (size // DTYPES["f32"].bytes,)))


class _Nccl:
    """Gradient averaging over NCCL on a second stream, overlapping the rest of the backward.

    Adjacent gradient slots reduced one after another form a bucket: one allreduce call. The main
    stream forks to the communication stream when a bucket's gradients are final and joins it
    just before the first launch that reads a reduced gradient. Both edges are events, so the
    whole pattern is captured into the step's CUDA graph.
    """

    def __init__(self, world):
        import cupy as cp
        from cupy.cuda import nccl
        self.cp, self.lib = cp, nccl
        uid = nccl.get_unique_id() if world.rank == 0 else None
        uid = world.comm.bcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(world.size, uid, world.rank)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.avg = getattr(nccl, "NCCL_AVG", 4)  # ncclAvg, NCCL >= 2.10

    def add_to_bucket(self, launches: list, pending: list, dtype: str, off: int, n: int, backend,
                      waits: list) -> None:
        """Reduce the n bytes at off (one padded gradient slot), with the bucket before if adjacent,
        once the events `waits` (the side stream's writes of the slot) have happened."""
        last = launches[-1] if launches else None
        if pending and last is pending[-1] and last.dtype == dtype and \
                (off + n == last.offset or last.offset + last.count == off):
            last.offset, last.count = min(off, last.offset), last.count + n
            last.waits += waits
            return
        bucket = _Bucket(self, backend, dtype, off, n, waits)
        launches.append(bucket)
        pending.append(bucket)

    def join(self, pending: list, stream):
        """A launch that makes `stream` wait for the pending buckets' reductions."""
        events = [b.done for b in pending]
        return lambda: [stream.wait_event(e) for e in events]

    def reduce(self, backend, bucket) -> None:
        main, comm = backend.stream, self.stream
        bucket.ready.record(main)
        for event in [bucket.ready, *bucket.waits]:  # the side stream's writes: the main stream goes on
            comm.wait_event(event)
        ptr = backend.arena.data.ptr + bucket.offset
        dt = DTYPES[bucket.dtype]
        self.comm.allReduce(ptr, ptr, bucket.count // dt.bytes, dt.nccl, self.avg, comm.ptr)
        bucket.done.record(comm)


class _HostReduce(_Nccl):
    """Ranks sharing a GPU: average through host memory with MPI, synchronously."""

    def __init__(self, world):
        import cupy as cp
        self.cp, self.world = cp, world

    def join(self, pending: list, stream):
        return lambda: None

    def reduce(self, backend, bucket) -> None:
        for event in bucket.waits:
            backend.stream.wait_event(event)
        dt = DTYPES[bucket.dtype]
        view = backend.view(Buffer(bucket.dtype, bucket.offset, (bucket.count // dt.bytes,)))
        host = self.cp.asnumpy(view, stream=backend.stream, blocking=True).view(dt.numpy)
        self.world.allreduce_mean(host)
        view.set(host.view(view.dtype), stream=backend.stream)
        bucket.done.record(backend.stream)


class _Bucket:
    def __init__(self, reducer: _Nccl, backend, dtype: str, offset: int, count: int, waits: list):
        """count: bytes; waits: events of side-stream launches the reduction waits for."""
        self.reducer, self.backend, self.dtype, self.offset, self.count = reducer, backend, dtype, offset, count
        self.waits = list(waits)
        self.ready = reducer.cp.cuda.Event(disable_timing=True)
        self.done = reducer.cp.cuda.Event(disable_timing=True)

    def __call__(self) -> None:
        self.reducer.reduce(self.backend, self)
