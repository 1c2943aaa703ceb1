"""plan.json is checked whole when it is loaded: a plan that parses but lacks or mangles anything the
runtime reads is one line naming its JSON path, for every tool that loads plans."""
import copy
import json
import shutil

import pytest

from graphgpt import plan as plan_io, plan_schema
from graphgpt.compiler import compile_model
from graphgpt.errors import UserError
from tests.conftest import ROOT, TINY, assert_user_error, run_cli

DEFAULT = json.loads((ROOT / "compiled" / "plan.json").read_text())


def _first(test) -> int:
    """The index of the train program's first launch that passes `test`."""
    return next(i for i, launch in enumerate(DEFAULT["programs"]["train"]["launches"]) if test(launch))


KERNEL = _first(lambda launch: "kernel" in launch.get("cuda", {}))
GEMM = _first(lambda launch: launch["op"] == "fused_matmul")
FUSED = _first(lambda launch: "program" in launch["attrs"])


def launch(i):
    return lambda d: d["programs"]["train"]["launches"][i]


def setter(get, key, value):
    def mutate(d):
        get(d)[key] = value
    return mutate


def deleter(get, key):
    def mutate(d):
        del get(d)[key]
    return mutate


def top(d):
    return d


# (what, mutation of the plan's data, fragment of the one line)
CASES = [
    ("no config", deleter(top, "config"), "(top level): missing key 'config'"),
    ("config not an object", setter(top, "config", [1]), "config: expected an object, got [1]"),
    ("vocab_size a string", setter(lambda d: d["config"], "vocab_size", "99"), "config.vocab_size: expected an integer, got '99'"),
    ("batch_size 0", setter(lambda d: d["config"], "batch_size", 0), "config.batch_size: 0 is out of range (expected >= 1)"),
    ("dtype unknown", setter(lambda d: d["config"], "dtype", "f64"), "config.dtype: 'f64' is not one of f32, bf16"),
    ("no tokenizer", deleter(top, "tokenizer"), "missing key 'tokenizer'"),
    ("tokenizer without vocab", deleter(lambda d: d["tokenizer"], "vocab"), "tokenizer: missing key 'vocab'"),
    ("tokenizer of another kind", setter(lambda d: d["tokenizer"], "kind", "bpe"), "tokenizer.kind: 'bpe' is not one of"),
    ("vocabulary item not a string", lambda d: d["tokenizer"]["vocab"].__setitem__(5, 5), "tokenizer.vocab[5]: expected a string"),
    ("more tokens than vocab_size", setter(lambda d: d["config"], "vocab_size", 10), "tokenizer: 99 tokens, more than config.vocab_size 10"),
    ("no optimizer", deleter(top, "optimizer"), "missing key 'optimizer'"),
    ("optimizer scalar missing", deleter(lambda d: d["optimizer"], "beta2"), "optimizer: missing key 'beta2'"),
    ("lr a string", setter(lambda d: d["optimizer"], "lr", "fast"), "optimizer.lr: expected a finite number, got 'fast'"),
    ("beta1 1", setter(lambda d: d["optimizer"], "beta1", 1.0), "optimizer.beta1: 1.0 is out of range"),
    ("grad_accum 1.5", setter(lambda d: d["optimizer"], "grad_accum", 1.5), "optimizer.grad_accum: expected an integer"),
    ("schedule unknown", setter(lambda d: d["optimizer"], "lr_schedule", "step"), "optimizer.lr_schedule: 'step' is not one of"),
    ("arena bytes negative", setter(lambda d: d["arena"], "bytes", -1), "arena.bytes: -1 is out of range"),
    ("region missing", deleter(lambda d: d["arena"]["regions"], "grads"), "arena.regions: missing key 'grads'"),
    ("region past the arena", setter(lambda d: d["arena"]["regions"], "state", [0, 10**12]), "arena.regions.state: ends at byte"),
    ("tensor shape mangled", setter(lambda d: d["tensors"][1], "shape", "384"), "tensors[1].shape: expected a list"),
    ("tensor init unknown", setter(lambda d: d["tensors"][0], "init", "xavier"), "tensors[0].init: 'xavier' is not one of"),
    ("tensor past the arena", setter(lambda d: d["tensors"][0], "offset", 10**12), "tensors[0].offset: ends at byte"),
    ("consts value mangled", lambda d: d["consts"]["values"].__setitem__(0, [1]), "consts.values[0]: expected [offset, value]"),
    ("no train program", deleter(lambda d: d["programs"], "train"), "programs: has neither 'train' nor 'accumulate' and 'update'"),
    ("no eval program", deleter(lambda d: d["programs"], "eval"), "programs: missing program 'eval'"),
    ("program input unknown", lambda d: d["programs"]["eval"]["inputs"].__setitem__("noise", ["f32", 0, []]),
     "programs.eval.inputs: unknown key 'noise'"),
    ("program output missing", deleter(lambda d: d["programs"]["train"]["outputs"], "grad_norm"),
     "programs.train.outputs: missing 'grad_norm'"),
    ("launches not a list", setter(lambda d: d["programs"]["eval"], "launches", {}), "programs.eval.launches: expected a list"),
    ("launch out a number", setter(launch(3), "out", 5), "programs.train.launches[3].out: expected a buffer [dtype, byte offset, shape], got 5"),
    ("buffer dtype unknown", lambda d: launch(3)(d)["out"].__setitem__(0, "f64"), "programs.train.launches[3].out[0]: 'f64' is not one of"),
    ("buffer offset negative", lambda d: launch(3)(d)["in"][0].__setitem__(1, -8), "programs.train.launches[3].in[0][1]: -8 is out of range"),
    ("buffer past the arena", lambda d: launch(3)(d)["out"].__setitem__(1, DEFAULT["arena"]["bytes"]),
     "programs.train.launches[3].out: ends at byte"),
    ("buffer misaligned", lambda d: launch(3)(d)["out"].__setitem__(1, launch(3)(d)["out"][1] + 1),
     "programs.train.launches[3].out: offset"),
    ("op unknown", setter(launch(3), "op", "teleport"), "programs.train.launches[3].op: unknown op 'teleport'"),
    ("op missing", deleter(launch(3), "op"), "programs.train.launches[3]: missing key 'op'"),
    ("attrs a list", setter(launch(3), "attrs", []), "programs.train.launches[3].attrs: expected an object"),
    ("attr missing", deleter(lambda d: launch(GEMM)(d)["attrs"], "ta"), f"programs.train.launches[{GEMM}].attrs: missing key 'ta'"),
    ("attr mangled", lambda d: launch(GEMM)(d)["attrs"].__setitem__("bias", "yes"),
     f"programs.train.launches[{GEMM}].attrs.bias: expected true or false, got 'yes'"),
    ("fused step of an unknown op", lambda d: launch(FUSED)(d)["attrs"]["program"][0].__setitem__(0, "warp"),
     f"programs.train.launches[{FUSED}].attrs.program[0][0]: 'warp' is not one of"),
    ("cuda record missing", deleter(launch(KERNEL), "cuda"), f"programs.train.launches[{KERNEL}]: missing key 'cuda'"),
    ("kernel file missing", lambda d: launch(KERNEL)(d)["cuda"].__setitem__("file", "kernels/gone.cu"),
     f"programs.train.launches[{KERNEL}].cuda.file: 'kernels/gone.cu' is not among the plan's kernels"),
    ("grid of two", lambda d: launch(KERNEL)(d)["cuda"].__setitem__("grid", [1, 1]),
     f"programs.train.launches[{KERNEL}].cuda.grid: expected 3 items"),
    ("gemm m zero", lambda d: launch(GEMM)(d)["cuda"]["gemm"].__setitem__("m", 0),
     f"programs.train.launches[{GEMM}].cuda.gemm.m: 0 is out of range"),
    ("node missing", deleter(launch(3), "node"), "programs.train.launches[3]: missing key 'node'"),
    ("where a number", setter(launch(3), "where", 68), "programs.train.launches[3].where: expected a string, got 68"),
    ("program memory missing", deleter(lambda d: d["programs"]["eval"], "memory"), "programs.eval: missing key 'memory'"),
    ("work peak a string", lambda d: d["programs"]["eval"]["memory"].__setitem__("work_peak", "1 GiB"),
     "programs.eval.memory.work_peak: expected an integer, got '1 GiB'"),
    ("stream 2", setter(launch(3), "stream", 2), "programs.train.launches[3].stream: 2 is out of range (expected 0 to 1)"),
    ("wait for a launch that does not exist", setter(launch(3), "waits", [10**6]),
     "programs.train.launches[3].waits: launch 1000000 does not exist"),
    ("nvrtc options missing", deleter(top, "nvrtc_options"), "(top level): missing key 'nvrtc_options'"),
    ("no target", deleter(top, "target"), "(top level): missing key 'target'"),
    ("target of no SMs", setter(lambda d: d["target"], "sms", 0), "target.sms: 0 is out of range (expected >= 1)"),
]


