"""What a plan.json must hold, as data, and the walker that checks a loaded plan against it.

The runtime trusts the plan: a backend derives nothing, so a key it reads that is missing or of
the wrong type would surface as a traceback deep inside a backend, or as a kernel writing outside
the arena. `check` walks the whole plan once, at load, and names the first thing wrong by its JSON
path (`programs.train.launches[3].out: ...`). Each node of the schema is a small object with
`walk(value, path, plan)`; the few rules that relate one part of the plan to another (a buffer
within the arena, a kernel file the plan has, a launch waited for that exists) are checks of their
own, listed with the key they apply to.
"""
from __future__ import annotations

import math

from .dtypes import DTYPES, FP8_TYPES, nbytes
from .numpy_ops import BY_OP
from .plan import Buffer as PlanBuffer  # the record; Buffer below is its schema
from .runtime.cublas import LT_EPILOGUES


class PlanError(Exception):
    """A plan.json that does not match the schema; the message starts with the JSON path."""


def _fail(path: str, message: str):
    raise PlanError(f"{path or '(top level)'}: {message}")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Int:
    def __init__(self, low: int = 0, high: int | None = None):
        self.low, self.high = low, high

    def walk(self, value, path, plan):
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, f"expected an integer, got {_shown(value)}")
        if value < self.low or (self.high is not None and value > self.high):
            _fail(path, f"{value} is out of range (expected "
                        f"{f'>= {self.low}' if self.high is None else f'{self.low} to {self.high}'})")


class Num:
    """A finite number in [low, high] (or [low, high) with `open_high`)."""

    def __init__(self, low: float = -math.inf, high: float = math.inf, open_high: bool = False, positive: bool = False):
        self.low, self.high, self.open_high, self.positive = low, high, open_high, positive

    def walk(self, value, path, plan):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(path, f"expected a finite number, got {_shown(value)}")
        above = value > self.high or (self.open_high and value == self.high)
        if value < self.low or above or (self.positive and value <= 0):
            _fail(path, f"{value} is out of range")


class Str:
    def __init__(self, *choices: str):
        self.choices = choices

    def walk(self, value, path, plan):
        if not isinstance(value, str):
            _fail(path, f"expected a string, got {_shown(value)}")
        if self.choices and value not in self.choices:
            _fail(path, f"{value!r} is not one of {', '.join(self.choices)}")


class Bool:
    def walk(self, value, path, plan):
        if not isinstance(value, bool):
            _fail(path, f"expected true or false, got {_shown(value)}")


class Anything:
    def walk(self, value, path, plan):
        pass


class Nullable:
    def __init__(self, inner):
        self.inner = inner

    def walk(self, value, path, plan):
        if value is not None:
            self.inner.walk(value, path, plan)


class List:
    def __init__(self, item, length: int | None = None):
        self.item, self.length = item, length

    def walk(self, value, path, plan):
        if not isinstance(value, list):
            _fail(path, f"expected a list, got {_shown(value)}")
        if self.length is not None and len(value) != self.length:
            _fail(path, f"expected {self.length} items, got {len(value)}")
        for i, item in enumerate(value):
            self.item.walk(item, f"{path}[{i}]", plan)


class Tuple:
    """A list of fixed length whose items have schemas of their own."""

    def __init__(self, *items, what: str):
        self.items, self.what = items, what

    def walk(self, value, path, plan):
        if not isinstance(value, list) or len(value) != len(self.items):
            _fail(path, f"expected {self.what}, got {_shown(value)}")
        for i, (schema, item) in enumerate(zip(self.items, value)):
            schema.walk(item, f"{path}[{i}]", plan)


class Obj:
    """A JSON object with `required` and `optional` keys (others are let through: a model's own
    CONFIG keys, attributes the runtime does not read); `checks` relate the keys' values."""

    def __init__(self, required: dict, optional: dict | None = None, checks=()):
        self.required, self.optional, self.checks = required, optional or {}, checks

    def walk(self, value, path, plan):
        if not isinstance(value, dict):
            _fail(path, f"expected an object, got {_shown(value)}")
        for key in self.required:
            if key not in value:
                _fail(path, f"missing key {key!r}")
        for key, schema in {**self.required, **self.optional}.items():
            if key in value:
                schema.walk(value[key], f"{path}.{key}" if path else key, plan)
        for check in self.checks:
            check(value, path, plan)


class Map:
    """An object of any keys (among `keys`, when given), every value of one schema."""

    def __init__(self, value, keys: tuple[str, ...] = ()):
        self.value, self.keys = value, keys

    def walk(self, value, path, plan):
        if not isinstance(value, dict):
            _fail(path, f"expected an object, got {_shown(value)}")
        for key, item in value.items():
            if self.keys and key not in self.keys:
                _fail(path, f"unknown key {key!r} (expected {', '.join(self.keys)})")
            self.value.walk(item, f"{path}.{key}", plan)


