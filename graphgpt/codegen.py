"""CUDA C for a plan: one kernel per distinct launch (GEMMs and collectives aside: cuBLAS, NCCL).

Every launch's shapes, attributes and operand offsets are known at compile time, so each kernel is
rendered for exactly one launch shape from its family's template (`templates/<family>.cu.j2`, named
by the op's registry entry): extents, strides and constants are literals and only pointers are
passed. Launches that render to the same text share one kernel, named after a hash of that text, so
names are stable from one compile to the next.

Conventions the backend relies on (also recorded per launch in `launch["cuda"]`):
  - arguments are the launch's buffers, output first, then its inputs in order, each a pointer to
    its dtype's C type (dtypes.py) at the buffer's first byte (arena base + offset);
  - the arena base is at least 256-byte aligned: a kernel moves 16 bytes per access (4 floats, 8
    bf16) only where every buffer's byte offset is a multiple of that access; narrower floats are
    loaded into float registers and rounded once, to nearest even, on store;
  - shared memory is static (`smem` is the dynamic amount, always 0 here);
  - only pointwise kernels may get their output as one of their inputs too (optimizer updates run
    in place): each thread reads its elements before writing them, and they take no __restrict__;
  - reductions that span several blocks keep their partial results and a ticket counter in
    `__device__` arrays of their own module, so one kernel must not run concurrently with itself
    (launches on one stream, as in a plan, never do).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .dtypes import DTYPES, nbytes
from .ops import REGISTRY
from .ops.registry import prod
from .passes.memory import aligned

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
ENV = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True,
                  trim_blocks=True, lstrip_blocks=True)

VECTOR_BYTES = 16  # one vector access
THREADS = 256    # threads per block of the streaming and row kernels
WARPS = THREADS // 32
WAVE = 4 * 132   # blocks that fill the 132 SMs of an H200 a few times: what split reductions aim for
MAX_SPLITS = 1024
SPLIT_ROWS = 64  # fewest rows a split of a column reduction walks
ID_CHUNK = 2048  # ids an embedding-gradient block reads per round (8 KiB of shared memory)
CACHED_ROW = 64  # floats per lane a warp keeps in registers for a LayerNorm or softmax row (2048 per row)
LIBRARY_KINDS = ("matmul", "collective")  # launches a backend hands to cuBLAS and NCCL


@dataclass
class Kernel:
    """A launch's kernel before naming: template parameters and launch geometry."""
    stem: str                      # the name's readable part
    params: dict
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: list | None = None       # the kernel's buffers when not the launch's (out, *in)


def lower_plan(data: dict) -> dict[str, str]:
    """Give every launch of every program its kernel, in `launch["cuda"]` (matmul and collective
    launches are left as they are); returns the kernel files {"kernels/<family>.cu": source}."""
    kernels: dict[str, dict[str, str]] = {}   # family -> kernel name -> text, in order of first use
    rendered: dict[str, tuple[str, str]] = {}
    for program in data["programs"].values():
        for launch in program["launches"]:
            op = REGISTRY[launch["op"]]
            if op.kind in LIBRARY_KINDS:
                continue
            if op.template is None:
                raise ValueError(f"op {op.name} names no CUDA template in its registry entry")
            k = LOWER[op.template](launch)
            name, text = _render(op.template, k, rendered)
            if kernels.setdefault(op.template, {}).setdefault(name, text) != text:
                raise RuntimeError(f"kernel name {name} is shared by two different kernels")
            launch["cuda"] = {"kernel": name, "file": f"kernels/{op.template}.cu", "grid": list(k.grid),
                              "block": list(k.block), "smem": 0, "args": k.args or [launch["out"], *launch["in"]]}
    return {f"kernels/{family}.cu": _kernel_file(family, list(texts.values()))
            for family, texts in sorted(kernels.items())}


