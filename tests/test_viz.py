"""Graph dumps: DOT syntax and structure, a self-contained HTML viewer, determinism, speed and size
on a training-sized graph, the layout's invariants and the command line's error path."""
from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graphgpt import viz
from graphgpt.errors import UserError
from graphgpt.ops import REGISTRY
from tests.conftest import DEEP_JSON

ROOT = Path(__file__).resolve().parent.parent


def small_graph() -> dict:
    """A two-layer perceptron step, with names that need escaping in DOT and in HTML."""
    def node(id, op, inputs, shape, role=None, name=None, dtype="f32", **attrs):
        n = {"id": id, "op": op, "inputs": inputs, "shape": shape, "dtype": dtype, "name": name,
             "where": f"model.py:{10 + id}", "role": role}
        if attrs:
            n["attrs"] = attrs
        return n
    return {"title": "tiny \"mlp\"", "nodes": [
        node(0, "input", [], [4, 8], "input", "x"),
        node(2, "param", [], [8, 16], "param", 'w1 "quoted" \\ back\nslash'),
        node(5, "matmul", [0, 2], [4, 16], ta=False, tb=False),
        node(6, "gelu", [5], [4, 16]),
        node(9, "param", [], [16, 3], "param", "w2</script><b>"),
        node(11, "matmul", [6, 9], [4, 3], ta=False, tb=False),
        node(12, "input", [], [4], "input", "targets", dtype="i32"),
        node(14, "cross_entropy", [11, 12], [], "output", "loss \u00e9"),
        node(20, "mul", [9, 9], [16, 3], "grad"),
        node(21, "sub", [9, 20], [16, 3], "update"),
    ]}


def random_graph(n: int, seed: int = 0) -> dict:
    """A DAG shaped like a training graph: mostly local edges, some long ones, sources mixed in."""
    rng = random.Random(seed)
    ops = sorted(name for name, op in REGISTRY.items() if op.kind != "source")
    nodes: list[dict] = []
    for k in range(n):
        if k < 4 or rng.random() < 0.08:
            op = role = rng.choice(("param", "input", "const", "state"))
            inputs = []
        else:
            op, role = rng.choice(ops), rng.choice([None] * 20 + ["grad", "update", "output"])
            picks = (k - 1 - min(k - 1, int(rng.expovariate(0.2))) if rng.random() < 0.9
                     else rng.randrange(k) for _ in range(rng.choice((1, 2, 2, 3))))
            inputs = sorted({nodes[p]["id"] for p in picks})
        nodes.append({"id": 3 * k + 7, "op": op, "inputs": inputs,
                      "shape": [16, 256, rng.choice((64, 384, 1152))], "dtype": "f32",
                      "name": f"h.{k % 6}.mlp.w{k}" if op == "param" else None,
                      "where": f"model.py:{40 + k % 90}", "role": role,
                      "attrs": {"ta": False, "tb": True} if op == "matmul" else {}})
    return {"title": "random", "nodes": nodes}


# --- DOT --------------------------------------------------------------------------------------

_DOT_TOKEN = re.compile(r'\s+|"(?:[^"\\]|\\.)*"|->|[{}\[\];,=]|[A-Za-z_][A-Za-z_0-9]*'
                        r'|-?(?:\.\d+|\d+(?:\.\d*)?)', re.S)


def parse_dot(text: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]], dict]:
    """The subset of the DOT grammar the dump uses; raises AssertionError on anything else.

    Returns (node id -> attributes, edges, graph attributes) with quoted strings decoded as
    Graphviz shows them: \" is a quote, \\ a backslash, \n a line break.
    """
    tokens, at = [], 0
    while at < len(text):
        m = _DOT_TOKEN.match(text, at)
        assert m, f"bad DOT at {text[at:at + 40]!r}"
        if not m.group().isspace():
            tokens.append(m.group())
        at = m.end()

    def unquote(tok: str) -> str:
        if not tok.startswith('"'):
            return tok
        return re.sub(r'\\(.)', lambda m: "\n" if m.group(1) == "n" else m.group(1), tok[1:-1])

    def take(expected: str | None = None) -> str:
        tok = tokens.pop(0)
        assert expected is None or tok == expected, f"expected {expected!r}, got {tok!r}"
        return tok

    def attr_list() -> dict[str, str]:
        attrs = {}
        if tokens[0] == "[":
            take("[")
            while tokens[0] != "]":
                key = take()
                take("=")
                attrs[key] = unquote(take())
                if tokens[0] == ",":
                    take(",")
            take("]")
        return attrs

    nodes, edges, graph_attrs = {}, [], {}
    take("digraph")
    if tokens[0] != "{":
        take()
    take("{")
    while tokens[0] != "}":
        name = take()
        if name in ("graph", "node", "edge"):
            if name == "graph":
                graph_attrs.update(attr_list())
            else:
                attr_list()
        elif tokens[0] == "->":
            take("->")
            edges.append((name, take()))
            attr_list()
        else:
            assert name not in nodes, f"node {name} declared twice"
            nodes[name] = attr_list()
        take(";")
    take("}")
    assert not tokens, "text after the graph"
    return nodes, edges, graph_attrs