class Switch:
    """One of several schemas, chosen by `choose(value)` (a case name) once the value is an object."""

    def __init__(self, choose, cases: dict):
        self.choose, self.cases = choose, cases

    def walk(self, value, path, plan):
        if not isinstance(value, dict):
            _fail(path, f"expected an object, got {_shown(value)}")
        self.cases[self.choose(value)].walk(value, path, plan)


# ---- checks that relate parts of the plan -------------------------------------------------------
def _in_arena(buf: PlanBuffer, path, plan):
    end = buf.offset + nbytes(buf)
    if end > plan["arena"]["bytes"]:
        _fail(path, f"ends at byte {end}, past the arena's {plan['arena']['bytes']}")
    if buf.offset % DTYPES[buf.dtype].bytes:
        _fail(path, f"offset {buf.offset} is not a multiple of {buf.dtype}'s {DTYPES[buf.dtype].bytes} bytes")


class Buffer(Tuple):
    """[dtype, byte offset, shape], inside the arena."""

    def __init__(self):
        super().__init__(Str(*DTYPES), Int(), List(Int()), what="a buffer [dtype, byte offset, shape]")

    def walk(self, value, path, plan):
        super().walk(value, path, plan)
        _in_arena(PlanBuffer.from_json(value), path, plan)


def _regions_in_arena(regions, path, plan):
    for name, (start, size) in regions.items():
        if start + size > plan["arena"]["bytes"]:
            _fail(f"{path}.{name}", f"ends at byte {start + size}, past the arena's {plan['arena']['bytes']}")


def _tensor_in_arena(tensor, path, plan):
    _in_arena(PlanBuffer.of_tensor(tensor), f"{path}.offset", plan)
    if "grad" in tensor:
        _in_arena(PlanBuffer.of_tensor(tensor, grad=True), f"{path}.grad", plan)


def _const_tensor_in_region(tensor, path, plan):
    """A constant tensor lies in the arena's constants region, which no program writes."""
    buf = PlanBuffer.of_tensor(tensor)
    start, size = plan["arena"]["regions"]["consts"]
    if not (start <= buf.offset and buf.offset + nbytes(buf) <= start + size):
        _fail(f"{path}.offset", f"bytes {buf.offset} to {buf.offset + nbytes(buf)} are not within the constants "
                                f"region [{start}, {start + size})")


def _kernel_file_exists(call, path, plan):
    if call["file"] not in plan.kernel_files:
        _fail(f"{path}.file", f"{call['file']!r} is not among the plan's kernels/*.cu")


def _waits_exist(program, path, plan):
    count = len(program["launches"])
    for i, launch in enumerate(program["launches"]):
        for j in launch["waits"]:
            if j >= count:
                _fail(f"{path}.launches[{i}].waits", f"launch {j} does not exist (the program has {count})")


def _op_and_attrs(launch, path, plan):
    """A launch's op is one the runtime has a reference for, with the attributes that reference reads."""
    if launch["op"] not in BY_OP:
        _fail(f"{path}.op", f"unknown op {launch['op']!r}")
    ATTRS.get(launch["op"], NO_ATTRS).walk(launch["attrs"], f"{path}.attrs", plan)


def _programs_complete(plan_data, _, plan):
    programs, path = plan_data["programs"], "programs"
    if "train" not in programs and not {"accumulate", "update"} <= set(programs):
        _fail(path, "has neither 'train' nor 'accumulate' and 'update'")
    for name in ("eval", "generate"):
        if name not in programs:
            _fail(path, f"missing program {name!r}")
    for name, program in programs.items():
        inputs, outputs = PROGRAM_IO.get(name, ((), ()))
        for key, have in (("inputs", inputs), ("outputs", outputs)):
            for needed in have:
                if needed not in program[key]:
                    _fail(f"{path}.{name}.{key}", f"missing {needed!r}")


def _tokenizer_fits(plan_data, path, plan):
    tokenizer = plan_data["tokenizer"]
    count = len(tokenizer.get("vocab", tokenizer.get("tokens", [])))
    if count > plan_data["config"]["vocab_size"]:
        _fail("tokenizer", f"{count} tokens, more than config.vocab_size {plan_data['config']['vocab_size']}")


# ---- the schema --------------------------------------------------------------------------------
BUFFER = Buffer()
SIZE = Int(1)
FLAG = Int(0, 1)
# The inputs the run side feeds, and what each program must have for it.
INPUT_NAMES = ("tokens", "targets", "step_size", "lr", "bias1", "bias2", "accumulate", "dropout_seed",
               "dropout_counter", "position")
