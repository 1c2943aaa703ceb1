"""CUDA C for a plan: one kernel per distinct launch (GEMMs and collectives aside: cuBLAS, NCCL).

Every launch's shapes, attributes and operand offsets are known at compile time, so each kernel is
rendered for exactly one launch shape from its family's template (the family named by the op's
registry entry; `graphgpt/families/<family>/<family>.cu.j2`, its lowering beside it): extents,
strides and constants are literals and only pointers are passed. A value that changes from run to
run (the learning rate, a step counter, a seed, a position) is a 0-d program input that the kernel
reads from its slot: a CUDA graph replays its kernels' arguments as they were captured. Launches
that render to the same text share one kernel, named after a hash of that text, so names are stable
from one compile to the next.

Conventions the backend relies on (also recorded per launch in its `cuda` call, a plan.KernelCall):
  - arguments are the launch's buffers, outputs first (`outs` of an op with several, else `out`),
    then its inputs in order, each a pointer to its dtype's C type (dtypes.py) at the buffer's
    first byte (arena base + offset);
  - the arena base is at least 256-byte aligned: a kernel moves 16 bytes per access (4 floats, 8
    bf16) only where every buffer's byte offset is a multiple of that access; narrower floats are
    loaded into float registers and rounded once, to nearest even, on store;
  - `smem` is the launch's dynamic shared memory in bytes, chosen by its family (0: static only);
  - only kernels whose op declares `overwrites` may get their output as one of their inputs too
    (pointwise kernels, the cross-entropy gradient, alone or with its loss, over its logits): each
    thread reads its elements before writing them, and those pointers take no __restrict__;
  - reductions that span several blocks keep their partial results and a ticket counter in
    `__device__` arrays of their own module, so one kernel must not run concurrently with itself
    (launches on one stream, as in a plan, never do).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from . import families
from .errors import UserError
from .kernels.common import Kernel
from .ops import REGISTRY
from .ops.registry import LIBRARY_KINDS
from .plan import KernelCall, Launch
from .target import Target

# a family's lowering, by family name: lower(launch, target) -> Kernel
FAMILIES = {name: module.lower for name, module in families.load("lowering").items()}
ENV = Environment(loader=FileSystemLoader(families.DIRECTORY), undefined=StrictUndefined,
                  keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)

# What every kernel file is compiled with, here and by the runtime (the plan's "nvrtc_options").
# The templates' generic lambdas (`[&](const auto* src, ...)`) are device code; the NVRTC of the
# nvidia-cuda-nvrtc 13.0.88 wheel (which a CUDA 13.0 build of PyTorch pulls in) takes them for host
# functions, and refuses them, unless told that device is the default; 13.5 needs no telling.
NVRTC_OPTIONS = ("--std=c++17", "--device-as-default-execution-space")


def lower_plan(data: dict, target: Target) -> dict[str, str]:
    """Give every launch of every program of `data` (plan.Program records, replaced by the lowered
    ones) its kernel for `target`, as its `cuda` call (matmul and collective launches are left as
    they are), and the plan the NVRTC options its kernels need; returns the kernel files
    {"kernels/<family>.cu": source}."""
    kernels: dict[str, dict[str, str]] = {}   # family -> kernel name -> text, in order of first use
    archs: dict[str, set[str]] = {}           # family -> the architectures its kernels' own instructions need
    helpers: dict[str, set[str]] = {}         # family -> the optional helpers its kernels ask its prelude for
    rendered: dict[str, tuple[str, str]] = {}

    def lowered(launch: Launch) -> Launch:
        op = REGISTRY[launch.op]
        if op.kind in LIBRARY_KINDS:
            return launch
        if op.template is None:
            raise ValueError(f"op {op.name} names no CUDA template in its registry entry")
        k = FAMILIES[op.template](launch, target)
        name, text = _render(op.template, k, rendered)
        if kernels.setdefault(op.template, {}).setdefault(name, text) != text:
            raise RuntimeError(f"kernel name {name} is shared by two different kernels")
        archs.setdefault(op.template, set()).update({k.arch} if k.arch else set())
        helpers.setdefault(op.template, set()).update(k.helpers)
        args = tuple(k.args or (*launch.outputs, *launch.ins))
        _check_parameters(name, text, len(args))
        return replace(launch, cuda=KernelCall(name, f"kernels/{op.template}.cu", tuple(k.grid), tuple(k.block),
                                               k.smem, args))

    programs = data["programs"]
    for name, program in programs.items():
        programs[name] = replace(program, launches=tuple(lowered(launch) for launch in program.launches))
    _check_shared_memory(data, target)
    data["nvrtc_options"] = nvrtc_options(set().union(*archs.values()))
    return {f"kernels/{family}.cu": _kernel_file(family, list(texts.values()), archs[family], helpers[family])
            for family, texts in sorted(kernels.items())}


def nvrtc_options(archs: set[str]) -> list[str]:
    """The plan's NVRTC options: NVRTC_OPTIONS, and the architecture whose own instructions
    (Hopper's wgmma: sm_90a) some kernel uses. Named last, it wins over the runtime's default
    (CuPy names the GPU's own, sm_90, first); a plan without one runs on any GPU."""
    if len(archs) > 1:
        raise ValueError(f"kernels need the instructions of several architectures: {sorted(archs)}")
    return [*NVRTC_OPTIONS, *(f"--gpu-architecture={arch}" for arch in archs)]


def _check_parameters(name: str, text: str, n_args: int) -> None:
    """The rendered kernel takes one pointer per buffer its launch passes: checked here, where a
    template and its family disagree, instead of at the launch, where it would read past its
    arguments."""
    start = text.index(f" {name}(") + len(name) + 2
    depth, params, at = 1, 1, start
    while depth:
        c = text[at]
        depth += (c == "(") - (c == ")")
        params += c == "," and depth == 1
        at += 1
    if not text[start:at - 1].strip():
        params = 0
    if params != n_args:
        raise ValueError(f"kernel {name} takes {params} parameters, but its launch passes {n_args} buffers")


def _check_shared_memory(data: dict, target: Target) -> None:
    """Refuse a kernel that asks for more shared memory than a block of the target has: it would
    fail at its first launch. After every launch is lowered, so that a family's own refusal, which
    says what to change, comes first."""
    for program in data["programs"].values():
        for launch in program.launches:
            smem = launch.cuda.smem if isinstance(launch.cuda, KernelCall) else 0
            if smem > target.smem_per_block:
                raise UserError(f"{launch.where or launch.op}: its {launch.op} kernel needs {smem} bytes "
                                f"of shared memory, more than a block has on target {target.name} "
                                f"({target.smem_per_block})")


def template_name(family: str) -> str:
    """A family's template, as the template loader (rooted at graphgpt/families/) names it."""
    return f"{family}/{family}.cu.j2"


def _render(family: str, k: Kernel, memo: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """(name, text); the name is the stem plus a hash of the text the stem alone gives."""
    macro = ENV.get_template(template_name(family)).module.kernel
    key = json.dumps([family, k.stem, k.params], sort_keys=True)
    if key not in memo:
        digest = hashlib.sha256(macro(dict(k.params, name=k.stem)).encode()).hexdigest()[:10]
        name = f"{k.stem}_{digest}"
        memo[key] = name, macro(dict(k.params, name=name))
    return memo[key]


def _kernel_file(family: str, texts: list[str], archs: set[str], helpers: set[str]) -> str:
    """The kernels after their family's prelude, which renders the helpers of an architecture's
    own instructions only where a kernel needs them (`archs`), and so the optional ones its
    kernels ask for (`helpers`)."""
    head = (f"// Generated by graphgpt.codegen from graphgpt/families/{template_name(family)}: "
            "one kernel per distinct launch.\n"
            "// Compiled with NVRTC as it is: no #include, builtins only.\n")
    prelude = ENV.get_template(template_name(family)).make_module({"archs": sorted(archs), "helpers": sorted(helpers)}).prelude()
    return head + prelude + "\n" + "\n".join(texts)


# ---- NVRTC -------------------------------------------------------------------------------------
class CudaCompileError(RuntimeError):
    """NVRTC rejected a kernel file (the message carries its log) or is not installed."""


def compile_cuda(source: str, arch: str = "sm_90", options: tuple[str, ...] = NVRTC_OPTIONS) -> bytes:
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
        flags = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in options)]
        err, = nvrtc.nvrtcCompileProgram(prog, len(flags), flags)
        log_size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        # Fresh buffers for NVRTC to write into: `b" " * 1` would be Python's one shared b" ",
        # which an empty log (a lone NUL) would overwrite for the whole process.
        log = bytearray(log_size)
        check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CudaCompileError(f"NVRTC failed for {arch}:\n{log.decode(errors='replace').rstrip(chr(0))}")
        size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = bytearray(size)
        check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return bytes(cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
