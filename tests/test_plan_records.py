"""Programs, launches and their CUDA calls are records of plan.py, which the compiler builds and the
backends read by attribute: each goes to plan.json's JSON and back unchanged, and nothing of the
runtime indexes a launch, a program or a call by a string key."""
import ast
import dataclasses
import json

import pytest

from graphgpt import plan as plan_io
from graphgpt.compiler import compile_model
from tests.conftest import ROOT
from tests.test_bench_cli import LLAMA  # a tiny LLaMA: grouped-query attention, rotary, SwiGLU
RECORDS = (plan_io.Program, plan_io.Launch, plan_io.KernelCall, plan_io.GemmCall, plan_io.Gemm, plan_io.Epilogue)
# Every key of a record's JSON: a string subscript with one of these in the runtime reads a record as a dict.
RECORD_KEYS = frozenset({f.name for record in RECORDS for f in dataclasses.fields(record)} | {"in"})
RUNTIME = ROOT / "graphgpt" / "runtime"


def round_trip(raw: dict) -> plan_io.Program:
    """plan.json's program -> record -> JSON (through text) -> record: the same record and JSON."""
    program = plan_io.Program.from_json(raw)
    assert program.to_json() == raw
    again = plan_io.Program.from_json(json.loads(json.dumps(program.to_json())))
    assert again == program
    return program


def test_every_program_of_the_default_plan_goes_to_json_and_back():
    data = json.loads((ROOT / "compiled" / "plan.json").read_text())
    programs = {name: round_trip(raw) for name, raw in data["programs"].items()}
    launches = [launch for program in programs.values() for launch in program.launches]
    calls = {type(launch.cuda) for launch in launches}
    assert calls == {plan_io.KernelCall, plan_io.GemmCall, type(None)}  # collectives have none
    assert all(launch.kind == "collective" for launch in launches if launch.cuda is None)
    epilogues = [launch.cuda.epilogue for launch in launches if isinstance(launch.cuda, plan_io.GemmCall)]
    assert None in epilogues and any(isinstance(e, plan_io.Epilogue) and e.bias for e in epilogues)
    assert any(launch.outs for launch in launches) and any(launch.waits for launch in launches)


@pytest.mark.parametrize("overrides", [[], ["dtype=bf16"]], ids=["f32", "bf16"])
def test_every_program_of_a_llama_plan_goes_to_json_and_back(tmp_path, overrides):
    """The records a compile builds are what its plan.json holds, and what plan.load gives back."""
    compiled = compile_model(ROOT / "models" / "llama.py", LLAMA + overrides, log=lambda *a: None)
    plan_io.save(compiled.data, tmp_path / "plan", compiled.files)
    raw = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert raw["schema_version"] == plan_io.SCHEMA_VERSION
    loaded = plan_io.load(tmp_path / "plan")
    assert set(raw["programs"]) == set(compiled.data["programs"]) == set(loaded.programs)
    for name, program in compiled.data["programs"].items():
        assert isinstance(program, plan_io.Program)
        assert program.to_json() == raw["programs"][name]
        assert round_trip(raw["programs"][name]) == loaded.programs[name]


def record_subscripts(source: str) -> list[str]:
    """`x["key"]` and `x.get("key")` with a record's JSON key, each as "line N: code"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and isinstance(node.args[0], ast.Constant)):
            key = node.args[0].value
        if isinstance(key, str) and key in RECORD_KEYS:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_finds_a_launch_read_as_a_dict():
    """What the backends read before launches were records is found, what they read now is not."""
    old = ('cuda = launch["cuda"]\nfn = self.modules[cuda["file"]].get_function(cuda["kernel"])\n'
           'side = any(launch["stream"] for launch in prog["launches"])\nouts = launch.get("outs", [launch["out"]])\n'
           'm, n = g["m"], g["n"]\n')
    assert len(record_subscripts(old)) == 9
    new = ('cuda = launch.cuda\nfn = self.modules[cuda.file].get_function(cuda.kernel)\n'
           'start, size = self.plan.data["arena"]["regions"]["grads"]\nt = self.plan.tensors[0]["name"]\n')
    assert record_subscripts(new) == []


def test_the_runtime_reads_launches_by_attribute():
    found = {path.name: hits for path in sorted(RUNTIME.glob("*.py")) if (hits := record_subscripts(path.read_text()))}
    assert not found, found


def test_an_fp8_products_scales_go_to_json_and_back_and_a_plan_without_fast_keeps_its_sums():
    """Each FP8 product's call says whether its sums stay in the FP8 accumulator (the forward's) or
    move into float32 (an E5M2 gradient's); a plan whose calls leave it out has only forward ones."""
    data = compile_model(ROOT / "model.py", ["n_layer=1", "n_head=2", "n_embd=32", "block_size=16", "batch_size=2",
                                             "vocab_size=112", "dtype=bf16", "fp8=lm_head.weight", "fp8_grad=lm_head.weight"],
                         log=lambda *a: None).data
    raw = data["programs"]["train"].to_json()
    program = round_trip(raw)
    scaled = [launch.cuda.scales for launch in program.launches if isinstance(launch.cuda, plan_io.GemmCall) and launch.cuda.scales]
    assert sorted(s.fast for s in scaled) == [False, True]
    without = {k: v for k, v in scaled[0].to_json().items() if k != "fast"}
    assert plan_io.Scales.from_json(without).fast
