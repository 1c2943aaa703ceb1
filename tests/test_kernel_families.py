"""A kernel family lowers the ops that name it: each graphgpt/kernels/<family>.py compares and looks
up only the names of ops whose registry entry has template == <family> (common.py and gemm.py,
which are no template's, excepted). A family that tests for another family's op has taken over a
decision that belongs to that op's entry."""
import ast

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