def _render(family: str, k: Kernel, memo: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """(name, text); the name is the stem plus a hash of the text the stem alone gives."""
    macro = ENV.get_template(f"{family}.cu.j2").module.kernel
    key = json.dumps([family, k.stem, k.params], sort_keys=True)
    if key not in memo:
        digest = hashlib.sha256(macro(dict(k.params, name=k.stem)).encode()).hexdigest()[:10]
        name = f"{k.stem}_{digest}"
        memo[key] = name, macro(dict(k.params, name=name))
    return memo[key]


def _kernel_file(family: str, texts: list[str]) -> str:
    head = (f"// Generated by graphgpt.codegen from templates/{family}.cu.j2: one kernel per distinct launch.\n"
            "// Compiled with NVRTC as it is: no #include, builtins only.\n")
    return head + ENV.get_template(f"{family}.cu.j2").module.prelude() + "\n" + "\n".join(texts)


# ---- layout helpers ----------------------------------------------------------------------------
def _strides(shape) -> list[int]:
    out, step = [], 1
    for d in reversed(shape):
        out.append(step)
        step *= d
    return out[::-1]


def _broadcast_strides(shape, out_shape) -> list[int]:
    """Strides that read `shape` broadcast to `out_shape` (0 along broadcast axes)."""
    shape = [1] * (len(out_shape) - len(shape)) + list(shape)
    return [s if d == o else 0 for d, o, s in zip(shape, out_shape, _strides(shape))]


def _collapse(extents, *strides) -> tuple[list[int], list[list[int]]]:
    """Drop unit axes and merge neighbours that every operand walks contiguously: fewer divisions."""
    dims = [(e, [s[i] for s in strides]) for i, e in enumerate(extents) if e != 1]
    merged: list[tuple[int, list[int]]] = []
    for e, st in dims:
        if merged and all(po == so * e for po, so in zip(merged[-1][1], st)):
            merged[-1] = (merged[-1][0] * e, st)
        else:
            merged.append((e, st))
    return [e for e, _ in merged], [[st[i] for _, st in merged] for i in range(len(strides))]


def _reshaped_strides(shape, strides, new_shape) -> list[int]:
    """Strides that read the same elements as (shape, strides) in the order of `new_shape` (same size).
    Axes are grouped into the shortest runs of equal size on both sides; within a run the operand
    must be contiguous (one stride per element) or broadcast (stride 0) for that to exist."""
    shape, new_shape, out = list(shape), list(new_shape), []
    i = j = 0
    while j < len(new_shape):
        old_run, new_run, a, b = [i], [j], shape[i] if i < len(shape) else 1, new_shape[j]
        i, j = i + 1, j + 1
        while a != b:
            if a < b:
                a *= shape[i]
                old_run.append(i)
                i += 1
            else:
                b *= new_shape[j]
                new_run.append(j)
                j += 1
        old_run = [k for k in old_run if k < len(shape) and shape[k] != 1]
        inner = strides[old_run[-1]] if old_run else 0
        for k, nxt in zip(old_run, old_run[1:]):
            if strides[k] != strides[nxt] * shape[nxt]:
                raise ValueError(f"strides {strides} of {shape} cannot be read as {new_shape}")
        step, run = inner, []
        for k in reversed(new_run):
            run.append(step)
            step *= new_shape[k]
        out += run[::-1]
    return out


def _broadcast_shape(*shapes) -> list[int]:
    """A fused chain's shape: its operands' shapes broadcast together."""
    return list(np.broadcast_shapes(*(tuple(s) for s in shapes)))


def _itype(*shapes) -> str:
    """32-bit index arithmetic (cheaper division by constants) unless a buffer needs more."""
    return "unsigned int" if max(prod(s) for s in shapes) < 2**31 else "unsigned long long"


def _width(*buffers) -> int:
    """Elements per 16-byte access of the widest float among these buffers: 4 for f32, 8 for bf16.
    A kernel moves the same number of elements of each of its operands at once."""
    return VECTOR_BYTES // max((DTYPES[b[0]].bytes for b in buffers if DTYPES[b[0]].is_float), default=4)


def _aligned(vec: int, *buffers) -> bool:
    """Every buffer starts where a `vec`-element access of its dtype is aligned."""
    return all(b[1] % (vec * DTYPES[b[0]].bytes) == 0 for b in buffers)


def _types(launch) -> dict:
    """The C element types of a launch's output and inputs, as the templates declare them."""
    return {"out_t": DTYPES[launch["out"][0]].ctype, "in_t": [DTYPES[b[0]].ctype for b in launch["in"]]}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _float(x: float) -> str:
    return f"{float(x)!r}f"


def _streaming(n_vec: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """One vector per thread: grid and block for `n_vec` work items."""
    threads = min(THREADS, _cdiv(n_vec, 32) * 32)
    return (_cdiv(n_vec, threads), 1, 1), (threads, 1, 1)


def _operand(extents: list[int], strides: list[int], buf, vec: int) -> dict:
    """How a kernel reads one operand at the output's flat index i (vec consecutive elements at once):
    vec    -- `vec` consecutive elements of the operand: one (vector) load
    splat  -- all `vec` elements read the same operand element (broadcast along the innermost axis)
    gather -- element by element (the innermost axis is strided, or not aligned for a vector load)
    """
    dims = [[e, s] for e, s in zip(extents, strides)]
    identity = strides == _strides(extents)
    inner = strides[-1] if strides else 0
    if vec == 1 or (inner == 1 and _aligned(vec, buf)):
        mode = "vec"
    elif inner == 0:
        mode = "splat"
    else:
        mode = "gather"
    return {"mode": mode, "identity": identity, "dims": dims}


# ---- the families ------------------------------------------------------------------------------
def _elementwise(launch) -> Kernel:
    """A pointwise op, or a fused chain of them: every step is evaluated per element in registers."""
    out = launch["out"]
    shape = out[2]
    perm = launch["attrs"].get("perm")
    if perm is None:
        extents, strides = _collapse(shape, *(_broadcast_strides(b[2], shape) for b in launch["in"]))
    else:  # the chain's result is written reshaped and transposed: operand strides in the output's order
        chain = _broadcast_shape(*(b[2] for b in launch["in"]))
        view = launch["attrs"].get("shape", chain)
        operand_strides = [_reshaped_strides(chain, _broadcast_strides(b[2], chain), view) for b in launch["in"]]
        extents, strides = _collapse(shape, *([st[p] for p in perm] for st in operand_strides))
    n, w = prod(shape), _width(out, *launch["in"])
    vec = w if n % w == 0 and _aligned(w, out) and (not extents or extents[-1] % w == 0) else 1
    grid, block = _streaming(n // vec)
    operands = [_operand(extents, st, b, vec) for st, b in zip(strides, launch["in"])]
    return Kernel(launch["op"], {**_types(launch), "steps": _steps(launch), "n": n, "vec": vec, "operands": operands,
                                 "itype": _itype(shape, *(b[2] for b in launch["in"])), "threads": block[0]},
                  grid, block)


def _steps(launch) -> list[dict]:
    """The op's C expressions in evaluation order; an argument is operand "x<i>" or step "s<k>"."""
    program = launch["attrs"]["program"] if "program" in launch["attrs"] else \
        [[launch["op"], launch["attrs"], [-1 - i for i in range(len(launch["in"]))]]]
    steps = []
    for op, attrs, args in program:
        expr = REGISTRY[op].c_expr(dict(attrs))
        if expr is None:
            raise ValueError(f"op {op} in a pointwise kernel has no C expression in its registry entry")
        steps.append({"op": op, "expr": expr, "args": [f"s{a}" if a >= 0 else f"x{-1 - a}" for a in args]})
    return steps


def _shape(launch) -> Kernel:
    op, out, (src,) = launch["op"], launch["out"], launch["in"]
    attrs, shape, in_shape = launch["attrs"], out[2], src[2]
    n = prod(shape)
    itype = _itype(shape, in_shape)
    if op in ("slice", "pad"):
        return _window(launch, itype)
    if op == "transpose":
        in_strides = _strides(in_shape)
        extents, (strides,) = _collapse(shape, [in_strides[p] for p in attrs["perm"]])
        if 1 in strides[:-1]:
            return _tiled_transpose(launch, extents, strides, itype)
    elif op == "broadcast_to":
        extents, (strides,) = _collapse(shape, _broadcast_strides(in_shape, shape))
    else:  # copy, or a reshape that must own its memory: same elements, same order
        extents, strides = ([n], [1]) if n > 1 else ([], [])
    w = _width(out, src)
    vec = w if n % w == 0 and _aligned(w, out) and extents and extents[-1] % w == 0 else 1
    grid, block = _streaming(n // vec)
    return Kernel("gather", {**_types(launch), "mode": "gather", "n": n, "vec": vec, "itype": itype,
                             "src": _operand(extents, strides, src, vec), "threads": block[0]}, grid, block)


def _window(launch, itype: str) -> Kernel:
    """slice and pad as rows: out[r, j] = in[r, j - shift] where 0 <= j - shift < in_row, else 0."""
    op, attrs, out, (src,) = launch["op"], launch["attrs"], launch["out"], launch["in"]
    axis, in_shape = attrs["axis"], src[2]
    inner = prod(in_shape[axis + 1:])
    in_row = in_shape[axis] * inner
    out_row = out[2][axis] * inner
    shift = attrs["before"] * inner if op == "pad" else -attrs["start"] * inner
    n = prod(out[2])
    w = _width(out, src)
    vec = w if all(x % w == 0 for x in (in_row, out_row, shift)) and _aligned(w, out, src) else 1
    grid, block = _streaming(n // vec)
    return Kernel("window", {**_types(launch), "mode": "window", "n": n, "vec": vec, "itype": itype, "in_row": in_row,
                             "out_row": out_row, "shift": shift, "threads": block[0]}, grid, block)


def _tiled_transpose(launch, extents: list[int], strides: list[int], itype: str) -> Kernel:
    """The input's contiguous axis is not the output's: go through a shared-memory tile so that both
    the reads (along the input's axis y) and the writes (along the output's last axis x) coalesce."""
    y = strides.index(1)
    out_strides = _strides(extents)
    batch = [i for i in range(len(extents)) if i not in (y, len(extents) - 1)]
    n_batch = prod(extents[i] for i in batch)
    tiles_x, tiles_y = _cdiv(extents[-1], 32), _cdiv(extents[y], 32)
    params = {**_types(launch), "mode": "tile", "itype": itype, "ex": extents[-1], "sx": strides[-1], "ey": extents[y],
              "oy": out_strides[y], "tiles_x": tiles_x, "batch": n_batch,
              "in_batch": [[extents[i], strides[i]] for i in batch],
              "out_batch": [[extents[i], out_strides[i]] for i in batch]}
    return Kernel("transpose", params, (tiles_x * tiles_y, 1, min(n_batch, 65535)), (32, 8, 1))


def _reduce(launch) -> Kernel:
    """sum over any axes. The input's axes fold into alternating runs of kept and reduced axes:
    rows -- the innermost run is reduced: threads of a warp (or block) share one output and walk
            its contiguous elements;
    cols -- the innermost run is kept: each thread owns output columns and walks the reduced axes,
            32 neighbouring columns per warp so that every load coalesces.
    Too few outputs for the GPU split the reduced range over several blocks; the last block to
    finish adds their partial sums in a fixed order, so results do not depend on timing."""
    if launch["op"] == "sum_squares":
        flat = _flat_range(launch["in"])
        square = [["mul", [], [-1, -1]]]
        k = _reduce({"op": "fused_sum", "out": launch["out"], "in": [flat],
                     "attrs": {"axes": [0], "keepdims": False, "program": square}})
        return Kernel(k.stem.replace("fused_sum", "sum_squares"), k.params, k.grid, k.block, args=[launch["out"], flat])
    out, srcs = launch["out"], launch["in"]
    shape, axes = _broadcast_shape(*(b[2] for b in srcs)), set(launch["attrs"]["axes"])
    full = [b for b in srcs if prod(b[2]) == prod(shape)]  # the others are scalars (see fuse.py)
    prologue = {"steps": _steps(launch) if launch["op"] == "fused_sum" else [],
                "operands": ["full" if b in full else "scalar" for b in srcs]}
    stem = "fused_sum" if prologue["steps"] else "sum"
    strides = _strides(shape)
    runs: list[list] = []   # [reduced, extent, stride], outermost first
    for i, e in enumerate(shape):
        if e == 1:
            continue
        if runs and runs[-1][0] == (i in axes):
            runs[-1][1] *= e
            runs[-1][2] = strides[i]
        else:
            runs.append([i in axes, e, strides[i]])
    kept = [[e, s] for r, e, s in runs if not r]
    reduced = [[e, s] for r, e, s in runs if r]
    n_out, n_red = prod(e for e, _ in kept), prod(e for e, _ in reduced)
    common = {**_types(launch), "itype": _itype(shape), "n_out": n_out, "n_red": n_red, "kept": kept, "reduced": reduced, **prologue}
    if kept and (not runs or not runs[-1][0]):
        w = _width(out, *full)
        vec = w if kept[-1][0] % w == 0 and _aligned(w, out, *full) else 1
        x_blocks = _cdiv(n_out // vec, 32)
        splits = max(1, min(_cdiv(WAVE, x_blocks), _cdiv(n_red, SPLIT_ROWS), MAX_SPLITS))
        chunk = _cdiv(n_red, splits)
        splits = _cdiv(n_red, chunk)
        return Kernel(f"{stem}_cols", dict(common, mode="cols", vec=vec, splits=splits, chunk=chunk),
                      (x_blocks, splits, 1), (32, WARPS, 1))
    w = _width(*full)
    vec = w if reduced and reduced[-1][0] % w == 0 and _aligned(w, *full) else 1
    n_vec = n_red // vec
    if n_vec <= 32 * 16:  # a warp per output
        return Kernel(f"{stem}_rows", dict(common, mode="warp", vec=vec, splits=1, chunk=n_vec),
                      (_cdiv(n_out, WARPS), 1, 1), (THREADS, 1, 1))
    splits = 1 if n_out >= WAVE // 2 else max(1, min(_cdiv(WAVE, n_out), _cdiv(n_vec, THREADS * 8), MAX_SPLITS))
    chunk = _cdiv(n_vec, splits)
    splits = _cdiv(n_vec, chunk)
    return Kernel(f"{stem}_rows", dict(common, mode="block", vec=vec, splits=splits, chunk=chunk),
                  (n_out, splits, 1), (THREADS, 1, 1))


def _flat_range(buffers) -> list:
    """Tensors that lie one after another in memory (each where the last one's aligned end is) as one
    flat buffer from the first's start to the last's end."""
    for prev, nxt in zip(buffers, buffers[1:]):
        if nxt[0] != prev[0] or nxt[1] != prev[1] + aligned(nbytes(prev)):
            raise ValueError("a multi-tensor reduction needs its tensors one after another in memory")
    start, last = buffers[0][1], buffers[-1]
    return [last[0], start, [(last[1] + nbytes(last) - start) // DTYPES[last[0]].bytes]]


def _row_vec(width: int, *buffers) -> int:
    """The 16-byte access's element count where rows of `width` elements in these buffers allow it,
    else 1."""
    w = _width(*buffers)
    return w if width % w == 0 and _aligned(w, *buffers) else 1


def _layernorm(launch) -> Kernel:
    """A warp per row; rows up to 2048 floats stay in registers between the passes."""
    *lead, c = launch["out"][2]
    rows, vec = prod(lead), _row_vec(c, launch["out"], *launch["in"])
    per_lane = _cdiv(c // vec, 32)
    attrs = launch["attrs"]
    return Kernel(launch["op"], {**_types(launch), "op": launch["op"], "rows": rows, "c": c, "vec": vec, "per_lane": per_lane,
                                 "scaled": attrs.get("scaled", False), "accumulate": attrs.get("accumulate", False),
                                 "cached": per_lane * vec <= CACHED_ROW, "eps": _float(attrs["eps"]),
                                 "itype": _itype(launch["out"][2])},
                  (_cdiv(rows, WARPS), 1, 1), (THREADS, 1, 1))


def _softmax(launch) -> Kernel:
    """A warp per row of the (T, T) score matrices; row i reads only keys j <= i. Rows of up to
    2048 floats stay in registers between the forward's passes."""
    *lead, t = launch["out"][2]
    rows, vec = prod(lead), _row_vec(t, launch["out"], *launch["in"])
    per_lane = _cdiv(t // vec, 32)
    return Kernel(launch["op"], {**_types(launch), "op": launch["op"], "rows": rows, "t": t, "vec": vec,
                                 "per_lane": per_lane, "cached": per_lane * vec <= CACHED_ROW, "scale": _float(launch["attrs"]["scale"]),
                                 "itype": _itype(launch["out"][2])},
                  (_cdiv(rows, WARPS), 1, 1), (THREADS, 1, 1))


def _cross_entropy(launch) -> Kernel:
    """A block per row for wide vocabularies, a warp per row for narrow ones."""
    logits = launch["in"][0]
    v = logits[2][-1]
    n = prod(logits[2][:-1])
    written = [launch["out"]] if launch["out"][2] else []  # the grad's rows, not the scalar loss
    vec = _row_vec(v, logits, *written)
    per_row = 32 if v // vec <= 32 * 8 else THREADS
    blocks = _cdiv(n, THREADS // per_row)
    return Kernel(launch["op"], {**_types(launch), "op": launch["op"], "n": n, "v": v, "vec": vec, "per_row": per_row,
                                 "blocks": blocks, "itype": _itype(logits[2])},
                  (blocks, 1, 1), (THREADS, 1, 1))


def _embedding(launch) -> Kernel:
    out = launch["out"]
    if launch["op"] == "embedding":
        table, ids = launch["in"]
        c, n = table[2][1], prod(ids[2])
        w = _width(out, table)
        vec = w if c % w == 0 and _aligned(w, out, table) else 1
        grid, block = _streaming(n * c // vec)
        return Kernel("embedding", {**_types(launch), "op": "embedding", "n": n, "c": c, "vec": vec, "threads": block[0],
                                    "itype": _itype(out[2], table[2])}, grid, block)
    ids, g = launch["in"]
    rows, c = out[2]
    w = _width(out, g)
    vec = w if c % w == 0 and _aligned(w, out, g) else 1
    threads = min(THREADS, _cdiv(c // vec, 32) * 32)
    col_blocks = _cdiv(c, threads * vec)
    # table rows a block owns: <= 32 KiB of sums, and few enough that the blocks fill the GPU (every
    # block scans all ids, so a small table is better spread one row per block)
    block_rows = max(1, min(32, 8192 // (threads * vec), rows * col_blocks // WAVE))
    # groups of threads that share out a block's rows: as many as fit in 1024 threads and 32 KiB of
    # sums, so that a frequent id (in text, a few ids are most of them) is not summed row by row
    groups = max(1, min(1024 // threads, 8192 // (block_rows * threads * vec)))
    return Kernel("embedding_grad", {**_types(launch), "op": "embedding_grad", "rows": rows, "c": c, "n": prod(ids[2]),
                                     "vec": vec, "threads": threads, "groups": groups, "block_rows": block_rows,
                                     "ids_per_thread": max(1, ID_CHUNK // (threads * groups)),
                                     "itype": _itype(out[2], g[2])},
                  (_cdiv(rows, block_rows), col_blocks, 1), (threads * groups, 1, 1))


LOWER = {"elementwise": _elementwise, "shape": _shape, "reduce": _reduce, "layernorm": _layernorm,
         "softmax": _softmax, "cross_entropy": _cross_entropy, "embedding": _embedding}


# ---- NVRTC -------------------------------------------------------------------------------------
class CudaCompileError(RuntimeError):
    """NVRTC rejected a kernel file (the message carries its log) or is not installed."""


def compile_cuda(source: str, arch: str = "sm_90") -> bytes:
    """Compile one kernel file to a cubin for `arch` with NVRTC (no GPU needed)."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        raise CudaCompileError(f"NVRTC is not available ({e}): pip install -e '.[dev]'") from None

    def check(result, what: str):
        err, *values = result
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CudaCompileError(f"{what}: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")
        return values[0] if values else None

    prog = check(nvrtc.nvrtcCreateProgram(source.encode(), b"kernels.cu", 0, [], []), "nvrtcCreateProgram")
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
        err, = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        log_size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log = b" " * log_size
        check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CudaCompileError(f"NVRTC failed for {arch}:\n{log.decode(errors='replace').rstrip(chr(0))}")
        size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