PROGRAM_IO = {"train": (("tokens", "targets"), ("loss", "grad_norm")),
              "accumulate": (("tokens", "targets", "accumulate"), ("loss",)),
              "update": ((), ("grad_norm",)),
              "eval": (("tokens", "targets"), ("loss",)),
              "generate": (("tokens",), ("logits", "next_token")),
              "decode": (("tokens", "position"), ("logits", "next_token"))}

# The attributes each op's NumPy reference reads: the CUDA backend reads none, its
# kernels have them rendered in.
BOOL, SIGNED = Bool(), Int(-2**31)
NO_ATTRS = Obj({})
PAIRS = List(Tuple(Str(), Anything(), what="[name, value]"))  # a fused step's or group member's attributes
STEPS = List(Tuple(Str(*BY_OP), PAIRS, List(SIGNED), what="a fused step [op, attributes, arguments]"))
SCALE = {"scale": Num()}
ATTENTION = Obj(SCALE, {"dropout": Num(0, 1, open_high=True), "site": Int()})
ATTRS = {
    "cast": Obj({"dtype": Str(*DTYPES)}),
    "fused": Obj({"program": STEPS}, {"shape": List(Int()), "perm": List(Int())}),
    "sum": Obj({"axes": List(Int()), "keepdims": BOOL}),
    "fused_multi": Obj({"program": STEPS, "results": List(SIGNED)}),
    # results only where it sums several (a plain sum paired with it); a lone one, such as RMSNorm's
    # weight gradient (no bias gradient beside it), has one result and no list
    "fused_sum": Obj({"program": STEPS, "axes": List(Int()), "keepdims": BOOL}, {"results": List(SIGNED)}),
    "sum_group": Obj({"members": List(Tuple(Str(*BY_OP), PAIRS, Int(), what="a member [op, attributes, inputs]"))}),
    "matmul": Obj({"ta": BOOL, "tb": BOOL}, {"fp8": BOOL, "dtype": Str(*DTYPES)}),
    "fused_matmul": Obj({"ta": BOOL, "tb": BOOL, "bias": BOOL, "residual": BOOL},
                        {"gelu": BOOL, "gelu_grad": BOOL, "fp8": BOOL, "dtype": Str(*DTYPES)}),
    "normalize": Obj({"eps": Num(positive=True)}), "rms_normalize": Obj({"eps": Num(positive=True)}),
    "fused_normalize": Obj({"eps": Num(positive=True), "program": STEPS}),
    "fused_rms_normalize": Obj({"eps": Num(positive=True), "program": STEPS}),
    "fused_normalize_grad": Obj({"scaled": BOOL, "accumulate": BOOL}),
    "fused_rms_normalize_grad": Obj({"scaled": BOOL, "accumulate": BOOL}),
    "causal_softmax": Obj(SCALE), "causal_softmax_grad": Obj(SCALE), "cached_attention": Obj(SCALE),
    "causal_attention": ATTENTION, "causal_attention_grad_q": ATTENTION, "causal_attention_grad_kv": ATTENTION,
    "dropout": Obj({"p": Num(0, 1, open_high=True), "site": Int()}),
    "argmax": Obj({"limit": SIZE}),
    "quantize": Obj({"transpose": BOOL, "dtype": Str(*FP8_TYPES)}),
    "cross_entropy_with_grad": Obj({}, {"fp8_grad": Str(*FP8_TYPES), "grad_dtype": Str(*DTYPES)}),
    "embedding_grad": Obj({"rows": SIZE}), "one_hot": Obj({"rows": SIZE}),
    "id_order": Obj({"rows": SIZE}), "embedding_grad_sorted": Obj({"rows": SIZE}),
    "reshape": Obj({"shape": List(Int())}), "broadcast_to": Obj({"shape": List(Int())}),
    "transpose": Obj({"perm": List(Int())}), "concat": Obj({"axis": SIGNED}),
    "slice": Obj({"axis": SIGNED, "start": SIGNED, "stop": SIGNED}),
    "pad": Obj({"axis": SIGNED, "before": Int(), "after": Int()}),
    "output": Obj({"index": Int()}),
}

CONFIG = Obj({"batch_size": SIZE, "block_size": SIZE, "vocab_size": SIZE, "dtype": Str("f32", "bf16")},
             {name: SIZE for name in ("n_layer", "n_head", "n_embd", "sample_batch")})
OPTIMIZER = Obj({"optimizer": Str("adam", "adamw"), "lr": Num(positive=True), "min_lr": Num(0),
                 "lr_schedule": Str("linear", "cosine"), "decay_steps": SIZE, "warmup_steps": Int(),
                 "beta1": Num(0, 1, open_high=True), "beta2": Num(0, 1, open_high=True), "eps": Num(positive=True),
                 "weight_decay": Num(0), "grad_clip": Num(0), "grad_accum": SIZE})
