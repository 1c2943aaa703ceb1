"""The compiler's layers import downwards only: the kernel families lower launches without the
passes, and the passes rewrite graphs and plan memory without the code generator or the kernels."""
import ast

from tests.conftest import ROOT

PACKAGE = ROOT / "graphgpt"
FORBIDDEN = {"kernels": ("graphgpt.passes",), "passes": ("graphgpt.codegen", "graphgpt.kernels")}


def imported_modules(path) -> set[str]:
    """The absolute names of the modules a file imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def crossings(layer: str) -> dict[str, list[str]]:
    return {p.name: bad for p in sorted((PACKAGE / layer).glob("*.py"))
            if (bad := sorted(m for m in imported_modules(p) if m.startswith(FORBIDDEN[layer])))}


def test_imports_are_resolved():
    reduce = imported_modules(PACKAGE / "kernels" / "reduce.py")
    assert {"graphgpt.plan", "graphgpt.kernels.common", "graphgpt.dtypes.nbytes"} <= reduce
    fuse = imported_modules(PACKAGE / "passes" / "fuse.py")
    assert "graphgpt.ops.REGISTRY" in fuse and "graphgpt.rewrite" in fuse


def test_kernels_import_no_pass():
    assert not crossings("kernels")


def test_passes_import_neither_codegen_nor_kernels():
    assert not crossings("passes")
