"""Passes decide by the traits the registry declares, not by op names: no pass compares an op with
an op name or looks one up by it (the count may only go down, and it is none), and the declared
traits are consistent."""
import ast
from pathlib import Path

from graphgpt.ops import REGISTRY
from graphgpt.ops.registry import PERSISTENT_REGIONS
from graphgpt.passes.remat import POLICIES
from tests.conftest import ROOT

PASSES = ROOT / "graphgpt" / "passes"
# op-name comparisons and lookups in passes/: none, and it stays so
OP_NAME_COMPARISONS = 0


def _is_op(e: ast.expr) -> bool:
    """`.op` of anything, or a tuple holding one (`(node.op, index) in SOME_SET`)."""
    return (isinstance(e, ast.Attribute) and e.attr == "op") or (isinstance(e, ast.Tuple) and any(map(_is_op, e.elts)))


def _names_ops(e: ast.expr, constants: dict[str, ast.expr]) -> bool:
    """A string, a collection of strings (or of tuples holding one), a dict keyed by strings, or a
    constant bound to one of those."""
    if isinstance(e, ast.Name) and e.id in constants:
        return _names_ops(constants[e.id], {k: v for k, v in constants.items() if k != e.id})
    if isinstance(e, ast.Starred):
        return _names_ops(e.value, constants)
    if isinstance(e, ast.Constant):
        return isinstance(e.value, str)
    if isinstance(e, (ast.Tuple, ast.Set, ast.List)):
        return bool(e.elts) and all(_names_ops(x, constants) or isinstance(x, ast.Tuple) and any(
            isinstance(y, ast.Constant) and isinstance(y.value, str) for y in x.elts) for x in e.elts)
    if isinstance(e, ast.Dict):
        return bool(e.keys) and all(k is not None and _names_ops(k, constants) for k in e.keys)
    return False


def _module_constants(tree: ast.Module) -> dict[str, ast.expr]:
    return {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def _imported_constants(tree: ast.Module, package: Path) -> dict[str, ast.expr]:
    """The constants a module imports from the package's own modules (`from ..ir import SOURCE_OPS`),
    with those modules' other constants, which their values may name."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level and node.module:
            base = package.parents[node.level - 2] if node.level > 1 else package
            source = base.joinpath(*node.module.split(".")).with_suffix(".py")
            if source.is_file():
                theirs = _module_constants(ast.parse(source.read_text()))
                found |= theirs | {a.asname or a.name: theirs[a.name] for a in node.names if a.name in theirs}
    return found


def op_name_comparisons(source: str, package: Path = PASSES) -> list[str]:
    """Comparisons of `.op` with op names, lookups keyed by `.op` in a table of op names, and
    `of_op("...")` calls, each as "line N: code"."""
    tree = ast.parse(source)
    constants = _imported_constants(tree, package) | _module_constants(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            named = any(_is_op(a) and _names_ops(b, constants) or _is_op(b) and _names_ops(a, constants)
                        for a, b in zip(sides, sides[1:]))
        elif isinstance(node, ast.Subscript):
            named = _is_op(node.slice) and _names_ops(node.value, constants)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            named = (node.func.attr == "of_op" and any(_names_ops(a, constants) for a in node.args)
                     or node.func.attr == "get" and node.args and _is_op(node.args[0])
                     and _names_ops(node.func.value, constants))
        else:
            named = False
        if named:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_comparisons_are_found():
    sample = ('NAMED = {("normalize", 0)}\n'
              'a = n.op == "gelu"\nb = m.op not in ("sum", "fused_sum")\nc = (g.op, 0) in NAMED\n'
              'd = REGISTRY[n.op].kind == "elementwise"\ne = n.op == other.op\n# n.op == "x"\n')
    assert len(op_name_comparisons(sample)) == 3


def test_lookups_by_op_name_are_found():
    sample = ('from ..ir import SOURCE_OPS\nTILES = {"causal_attention": 2}\n'
              'a = n.op in SOURCE_OPS\nb = graph.of_op("gelu")\nc = graph.of_op(*SOURCE_OPS)\n'
              'd = TILES[n.op]\ne = TILES.get(n.op)\nf = REGISTRY[n.op]\ng = graph.of_op(*names)\n'
              'h = {n.op: n for n in nodes}[key]\n')
    assert [line.split(":")[0] for line in op_name_comparisons(sample)] == [f"line {k}" for k in range(3, 8)]


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


def test_a_row_losss_gradient_ops_are_registered():
    losses = {name: op.loss for name, op in REGISTRY.items() if op.loss}
    assert losses
    for name, trait in losses.items():
        assert trait.grad in REGISTRY and trait.with_grad in REGISTRY, name
        assert REGISTRY[trait.grad].template == REGISTRY[trait.with_grad].template == REGISTRY[name].template, name


def test_a_plain_matrix_product_names_its_epilogue_form():
    plain = [name for name, op in REGISTRY.items() if op.plain_product]
    assert plain
    for name in plain:
        form = REGISTRY[REGISTRY[name].matrix_product.with_epilogue]
        assert form.matrix_product is not None and not form.plain_product and form.gemm_epilogues, name
    epilogues = {name: op.gemm_epilogue for name, op in REGISTRY.items() if op.gemm_epilogue}
    assert {e.grad for e in epilogues.values()} == {False, True}
    assert all(REGISTRY[name].kind == "elementwise" for name in epilogues)


def test_sources_name_their_arena_region_and_remat_roots_a_policy():
    regions = {op.source for op in REGISTRY.values() if op.kind == "source"}
    assert set(PERSISTENT_REGIONS) < regions == {"params", "state", "caches", "inputs", "consts"}
    roots = {op.remat_root for op in REGISTRY.values() if op.remat_root}
    assert roots and roots <= set(POLICIES) - {"none", "all"}