TOKENIZER = Switch(lambda t: t.get("kind") if t.get("kind") in ("word", "char", "gpt2") else "unknown", {
    "word": Obj({"vocab": List(Str())}),
    "char": Obj({"vocab": List(Str())}),
    "gpt2": Obj({"tokens": List(Str()), "special": Map(Int())}),
    "unknown": Obj({"kind": Str("word", "char", "gpt2")}),
})
ARENA = Obj({"bytes": Int(), "align": SIZE,
             "regions": Obj({name: Tuple(Int(), Int(), what="[start, bytes]")
                             for name in ("params", "grads", "state", "consts")}, checks=[_regions_in_arena])})
TENSOR = Obj({"name": Str(), "kind": Str("param", "state", "cache"), "dtype": Str(*DTYPES), "shape": List(Int()),
              "offset": Int(), "init": Str("normal", "zeros", "ones"), "std": Num(0)},
             {"grad": Int()}, checks=[_tensor_in_arena])
CONST_TENSOR = Obj({"name": Str(), "dtype": Str("f32"), "shape": List(Int()), "offset": Int()},
                   checks=[_const_tensor_in_region])
CONSTS = Obj({"dtype": Str(*DTYPES), "values": List(Tuple(Int(), Num(), what="[offset, value]"))},
             {"tensors": List(CONST_TENSOR)})
GEMM = Obj({"transa": FLAG, "transb": FLAG, "m": SIZE, "n": SIZE, "k": SIZE, "batch": SIZE,
            "a": BUFFER, "b": BUFFER, "c": BUFFER, "lda": SIZE, "ldb": SIZE, "ldc": SIZE,
            "stride_a": Int(), "stride_b": Int(), "stride_c": Int()})
CUDA = Switch(lambda call: "gemm" if "gemm" in call else "kernel", {
    "gemm": Obj({"gemm": GEMM}, {"epilogue": Obj({"kind": Str(*LT_EPILOGUES), "bias": Nullable(BUFFER),
                                                  "aux": Nullable(BUFFER), "residual": Nullable(BUFFER)}),
                                 "scales": Obj({"a": BUFFER, "b": BUFFER}, {"fast": BOOL})}),
    "kernel": Obj({"kernel": Str(), "file": Str(), "grid": List(SIZE, 3), "block": List(SIZE, 3), "smem": Int(),
                   "args": List(BUFFER)}, checks=[_kernel_file_exists]),
})
_LAUNCH = {"op": Str(), "kind": Str(), "out": BUFFER, "in": List(BUFFER), "attrs": Map(Anything()),
           "node": Int(), "where": Nullable(Str()), "stream": FLAG, "waits": List(Int())}
# A collective (the gradients' mean over ranks) is run by the backend itself; every other launch
# names its kernel or library call.
LAUNCH = Switch(lambda launch: "collective" if launch.get("kind") == "collective" else "call", {
    "collective": Obj(_LAUNCH, {"outs": List(BUFFER)}, checks=[_op_and_attrs]),
    "call": Obj({**_LAUNCH, "cuda": CUDA}, {"outs": List(BUFFER)}, checks=[_op_and_attrs]),
})
MEMORY = Obj({"work_peak": Int(), "work_sum": Int(), "work_lower_bound": Int()})
PROGRAM = Obj({"inputs": Map(BUFFER, INPUT_NAMES), "outputs": Map(BUFFER), "launches": List(LAUNCH),
               "memory": MEMORY, "matmul_flops": Int()}, checks=[_waits_exist])
TARGET = Obj({"name": Str(), "sms": SIZE, "smem_per_block": SIZE, "smem_per_sm": SIZE})
# The arena first: every buffer after it is checked against its size.
PLAN = Obj({"arena": ARENA, "schema_version": Int(), "model_hash": Str(), "config": CONFIG, "optimizer": OPTIMIZER,
            "tokenizer": TOKENIZER, "tensors": List(TENSOR), "consts": CONSTS, "programs": Map(PROGRAM),
            "nvrtc_options": List(Str()), "target": TARGET},
           {"model_file": Str()}, checks=[_tokenizer_fits, _programs_complete])


class _Context(dict):
    """The plan's data, as the checks read it, with the kernel files the plan directory holds."""
    kernel_files: frozenset[str]


def check(data, kernel_files) -> None:
    """Raise PlanError naming the first JSON path where `data` breaks the schema; `kernel_files`:
    the plan directory's "kernels/NAME.cu"."""
    plan = _Context(data if isinstance(data, dict) else {})
    plan.kernel_files = frozenset(kernel_files)
    PLAN.walk(data, "", plan)
