"""A kernel family lowers the ops that name it: each graphgpt/kernels/<family>.py compares and looks
up only the names of ops whose registry entry has template == <family> (common.py and gemm.py,
which are no template's, excepted). A family that tests for another family's op has taken over a
decision that belongs to that op's entry."""
import ast
import re

from graphgpt.kernels import NOT_FAMILIES
from graphgpt.ops import REGISTRY
from tests.conftest import ROOT

KERNELS = ROOT / "graphgpt" / "kernels"


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
    families = sorted(p for p in KERNELS.glob("*.py") if p.stem not in NOT_FAMILIES and p.stem != "__init__")
    assert families
    foreign = {}
    for path in families:
        names = op_names(path.read_text())
        unknown = names - set(REGISTRY)
        assert not unknown, f"{path.name} names ops that are not registered: {sorted(unknown)}"
        if others := sorted(n for n in names if REGISTRY[n].template != path.stem):
            foreign[path.name] = {n: REGISTRY[n].template for n in others}
    assert not foreign, f"a family names ops of other families (op: its template): {foreign}"


# A block's thread count written into a template: `__launch_bounds__(256)`, rows of a block
# (`blockIdx.x) * 8`), a block-wide stride (`+= 256`). The family chooses these and renders them in.
THREAD_LITERALS = re.compile(r"__launch_bounds__\(\s*\d|blockIdx\.[xyz]\)?\s*\*\s*\d|\+=\s*(?:64|128|256|512|1024)\b")


def test_templates_take_thread_counts_from_their_family():
    found = [f"{p.name}:{i}: {line.strip()}" for p in sorted((ROOT / "templates").glob("*.cu.j2"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if THREAD_LITERALS.search(line)]
    assert not found, "thread counts belong in the family's parameters:\n" + "\n".join(found)


def test_the_thread_literal_pattern_finds_what_it_should():
    for line in ("__launch_bounds__(256) k()", "row = static_cast<idx>(blockIdx.x) * 8 + t", "u += 256) {"):
        assert THREAD_LITERALS.search(line), line
    for line in ("__launch_bounds__({{ k.threads }})", "blockIdx.x) * {{ k.warps }}", "i += 4;"):
        assert not THREAD_LITERALS.search(line), line


def test_a_familys_ops_are_registered_beside_it():
    """ops/<family>.py registers the ops whose references numpy_ops/<family>.py holds,
    kernels/<family>.py lowers and templates/<family>.cu.j2 renders: an op family is found under
    one name. The chains the fusion pass makes (ops/fused.py) run in the families of their steps."""
    for name, op in REGISTRY.items():
        if op.template:
            assert op.module in (f"graphgpt.ops.{op.template}", "graphgpt.ops.fused"), (name, op.module)
            assert op.ref.__module__ == f"graphgpt.numpy_ops.{op.template}", (name, op.ref.__module__)
            assert (KERNELS / f"{op.template}.py").is_file() and (ROOT / "templates" / f"{op.template}.cu.j2").is_file()