def test_dot_structure():
    g = small_graph()
    nodes, edges, graph_attrs = parse_dot(viz.render_dot(g))
    assert graph_attrs["rankdir"] == "TB"
    assert list(nodes) == [f"n{n['id']}" for n in g["nodes"]]
    assert edges == [(f"n{i}", f"n{n['id']}") for n in g["nodes"] for i in n["inputs"]]
    assert all(a in nodes and b in nodes for a, b in edges)
    assert nodes["n5"]["label"] == "matmul\n4\u00d716 f32"
    assert nodes["n14"]["label"] == "cross_entropy\nscalar f32\nloss \u00e9"
    # quotes and backslashes survive; a newline in a name stays a line break
    assert nodes["n2"]["label"] == 'param\n8\u00d716 f32\nw1 "quoted" \\ back\nslash'
    fills = {name: attrs["fillcolor"] for name, attrs in nodes.items()}
    assert fills["n0"] != fills["n2"] != fills["n5"]             # input, param, matmul
    assert nodes["n14"]["penwidth"] and nodes["n21"]["color"] != nodes["n20"]["color"]
    assert nodes["n6"]["tooltip"] == "model.py:16"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_dot_accepted_by_graphviz(tmp_path):
    for g in (small_graph(), random_graph(300)):
        out = subprocess.run(["dot", "-Tplain"], input=viz.render_dot(g), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert sum(line.startswith("node ") for line in out.stdout.splitlines()) == len(g["nodes"])


# --- HTML -------------------------------------------------------------------------------------

def embedded_data(page: str) -> dict:
    m = re.search(r"^const G=(.*);$", page, re.M)
    assert m, "no embedded graph data"
    return json.loads(m.group(1))


def test_html_is_self_contained_and_carries_the_nodes():
    g = small_graph()
    page = viz.render_html(g)
    for needle in ("http://", "https://", "//cdn", "<link", " src=", "@import", "url("):
        assert needle not in page, needle
    assert page.count("</script>") == 1       # the name "w2</script>" cannot end the script
    assert "tiny &quot;mlp&quot;" in page     # the title is HTML-escaped
    data = embedded_data(page)
    strings = data["s"]
    records = data["n"]
    assert [r[0] for r in records] == [n["id"] for n in g["nodes"]]
    assert [strings[r[1]] for r in records] == [n["op"] for n in g["nodes"]]
    assert [strings[r[4]] or None for r in records] == [n["name"] for n in g["nodes"]]
    assert strings[records[2][7]] == "ta=false, tb=false"
    assert strings[records[2][5]] == "model.py:15"
    assert [data["sh"][r[2]] for r in records] == [n["shape"] for n in g["nodes"]]
    index = {n["id"]: k for k, n in enumerate(g["nodes"])}
    assert [r[11] for r in records] == [[index[i] for i in n["inputs"]] for n in g["nodes"]]
    for label in ("parameter", "input", "matmul", "graph output", "gradient of a parameter"):
        assert label in page


def test_outputs_are_deterministic(tmp_path):
    g = random_graph(500, seed=3)
    dot, page = viz.render_dot(g), viz.render_html(g)
    again = copy.deepcopy(g)
    assert viz.render_dot(again) == dot and viz.render_html(again) == page
    paths = viz.write_graph_views(g, tmp_path / "graphs", "joint")
    assert paths == [tmp_path / "graphs" / "joint.dot", tmp_path / "graphs" / "joint.html"]
    assert paths[0].read_text(encoding="utf-8") == dot
    assert paths[1].read_text(encoding="utf-8") == page


def test_empty_graph_renders():
    empty = {"title": "empty", "nodes": []}
    assert parse_dot(viz.render_dot(empty)) == ({}, [], {
        "rankdir": "TB", "label": "empty", "labelloc": "t", "fontname": "Helvetica",
        "fontsize": "16"})
    assert embedded_data(viz.render_html(empty))["n"] == []


def test_large_graph_renders_fast_and_small():
    g = random_graph(8000)
    t0 = time.perf_counter()
    page = viz.render_html(g)
    viz.render_dot(g)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"{elapsed:.2f} s"
    assert len(page.encode()) < 1.5e6, len(page.encode())
    assert len(embedded_data(page)["n"]) == 8000


# --- layout -----------------------------------------------------------------------------------

def test_layout_layers_and_spacing():
    _, nodes = viz._checked(random_graph(2000, seed=1))
    xs, layers = viz.layout(nodes)
    index = {n.id: k for k, n in enumerate(nodes)}
    users: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        for i in n.inputs:
            assert layers[index[i]] < layers[k]
            users.setdefault(index[i], []).append(k)
    for k, n in enumerate(nodes):  # a source sits just above its first user
        if not n.inputs and k in users:
            assert layers[k] == min(layers[u] for u in users[k]) - 1
    by_layer: dict[int, list[int]] = {}
    for k, layer in enumerate(layers):
        by_layer.setdefault(layer, []).append(xs[k])
    for row in by_layer.values():
        row.sort()
        assert all(b - a >= viz.X_STEP - 1 for a, b in zip(row, row[1:]))  # no overlaps
    assert min(xs) >= 0


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("graph, message", [
    ([], "nodes"),
    ({"title": "x"}, "nodes"),
    ({"nodes": [{"id": 0, "op": "param", "inputs": [], "shape": [2]}]}, "dtype"),
    ({"nodes": [{"id": "a", "op": "param", "inputs": [], "shape": [], "dtype": "f32"}]}, "id"),
    ({"nodes": [{"id": 0, "op": "neg", "inputs": [1], "shape": [], "dtype": "f32"},
                {"id": 1, "op": "param", "inputs": [], "shape": [], "dtype": "f32"}]}, "earlier"),
    ({"nodes": [{"id": 0, "op": "param", "inputs": [], "shape": [], "dtype": "f32"},
                {"id": 0, "op": "param", "inputs": [], "shape": [], "dtype": "f32"}]}, "duplicate"),
    ({"nodes": [{"id": 0, "op": "param", "inputs": [], "shape": "2x3", "dtype": "f32"}]}, "shape"),
])
def test_bad_graph_is_a_user_error(graph, message):
    with pytest.raises(UserError, match=message):
        viz.render_html(graph)


# --- command line -----------------------------------------------------------------------------

def run_tool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run tools/viz.py from outside the checkout, with no PYTHONPATH, as a fresh clone would."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(ROOT / "tools" / "viz.py"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


def test_cli_writes_beside_the_input_or_into_out(tmp_path):
    src = tmp_path / "joint.json"
    src.write_text(json.dumps(small_graph()), encoding="utf-8")
    done = run_tool(str(src), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "joint.dot").is_file() and (tmp_path / "joint.html").is_file()
    done = run_tool(str(src), "--out", str(tmp_path / "views"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "views" / "joint.html").read_text(encoding="utf-8") == \
        viz.render_html(small_graph())


def test_cli_bad_input_is_one_line_and_status_2(tmp_path):
    (tmp_path / "text.json").write_text("not json {", encoding="utf-8")
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    (tmp_path / "deep.json").write_text(DEEP_JSON, encoding="utf-8")
    (tmp_path / "later.json").write_text(json.dumps({"nodes": [
        {"id": 0, "op": "neg", "inputs": [3], "shape": [], "dtype": "f32"}]}), encoding="utf-8")
    (tmp_path / "good.json").write_text(json.dumps(small_graph()), encoding="utf-8")
    cases = [["missing.json"], ["text.json"], ["list.json"], ["deep.json"], ["later.json"],
             ["good.json", "--out", "text.json"]]   # --out names a file, not a directory
    for args in cases:
        done = run_tool(*args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, done.stderr)
        assert not (tmp_path / Path(args[0]).with_suffix(".html")).exists()


def test_cli_replaces_its_own_views_and_nothing_else(tmp_path):
    src = tmp_path / "joint.json"
    src.write_text(json.dumps(small_graph()), encoding="utf-8")
    assert run_tool(str(src), cwd=tmp_path).returncode == 0
    assert run_tool(str(src), cwd=tmp_path).returncode == 0  # its own views: replaced
    for suffix in (".dot", ".html"):
        mine = tmp_path / "mine" / f"joint{suffix}"
        mine.parent.mkdir(exist_ok=True)
        mine.write_text("my own notes\n")
        done = run_tool(str(src), "--out", str(mine.parent), cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.strip().splitlines() == [
            f"error: {mine} exists and is not a graph view tools/viz.py wrote; it is left as it is"], done.stderr
        assert mine.read_text() == "my own notes\n"
        assert sorted(p.name for p in mine.parent.iterdir()) == [mine.name]
        mine.unlink()