def write_plan(tmp_path, data) -> str:
    out = tmp_path / "plan"
    shutil.copytree(ROOT / "compiled" / "kernels", out / "kernels")
    (out / "plan.json").write_text(json.dumps(data))
    return str(out)


def test_the_default_plan_passes():
    plan_io.load(ROOT / "compiled")


@pytest.mark.parametrize("settings", [["grad_accum=2"], ["dtype=bf16", "dropout=0.1"], ["attention=softmax", "tie_weights=1"],
                                      ["optimizer=adamw", "weight_decay=0.1", "lr_schedule=cosine", "warmup_steps=2"]],
                         ids=["grad_accum", "bf16 with dropout", "softmax attention, tied", "adamw"])
def test_plans_of_every_shape_pass(settings):
    compiled = compile_model(ROOT / "model.py", TINY + settings, log=lambda line: None)
    plan_schema.check(json.loads(plan_io.to_text(compiled.data)), [rel for rel in compiled.files if rel.startswith("kernels/")])


@pytest.mark.parametrize("what,mutate,fragment", CASES, ids=[c[0] for c in CASES])
def test_a_mangled_plan_is_refused_naming_its_json_path(tmp_path, what, mutate, fragment):
    data = copy.deepcopy(DEFAULT)
    mutate(data)
    with pytest.raises(UserError) as refused:
        plan_io.load(write_plan(tmp_path, data))
    message = str(refused.value)
    assert message.startswith(str(tmp_path / "plan" / "plan.json") + ": ") and fragment in message, message
    assert "\n" not in message


