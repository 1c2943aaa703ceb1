"""A kernel family is a directory of its own, and lowers the ops that name it: each
graphgpt/families/<family>/lowering.py compares and looks up only the names of ops whose registry
entry has template == <family>. A family that tests for another family's op has taken over a
decision that belongs to that op's entry."""
import ast
import re
import subprocess
import sys

import pytest

from graphgpt.families import DIRECTORY, NAMES, PARTS
from graphgpt.ops import REGISTRY
from tests.conftest import ROOT


def _is_op(e: ast.expr, bound: set[str]) -> bool:
    """An op name in the code: `launch["op"]`, `x.op`, or a name bound to one (or a parameter `op`)."""
    if isinstance(e, ast.Subscript):
        return isinstance(e.slice, ast.Constant) and e.slice.value == "op"
    if isinstance(e, ast.Attribute):
        return e.attr == "op"
    return isinstance(e, ast.Name) and e.id in bound


def _strings(e: ast.expr) -> list[str]:
    if isinstance(e, ast.Constant) and isinstance(e.value, str):
        return [e.value]
    if isinstance(e, (ast.Tuple, ast.Set, ast.List)):
        return [s for x in e.elts for s in _strings(x)]
    return []


def op_names(source: str) -> set[str]:
    """The op names a module compares an op with, looks an op up by (a dict keyed by names), or
    gives a lowered launch or kernel as its "op"."""
    tree = ast.parse(source)
    tables = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
              and isinstance(node.value, ast.Dict) for t in node.targets if isinstance(t, ast.Name)}
    bound = {"op"}
    for node in ast.walk(tree):  # names assigned from an op: op = launch["op"], (op, x) = launch["op"], ...
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                         and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                bound |= {t.id for t, v in pairs if isinstance(t, ast.Name) and _is_op(v, set())}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for a, b in zip(sides, sides[1:]):
                found |= set(_strings(b) if _is_op(a, bound) else _strings(a) if _is_op(b, bound) else [])
        elif isinstance(node, ast.Subscript) and _is_op(node.slice, bound) and isinstance(node.value, ast.Name):
            table = tables.get(node.value.id)
            found |= {s for k in (table.keys if table else []) if k is not None for s in _strings(k)}
        elif isinstance(node, ast.Dict):
            found |= {s for k, v in zip(node.keys, node.values) if k is not None and _strings(k) == ["op"]
                      for s in _strings(v)}
    return found


def test_names_are_found():
    sample = ('TILES = {"a": 1, "b": 2}\n'
              'def lower(launch, op):\n'
              '    kind, x = launch["op"], launch["in"][0]\n'
              '    if kind == "c" or op in ("d", "e") or x.op != "f":\n'
              '        return Kernel("z", {"op": "g", "dropout": "y" in launch["attrs"]}), TILES[op]\n')
    assert op_names(sample) == set("abcdefg")


def test_each_family_names_only_its_own_ops():
    assert NAMES
    foreign = {}
    for family in NAMES:
        names = op_names((DIRECTORY / family / "lowering.py").read_text())
        unknown = names - set(REGISTRY)
        assert not unknown, f"{family}'s lowering names ops that are not registered: {sorted(unknown)}"
        if others := sorted(n for n in names if REGISTRY[n].template != family):
            foreign[family] = {n: REGISTRY[n].template for n in others}
    assert not foreign, f"a family names ops of other families (op: its template): {foreign}"


# A block's thread count written into a template: `__launch_bounds__(256)`, rows of a block
# (`blockIdx.x) * 8`), a block-wide stride (`+= 256`). The family chooses these and renders them in.
THREAD_LITERALS = re.compile(r"__launch_bounds__\(\s*\d|blockIdx\.[xyz]\)?\s*\*\s*\d|\+=\s*(?:64|128|256|512|1024)\b")


def test_templates_take_thread_counts_from_their_family():
    templates = sorted(DIRECTORY.glob("**/*.cu.j2"))
    assert len(templates) == len(NAMES) + 1  # and common.cu.j2
    found = [f"{p.name}:{i}: {line.strip()}" for p in templates
             for i, line in enumerate(p.read_text().splitlines(), 1) if THREAD_LITERALS.search(line)]
    assert not found, "thread counts belong in the family's parameters:\n" + "\n".join(found)


def test_the_thread_literal_pattern_finds_what_it_should():
    for line in ("__launch_bounds__(256) k()", "row = static_cast<idx>(blockIdx.x) * 8 + t", "u += 256) {"):
        assert THREAD_LITERALS.search(line), line
    for line in ("__launch_bounds__({{ k.threads }})", "blockIdx.x) * {{ k.warps }}", "i += 4;"):
        assert not THREAD_LITERALS.search(line), line


def test_a_family_stands_in_one_directory():
    """graphgpt/families/<family>/ holds its registry entries, their references, its lowering and its
    template, and nothing else."""
    for family in NAMES:
        files = {p.name for p in (DIRECTORY / family).iterdir() if p.name != "__pycache__"}
        assert files == {"__init__.py", *(f"{part}.py" for part in PARTS), f"{family}.cu.j2"}, (family, files)


def test_a_familys_ops_are_registered_beside_it():
    """An op rendered by a family's template is registered by that family's ops.py and computed by its
    reference.py. The chains the fusion pass makes (ops/fused.py) run in the families of their steps."""
    rendered = {op.template for op in REGISTRY.values() if op.template}
    assert rendered == set(NAMES), "a family no op names, or an op naming no family"
    for name, op in REGISTRY.items():
        if op.template:
            family = f"graphgpt.families.{op.template}"
            assert op.module in (f"{family}.ops", "graphgpt.ops.fused"), (name, op.module)
            assert op.ref.__module__ == f"{family}.reference", (name, op.ref.__module__)


@pytest.mark.parametrize("part", PARTS)
def test_any_familys_module_can_be_the_first_one_imported(part):
    """A family's module imports the registry or the reference table, and some import another
    family's: in a fresh interpreter, each imports whole."""
    procs = {family: subprocess.Popen([sys.executable, "-c", f"import graphgpt.families.{family}.{part}"], cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for family in NAMES}
    errors = {family: proc.communicate(timeout=120)[1] for family, proc in procs.items()}
    assert not {family: errors[family].strip().splitlines()[-1] for family, proc in procs.items() if proc.returncode}
