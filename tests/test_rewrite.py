"""The rewrite engine keeps ids, readers and roles right, and the passes go through it: none of
them reaches into ir's private names."""
import ast

from graphgpt import ir
from graphgpt.ir import Graph
from graphgpt.rewrite import Rewrite, fresh_id, pinned, projection, remove_dead, substitute
from tests.conftest import ROOT

PASSES = ROOT / "graphgpt" / "passes"


def _ir_private_names() -> set[str]:
    """The names ir defines for its own use: module-level and class members starting with one
    underscore (dunders are Python's, not ir's)."""
    tree = ast.parse((ROOT / "graphgpt" / "ir.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def ir_private_uses(source: str, private: set[str]) -> list[str]:
    """Each use in `source` of one of ir's private names: imported from ir, or read or written as
    an attribute of anything (a Graph's `_next_id`, `ir._freeze`)."""
    uses = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "ir":
            uses += [f"line {node.lineno}: imports {a.name}" for a in node.names if a.name in private]
        elif isinstance(node, ast.Attribute) and node.attr in private:
            uses += [f"line {node.lineno}: .{node.attr}"]
    return uses


def test_the_private_names_are_found():
    private = _ir_private_names()
    assert {"_freeze", "_next_id", "_consts"} <= private
    sample = "from ..ir import Graph, _freeze\nout._next_id = graph._next_id\n# graph._next_id in a comment\n"
    assert len(ir_private_uses(sample, private)) == 3


def test_no_pass_uses_a_private_name_of_ir():
    private = _ir_private_names()
    uses = {p.name: ir_private_uses(p.read_text(), private) for p in sorted(PASSES.glob("*.py"))}
    assert len(uses) > 5
    assert {name: u for name, u in uses.items() if u} == {}


def _two_layer_graph():
    """y = (x * 2) + 1 as the output, z = x * 3 read by nothing."""
    g = Graph()
    x = g.add("input", name="x", shape=(4, 8), dtype="f32")
    doubled = x * 2.0
    y = doubled + 1.0
    dead = x * 3.0
    g.outputs = {"y": y.id}
    return g, x, doubled, y, dead


def test_fresh_ids_are_never_given_twice():
    g, *_ = _two_layer_graph()
    rw = Rewrite(g)
    drawn = [rw.fresh_id(), rw.fresh_id(), rw.graph.add("input", name="w", shape=(1,), dtype="f32").id]
    assert len(set(drawn)) == 3 and not set(drawn) & set(g.nodes)
    assert fresh_id(g) == drawn[0], "a rebuilt graph counts on from its source, which keeps its own count"


def test_a_renamed_value_is_read_and_named_at_its_new_id():
    g, x, doubled, y, _ = _two_layer_graph()
    rw = Rewrite(g)
    at = rw.fresh_id()
    for n in g.nodes.values():
        if n.id == doubled.id:  # the value moves to `at`; the old id holds an op with it as output 0
            rw.rename(n.id, at)
            rw.put(n.__class__(n.id, "mul", n.inputs, n.attrs, (), ir.TUPLE, n.where, specs=((n.shape, n.dtype),)))
            continue
        rw.keep(n)
    g2 = rw.finish()
    assert g2.nodes[y.id].inputs[0] == at
    g2.outputs["doubled"] = doubled.id
    rw2 = Rewrite(g2)
    rw2.rename(doubled.id, y.id)
    assert rw2.finish().outputs == {"y": y.id, "doubled": y.id}


def test_projection_names_one_output_with_the_shape_of_its_value():
    g, x, doubled, *_ = _two_layer_graph()
    p = projection(99, doubled.id, 2, g.nodes[doubled.id])
    assert (p.op, p.inputs, p.attr, p.shape, p.dtype) == ("output", (doubled.id,), {"index": 2}, (4, 8), "f32")


def test_substitute_moves_readers_and_roles():
    g, x, doubled, y, dead = _two_layer_graph()
    g.grads = {x.id: doubled.id}
    substitute(g, {doubled.id: dead.id})
    assert dead.id in g.nodes[y.id].inputs and g.grads == {x.id: dead.id}


def test_remove_dead_keeps_what_the_roles_pin_and_every_output_of_a_live_op():
    g, x, doubled, y, dead = _two_layer_graph()
    loss, grad = g.add("cross_entropy_with_grad", (y.reshape(4, 8), g.add("input", name="t", shape=(4,), dtype="i32"),
                                                   g.const(1.0)))
    g.outputs["loss"] = loss.id  # the gradient output is read by nothing, but its op runs
    assert pinned(g) == {y.id, loss.id}
    remove_dead(g)
    assert dead.id not in g.nodes and {x.id, doubled.id, y.id, loss.id, grad.id} <= set(g.nodes)