def test_a_plan_that_is_not_an_object(tmp_path):
    (tmp_path / "plan.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="schema version None"):
        plan_io.load(tmp_path)


@pytest.mark.parametrize("text,why", [("[" * 100000 + "]" * 100000, "nested too deeply"),
                                      ('{"schema_version": ' + "9" * 5000 + "}", "more digits than Python converts")],
                         ids=["nested past the recursion limit", "a 5000-digit number"])
def test_json_that_python_cannot_read_whole(tmp_path, text, why):
    (tmp_path / "plan.json").write_text(text)
    with pytest.raises(UserError, match=f"is not valid JSON .*{why}"):
        plan_io.load(tmp_path)


def test_a_kernel_file_that_is_not_text(tmp_path):
    out = write_plan(tmp_path, DEFAULT)
    (tmp_path / "plan" / "kernels" / "elementwise.cu").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="elementwise.cu cannot be read as CUDA source"):
        plan_io.load(out)


ENTRY_POINTS = [
    ["-m", "graphgpt.run", "--plan", "{plan}", "--backend", "numpy", "--steps", "1"],
    ["-m", "graphgpt.sample", "--plan", "{plan}", "--init-from", "{plan}/none.safetensors", "--backend", "numpy"],
    ["tools/export_hf.py", "--plan", "{plan}", "--weights", "{plan}/none", "--out", "{plan}/../hf"],
    ["tools/bench.py", "--plan", "{plan}"],
    ["tools/prepare.py", "{plan}/../text.txt", "--plan", "{plan}", "--out", "{plan}/../data"],
]


@pytest.mark.parametrize("argv", ENTRY_POINTS, ids=[a[1] if a[0] == "-m" else a[0] for a in ENTRY_POINTS])
def test_every_tool_refuses_a_mangled_plan_in_one_line(tmp_path, argv):
    data = copy.deepcopy(DEFAULT)
    data["programs"]["train"]["launches"][3]["out"] = 5
    plan = write_plan(tmp_path, data)
    (tmp_path / "text.txt").write_text("some text to tokenise. " * 20)
    proc = run_cli(*[a.format(plan=plan) for a in argv])
    assert_user_error(proc, "plan.json: programs.train.launches[3].out: expected a buffer")
    assert not (tmp_path / "hf").exists() and not (tmp_path / "data").exists()


def test_an_arena_larger_than_memory_is_refused_before_allocation(tmp_path):
    """175 TiB passes the schema (every buffer lies inside) but exists on no machine."""
    data = copy.deepcopy(DEFAULT)
    data["arena"]["bytes"] = 175 * 2**40
    plan = write_plan(tmp_path, data)
    proc = run_cli(*[a.format(plan=plan) for a in ENTRY_POINTS[0]])
    assert_user_error(proc, "the plan's arena needs 179,200.00 GiB, more than the ", "GiB of this machine's memory: "
                      "it cannot run here")
