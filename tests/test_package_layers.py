"""The compiler's layers import downwards only: the kernel families lower launches without the
passes, and the passes rewrite graphs and plan memory without the code generator or the lowerings."""
import ast
from fnmatch import fnmatch

from tests.conftest import ROOT

PACKAGE = ROOT / "graphgpt"
# a layer's files, and the modules they must not import
LAYERS = {"lowering": ("kernels/*.py", "families/*/lowering.py"), "passes": ("passes/*.py",)}
FORBIDDEN = {"lowering": ("graphgpt.passes*",),
             "passes": ("graphgpt.codegen*", "graphgpt.kernels*", "graphgpt.families.*.lowering*")}


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
    files = sorted(p for pattern in LAYERS[layer] for p in PACKAGE.glob(pattern))
    assert files
    return {str(p.relative_to(PACKAGE)): bad for p in files
            if (bad := sorted(m for m in imported_modules(p) if any(fnmatch(m, f) for f in FORBIDDEN[layer])))}


def test_imports_are_resolved():
    reduce = imported_modules(PACKAGE / "families" / "reduce" / "lowering.py")
    assert {"graphgpt.plan", "graphgpt.kernels.common", "graphgpt.dtypes.nbytes",
            "graphgpt.families.elementwise.lowering"} <= reduce
    fuse = imported_modules(PACKAGE / "passes" / "fuse.py")
    assert "graphgpt.ops.REGISTRY" in fuse and "graphgpt.rewrite" in fuse
    assert fnmatch("graphgpt.families.reduce.lowering.steps", FORBIDDEN["passes"][-1])


def test_lowerings_import_no_pass():
    assert not crossings("lowering")


def test_passes_import_neither_codegen_nor_lowerings():
    assert not crossings("passes")
