"""Passes decide by the traits the registry declares, not by op names: the comparisons of op names
left in passes/ only go down (the target is none), and the declared traits are consistent."""
import ast

from graphgpt.ops import REGISTRY
from tests.conftest import ROOT

PASSES = ROOT / "graphgpt" / "passes"
# op-name comparisons in passes/ today; lower it as they go
OP_NAME_COMPARISONS = 0


def _is_op(e: ast.expr) -> bool:
    """`.op` of anything, or a tuple holding one (`(node.op, index) in SOME_SET`)."""
    return (isinstance(e, ast.Attribute) and e.attr == "op") or (isinstance(e, ast.Tuple) and any(map(_is_op, e.elts)))


def _names_ops(e: ast.expr, constants: dict[str, ast.expr]) -> bool:
    """A string, a collection of strings (or of tuples holding one), or a module constant bound
    to one of those."""
    if isinstance(e, ast.Name) and e.id in constants:
        return _names_ops(constants[e.id], {})
    if isinstance(e, ast.Constant):
        return isinstance(e.value, str)
    if isinstance(e, (ast.Tuple, ast.Set, ast.List)):
        return bool(e.elts) and all(_names_ops(x, {}) or isinstance(x, ast.Tuple) and any(
            isinstance(y, ast.Constant) and isinstance(y.value, str) for y in x.elts) for x in e.elts)
    return False


def op_name_comparisons(source: str) -> list[str]:
    tree = ast.parse(source)
    constants = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_op(a) and _names_ops(b, constants) or _is_op(b) and _names_ops(a, constants)
                   for a, b in zip(sides, sides[1:])):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_comparisons_are_found():
    sample = ('NAMED = {("normalize", 0)}\n'
              'a = n.op == "gelu"\nb = m.op not in ("sum", "fused_sum")\nc = (g.op, 0) in NAMED\n'
              'd = REGISTRY[n.op].kind == "elementwise"\ne = n.op == other.op\n# n.op == "x"\n')
    assert len(op_name_comparisons(sample)) == 3


def test_op_name_comparisons_in_passes_only_go_down():
    found = {p.name: op_name_comparisons(p.read_text()) for p in sorted(PASSES.glob("*.py"))}
    count = sum(map(len, found.values()))
    assert count <= OP_NAME_COMPARISONS, f"a pass compares op names again; declare a trait instead: {found}"
    assert count == OP_NAME_COMPARISONS, f"{count} left: lower OP_NAME_COMPARISONS to it"


def test_a_row_normaliser_names_its_outputs_and_its_epilogue_form():
    normalisers = {name: op.row_normaliser for name, op in REGISTRY.items() if op.row_normaliser}
    assert normalisers
    for name, trait in normalisers.items():
        assert trait.rows not in trait.statistics
        if trait.with_epilogue:
            fused = REGISTRY[trait.with_epilogue].row_normaliser
            assert fused is not None and fused.with_epilogue is None, name
            assert (fused.rows, fused.statistics) == (trait.rows, trait.statistics), name


def test_a_reduction_with_a_prologue_form_names_a_reduction_without_one():
    forms = {name: op.reduction.with_prologue for name, op in REGISTRY.items() if op.reduction}
    assert any(forms.values())
    for name, form in forms.items():
        if form:
            assert REGISTRY[form].reduction is not None and REGISTRY[form].reduction.with_prologue is None, name


def test_a_row_normalisers_backward_ops_are_registered():
    for name, op in REGISTRY.items():
        trait = op.row_normaliser
        if trait and trait.grad:
            assert trait.fused_grad in REGISTRY and trait.grad in REGISTRY, name
            assert REGISTRY[trait.grad].template == REGISTRY[trait.fused_grad].template, name
