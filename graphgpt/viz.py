"""Graph dumps for people: Graphviz DOT and a self-contained HTML viewer of a compiler stage.

Input is the JSON-able form `Graph.summary()` produces: {"title", "nodes": [{"id", "op",
"inputs", "shape", "dtype", "name", "where", "role", "attrs"?}]} in topological order.

The HTML file is opened from disk, often years after it was compiled, so it carries everything
itself: the layout is computed here in Python (Graphviz is not a dependency and in-browser layout
of 8000 nodes is slow), the nodes travel as compact JSON and a small inline script draws them on a
canvas. Both outputs are committed beside the plan and diffed by tests, so they are deterministic:
no timestamps, no randomness, no set or hash ordering.
"""
from __future__ import annotations

import html
import json
import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

from . import jsontext
from .errors import ArgumentParser, UserError
from .fsutil import atomic_write_text
from .ops import REGISTRY

# Fill colour: sources by their role, computed nodes by their op's kind in the registry.
CATEGORIES = (  # key, legend label, fill
    ("param", "parameter", "#f9c66b"),
    ("state", "optimizer state", "#f1deab"),
    ("cache", "key/value cache", "#e6c8a6"),
    ("input", "input", "#9fd8a8"),
    ("const", "constant", "#d6d6d6"),
    ("matmul", "matmul", "#7eb2f2"),
    ("nn", "fused nn op", "#c3b1ee"),
    ("elementwise", "elementwise", "#cfe7f7"),
    ("reduction", "reduction", "#f5a9a9"),
    ("shape", "shape / copy", "#f2f2f2"),
    ("other", "other", "#ffffff"),
)
# Outline colour for the roles a node has besides what it computes.
ROLE_STROKES = (  # role, legend label, outline
    ("output", "graph output", "#111111"),
    ("grad", "gradient of a parameter", "#d6336c"),
    ("update", "new parameter / state value", "#2b8a3e"),
)
_CATEGORY_INDEX = {key: k for k, (key, _, _) in enumerate(CATEGORIES)}
_FILL = {key: fill for key, _, fill in CATEGORIES}
_STROKE = {role: colour for role, _, colour in ROLE_STROKES}
_SOURCE_ROLES = ("param", "state", "cache", "input", "const")

# HTML layout geometry, in canvas pixels at zoom 1.
NODE_W, NODE_H = 150, 44
X_STEP = NODE_W + 24      # minimum distance between centres in a layer
ROW = NODE_H + 40         # distance between layers
SWEEPS = 4                # barycenter ordering sweeps, alternating down and up


class _Node(NamedTuple):
    id: int
    op: str
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    dtype: str
    name: str | None
    where: str | None
    role: str | None
    attrs: dict


def render_dot(graph: dict) -> str:
    """Graphviz source: one box per node (op, shape, name), edges from input to user."""
    title, nodes = _checked(graph)
    lines = [
        f"digraph {_dot_str(title)} {{",
        f'  graph [rankdir=TB, label={_dot_str(title)}, labelloc=t, fontname="Helvetica", '
        'fontsize=16];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, '
        'color="#7a7f87"];',
        '  edge [color="#8a9099", arrowsize=0.6];',
    ]
    for n in nodes:
        head = f"output {n.attrs['index']}" if n.op == "output" and "index" in n.attrs else n.op
        label = [head, _type_text(n)] + ([n.name] if n.name else [])
        attrs = [f"label={_dot_str(*label)}", f'fillcolor="{_FILL[_category(n)]}"']
        if n.role in _STROKE:
            attrs += [f'color="{_STROKE[n.role]}"', "penwidth=2.5"]
        if n.where:
            attrs.append(f"tooltip={_dot_str(n.where)}")
        lines.append(f"  {_dot_id(n.id)} [{', '.join(attrs)}];")
    lines += [f"  {_dot_id(i)} -> {_dot_id(n.id)};" for n in nodes for i in n.inputs]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_html(graph: dict) -> str:
    """One self-contained HTML page: pan/zoom canvas, node details, search and a legend."""
    title, nodes = _checked(graph)
    xs, layers = layout(nodes)
    strings: dict[str, int] = {"": 0}   # interned: most ops, dtypes, roles and lines repeat
    shapes: dict[tuple[int, ...], int] = {}
    index = {n.id: k for k, n in enumerate(nodes)}

    def s(text: str | None) -> int:
        return strings.setdefault(text or "", len(strings))

    records = [[n.id, s(n.op), shapes.setdefault(n.shape, len(shapes)), s(n.dtype), s(n.name),
                s(n.where), s(n.role), s(_attrs_text(n.attrs)), _CATEGORY_INDEX[_category(n)],
                xs[k], layers[k], [index[i] for i in n.inputs]]
               for k, n in enumerate(nodes)]
    data = {"s": list(strings), "sh": [list(sh) for sh in shapes], "n": records,
            "k": [fill for _, _, fill in CATEGORIES], "rs": _STROKE,
            "w": NODE_W, "h": NODE_H, "row": ROW}
    # "<" only occurs inside JSON strings, where \u003c means the same; this keeps a name such as
    # "</script>" from ending the script element.
    data_js = json.dumps(data, separators=(",", ":"), sort_keys=True).replace("<", "\\u003c")
    edges = sum(len(n.inputs) for n in nodes)
    subs = {"TITLE": html.escape(title), "DATA": data_js, "LEGEND": _legend(nodes),
            "COUNTS": f"{len(nodes)} nodes, {edges} edges"}
    # One pass, so that text substituted in is never scanned for placeholders itself.
    return re.sub(r"@([A-Z]+)@", lambda m: subs[m.group(1)], _HTML)


def write_graph_views(graph: dict, out_dir: str | Path, stem: str) -> list[Path]:
    """Write out_dir/stem.dot and out_dir/stem.html; returns their paths."""
    texts = {".dot": render_dot(graph), ".html": render_html(graph)}  # both or neither
    paths = []
    for suffix, text in texts.items():
        path = Path(out_dir) / f"{stem}{suffix}"
        atomic_write_text(path, text)
        paths.append(path)
    return paths


def layout(nodes: list[_Node]) -> tuple[list[int], list[int]]:
    """Layered DAG layout: (x centre, layer) per node, in the order of `nodes`.

    The layer is the longest-path depth from the sources, except that a source sits just above
    its first user: a weight used deep in the network would otherwise hang at the top with an
    edge across the whole drawing. Within a layer, alternating barycenter sweeps order the nodes
    to shorten edges, then x positions pull each node under its inputs (and sources over their
    users) while keeping the order and a minimum gap. Everything is a linear pass or a sort of
    one layer, so the cost is O(E + N log N).
    """
    index = {n.id: k for k, n in enumerate(nodes)}
    preds = [[index[i] for i in n.inputs] for n in nodes]
    succs: list[list[int]] = [[] for _ in nodes]
    for k, ps in enumerate(preds):
        for p in ps:
            succs[p].append(k)
    layer = [0] * len(nodes)
    for k, ps in enumerate(preds):
        if ps:
            layer[k] = 1 + max(layer[p] for p in ps)
    for k, ps in enumerate(preds):
        if not ps and succs[k]:
            layer[k] = min(layer[u] for u in succs[k]) - 1
    rows: list[list[int]] = [[] for _ in range(max(layer, default=-1) + 1)]
    for k in range(len(nodes)):
        rows[layer[k]].append(k)

    # Positions are centred indices, so that layers of different widths compare.
    pos = [0.0] * len(nodes)
    for row in rows:
        _number(row, pos)
    for sweep in range(SWEEPS):
        down = sweep % 2 == 0
        near = preds if down else succs
        for row in rows if down else reversed(rows):
            row.sort(key=lambda k: (_mean(near[k], pos, pos[k]), pos[k]))
            _number(row, pos)

    x = [p * X_STEP for p in pos]
    for row in rows:    # down: under the inputs
        _place(row, [_mean(preds[k], x, x[k]) for k in row], x)
    for row in reversed(rows):  # up: sources over their users in the next layer, the rest stay
        _place(row, [x[k] if preds[k] else
                     _mean([u for u in succs[k] if layer[u] == layer[k] + 1], x, x[k])
                     for k in row], x)
    left = min(x, default=0.0)
    return [round(v - left) + NODE_W for v in x], layer


def _number(row: list[int], pos: list[float]) -> None:
    mid = (len(row) - 1) / 2
    for r, k in enumerate(row):
        pos[k] = r - mid


def _mean(ks: list[int], values: list[float], default: float) -> float:
    return sum(values[k] for k in ks) / len(ks) if ks else default


def _place(row: list[int], want: list[float], x: list[float]) -> None:
    """Put `row` as close to `want` as the order and the gap allow.

    Pushing left-to-right and right-to-left separately and averaging keeps the gap (both
    passes do) without the drift either pass alone has.
    """
    a = list(want)
    for r in range(1, len(a)):
        a[r] = max(a[r], a[r - 1] + X_STEP)
    b = list(want)
    for r in range(len(b) - 2, -1, -1):
        b[r] = min(b[r], b[r + 1] - X_STEP)
    for r, k in enumerate(row):
        x[k] = (a[r] + b[r]) / 2


def _category(n: _Node) -> str:
    if n.role in _SOURCE_ROLES:
        return n.role
    op = REGISTRY.get(n.op)
    kind = op.kind if op else "other"
    if kind == "source":
        kind = n.op
    return kind if kind in _CATEGORY_INDEX else "other"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "\u00d7".join(map(str, shape)) if shape else "scalar"


def _type_text(n: _Node) -> str:
    """Shape and dtype; an op with several outputs shows them on its output nodes instead."""
    return "several outputs" if n.dtype == "tuple" else f"{_shape_text(n.shape)} {n.dtype}"


def _attrs_text(attrs: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v, sort_keys=True, default=repr)}"
                     for k, v in sorted(attrs.items()))


def _dot_id(node_id: int) -> str:
    return f"n{node_id}" if node_id >= 0 else f"n_{-node_id}"


def _dot_str(*lines: str) -> str:
    """A quoted DOT string; several arguments become centred lines."""
    def esc(s: str) -> str:
        s = s.replace("\\", "\\\\").replace('"', '\\"')
        return s.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")
    return '"' + "\\n".join(map(esc, lines)) + '"'


def _legend(nodes: list[_Node]) -> str:
    used = {_category(n) for n in nodes}
    roles = {n.role for n in nodes}
    items = [f'<div><i style="background:{fill}"></i>{html.escape(label)}</div>'
             for key, label, fill in CATEGORIES if key in used]
    items += [f'<div><i style="border:2px solid {colour}"></i>{html.escape(label)}</div>'
              for role, label, colour in ROLE_STROKES if role in roles]
    return "".join(items)


def _checked(graph: object) -> tuple[str, list[_Node]]:
    """Validate the JSON structure; bad input is a UserError naming the node."""
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise UserError('a graph must be an object with a "nodes" list')
    title = graph.get("title", "graph")
    if not isinstance(title, str):
        raise UserError("the graph title must be a string")
    seen: set[int] = set()
    nodes = []
    for k, n in enumerate(graph["nodes"]):
        if not isinstance(n, dict):
            raise UserError(f"node #{k} is not an object")
        what = f"node #{k} (id {n.get('id')!r})"
        if not _is_int(n.get("id")):
            raise UserError(f"{what}: id must be an integer")
        if n["id"] in seen:
            raise UserError(f"{what}: duplicate id")
        if not isinstance(n.get("op"), str):
            raise UserError(f"{what}: op must be a string")
        for key in ("inputs", "shape"):
            if not isinstance(n.get(key), list) or not all(map(_is_int, n[key])):
                raise UserError(f"{what}: {key} must be a list of integers")
        for i in n["inputs"]:
            if i not in seen:
                raise UserError(f"{what}: input {i} is not an earlier node "
                                "(nodes must be listed inputs first)")
        if not isinstance(n.get("dtype"), str):
            raise UserError(f"{what}: dtype must be a string")
        for key in ("name", "where", "role"):
            if not isinstance(n.get(key), (str, type(None))):
                raise UserError(f"{what}: {key} must be a string or null")
        attrs = n.get("attrs") or {}
        if not isinstance(attrs, dict):
            raise UserError(f"{what}: attrs must be an object")
        seen.add(n["id"])
        nodes.append(_Node(n["id"], n["op"], tuple(n["inputs"]), tuple(n["shape"]), n["dtype"],
                           n.get("name"), n.get("where"), n.get("role"), attrs))
    return title, nodes


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="tools/viz.py",
        description="Render a graph dump (JSON) as Graphviz DOT and a self-contained HTML viewer.")
    parser.add_argument("graph", type=Path, help='graph JSON: {"title": ..., "nodes": [...]}')
    parser.add_argument("--out", type=Path, help="output directory (default: beside GRAPH)")
    args = parser.parse_args(argv)
    try:
        graph = _read_json(args.graph)
        _check_replaceable(args.out or args.graph.parent, args.graph.stem)
        paths = write_graph_views(graph, args.out or args.graph.parent, args.graph.stem)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output side: --out is a file, a directory is read-only, ...
        print(f"error: cannot write {e.filename or args.out}: {e.strerror}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


# How the views this module writes begin: an existing file that begins otherwise is not one of
# them, and is left as it is.
_VIEW_STARTS = {".dot": ("digraph ", "\n  graph [rankdir=TB, label="),
                ".html": ("<!DOCTYPE html>\n<html lang=\"en\">\n", " - graphgpt</title>\n")}


def _check_replaceable(out_dir: Path, stem: str) -> None:
    """The command line replaces STEM.dot and STEM.html only where they are views it wrote."""
    for suffix, marks in _VIEW_STARTS.items():
        path = Path(out_dir) / f"{stem}{suffix}"
        if not os.path.lexists(path):
            continue
        try:
            with open(path, "rb") as f:
                start = f.read(4096).decode("utf-8", errors="replace")
        except OSError:
            start = ""
        if path.is_symlink() or not path.is_file() or not (start.startswith(marks[0]) and marks[1] in start):
            raise UserError(f"{path} exists and is not a graph view tools/viz.py wrote; it is left as it is")


def _read_json(path: Path) -> object:
    try:
        return jsontext.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not JSON: {e.msg} (line {e.lineno}, column {e.colno})") \
            from None


_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@ - graphgpt</title>
<style>
html,body{margin:0;height:100%;overflow:hidden;background:#fbfbfc;color:#1d1f23;
 font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
canvas{position:absolute;left:0;top:0;width:100%;height:100%;cursor:grab}
.box{position:absolute;background:rgba(255,255,255,.95);border:1px solid #d0d4da;
 border-radius:6px;padding:7px 10px;box-shadow:0 1px 4px rgba(0,0,0,.1)}
#bar{top:10px;left:10px;display:flex;gap:10px;align-items:center}
#bar b{font-size:15px}
#bar span{color:#5c636e}
#q{width:190px;padding:3px 6px;font:inherit;border:1px solid #b8bec7;border-radius:4px}
button{font:inherit;padding:2px 9px;border:1px solid #b8bec7;border-radius:4px;background:#f3f4f6;
 cursor:pointer}
#info{top:10px;right:10px;width:330px;max-height:calc(100% - 42px);overflow:auto}
#info table{border-collapse:collapse;width:100%}
#info td{padding:1px 4px;vertical-align:top;word-break:break-word}
#info td:first-child{color:#5c636e;width:52px}
#info h3{margin:0 0 4px;font-size:15px}
#info a{color:#1864ab;text-decoration:none;display:block}
#info a:hover{text-decoration:underline}
#legend{bottom:10px;left:10px;font-size:12px}
#legend i{display:inline-block;width:13px;height:11px;margin-right:6px;vertical-align:-1px;
 border:1px solid #7a7f87;border-radius:2px;box-sizing:border-box}
</style>
</head>
<body>
<canvas id="cv"></canvas>
<div id="bar" class="box"><b>@TITLE@</b><span>@COUNTS@</span>
<input id="q" type="search" placeholder="search name or op" autocomplete="off">
<span id="hits"></span><button id="all" title="show the whole graph">whole graph</button></div>
<div id="info" class="box"></div>
<div id="legend" class="box">@LEGEND@</div>
<script>
"use strict";
const G=@DATA@;
const S=G.s,R=G.n,N=R.length,W=G.w,H=G.h,ROW=G.row;
const X=new Float64Array(N),Y=new Float64Array(N),ins=[],outs=[],rows=[];
R.forEach((r,i)=>{X[i]=r[9];Y[i]=r[10]*ROW;ins.push(r[11]);outs.push([]);
 (rows[r[10]]||(rows[r[10]]=[])).push(i)});
ins.forEach((a,i)=>a.forEach(j=>outs[j].push(i)));
let bx0=0,bx1=W,by1=H;
for(let i=0;i<N;i++){bx0=Math.min(bx0,X[i]-W);bx1=Math.max(bx1,X[i]+W);by1=Math.max(by1,Y[i]+H)}
const by0=-H;
const cv=document.getElementById("cv"),cx=cv.getContext("2d"),info=document.getElementById("info"),
 qi=document.getElementById("q"),hits=document.getElementById("hits");
const HELP="Drag to pan, wheel to zoom. Hover a node for its details, click to pin it; "+
 "inputs are drawn orange, users blue. Enter in the search box jumps to the next match.";
let sc=1,tx=0,ty=0,hov=-1,sel=-1,hit=null,hitList=[],hitAt=-1,queued=false,drag=null;
const shapeText=i=>{const s=G.sh[R[i][2]];return S[R[i][3]]==="tuple"?"several outputs":s.length?s.join("\\u00d7"):"scalar"};
const esc=s=>String(s).replace(/[&<>"]/g,c=>"&#"+c.charCodeAt(0)+";");
const clip=(s,n)=>s.length>n?s.slice(0,n-1)+"\\u2026":s;

function redraw(){if(!queued){queued=true;requestAnimationFrame(paint)}}
function edge(j,i){const ax=X[j],ay=Y[j]+H/2,bx=X[i],by=Y[i]-H/2,k=Math.min((by-ay)/2,ROW);
 cx.moveTo(ax,ay);cx.bezierCurveTo(ax,ay+k,bx,by-k,bx,by)}
function paint(){
 queued=false;
 const d=devicePixelRatio||1,px=1/sc;
 cx.setTransform(1,0,0,1,0,0);cx.clearRect(0,0,cv.width,cv.height);
 cx.setTransform(d*sc,0,0,d*sc,d*tx,d*ty);
 const x0=-tx/sc-W,x1=(innerWidth-tx)/sc+W,y0=-ty/sc-H,y1=(innerHeight-ty)/sc+H;
 const vis=i=>X[i]>x0&&X[i]<x1&&Y[i]>y0&&Y[i]<y1;
 cx.lineWidth=px;cx.strokeStyle=hit?"rgba(120,128,140,.2)":"rgba(110,118,130,.6)";cx.beginPath();
 for(let i=0;i<N;i++)for(const j of ins[i]){
  if(Math.max(X[i],X[j])<x0||Math.min(X[i],X[j])>x1||Y[i]<y0||Y[j]>y1)continue;edge(j,i)}
 cx.stroke();
 const f=sel>=0?sel:hov;
 if(f>=0){cx.lineWidth=2.5*px;
  cx.strokeStyle="#f08c00";cx.beginPath();for(const j of ins[f])edge(j,f);cx.stroke();
  cx.strokeStyle="#1c7ed6";cx.beginPath();for(const j of outs[f])edge(f,j);cx.stroke()}
 const tiny=H*sc<6,text=H*sc>=20;
 for(let i=0;i<N;i++){if(!vis(i))continue;const r=R[i],rs=G.rs[S[r[6]]];
  cx.globalAlpha=hit&&!hit[i]&&i!==f?.3:1;cx.fillStyle=G.k[r[8]];cx.beginPath();
  if(tiny||!cx.roundRect)cx.rect(X[i]-W/2,Y[i]-H/2,W,H);else cx.roundRect(X[i]-W/2,Y[i]-H/2,W,H,6);
  cx.fill();
  if(rs){cx.lineWidth=Math.max(2.5,1.5*px);cx.strokeStyle=rs;cx.stroke()}
  else if(!tiny){cx.lineWidth=px;cx.strokeStyle="#7a7f87";cx.stroke()}}
 cx.globalAlpha=1;
 if(text){cx.textAlign="center";cx.textBaseline="middle";cx.fillStyle="#16181c";
  for(let i=0;i<N;i++){if(!vis(i))continue;const r=R[i],nm=S[r[4]],t=Y[i]-(nm?14:7);
   cx.font="bold 12px system-ui,sans-serif";cx.fillText(clip(S[r[1]],22),X[i],t);
   cx.font="11px system-ui,sans-serif";cx.fillText(clip(shapeText(i)+" "+S[r[3]],26),X[i],t+14);
   if(nm)cx.fillText(clip(nm,26),X[i],t+28)}}
 const ring=(i,c,w)=>{const m=Math.max(0,(8*px-H)/2)+3*px;cx.lineWidth=w*px;cx.strokeStyle=c;
  cx.strokeRect(X[i]-W/2-m,Y[i]-H/2-m,W+2*m,H+2*m)};
 for(const i of hitList)if(vis(i))ring(i,"#f08c00",3);
 if(hov>=0)ring(hov,"#1c7ed6",2);
 if(sel>=0)ring(sel,"#1c7ed6",3.5);
}
function resize(){const d=devicePixelRatio||1;cv.width=Math.round(innerWidth*d);
 cv.height=Math.round(innerHeight*d);redraw()}
function fitScale(){return Math.min((innerWidth-20)/(bx1-bx0),(innerHeight-90)/(by1-by0))}
function view(all){
 // A big graph fitted whole is unreadable: it opens at its sources at a readable size instead,
 // and the button shows the whole.
 const f=fitScale();
 if(all||f>=.5){sc=Math.min(1,f);tx=(innerWidth-(bx0+bx1)*sc)/2;ty=70-by0*sc}
 else{const top=rows.slice(0,8).flat(),mx=top.reduce((s,i)=>s+X[i],0)/top.length;
  sc=.8;tx=innerWidth/2-mx*sc;ty=70+H*sc/2}
 redraw()}
function at(mx,my){const wx=(mx-tx)/sc,wy=(my-ty)/sc,l=Math.round(wy/ROW),row=rows[l];
 if(!row||Math.abs(wy-l*ROW)>H/2)return -1;
 for(const i of row)if(Math.abs(wx-X[i])<=W/2)return i;return -1}
function link(i){return '<a href="#" data-i="'+i+'">#'+R[i][0]+" "+esc(S[R[i][1]])+
 (S[R[i][4]]?" "+esc(S[R[i][4]]):"")+"</a>"}
function links(a){a=[...new Set(a)];
 return a.slice(0,40).map(link).join("")+(a.length>40?"\\u2026 "+(a.length-40)+" more":"")}
function show(){
 const i=sel>=0?sel:hov;if(i<0){info.textContent=HELP;return}
 const r=R[i],row=(k,v)=>v?"<tr><td>"+k+"</td><td>"+v+"</td></tr>":"";
 info.innerHTML="<h3>"+esc(S[r[1]])+" <small>#"+r[0]+"</small></h3><table>"+
  row("name",esc(S[r[4]]))+row("shape",shapeText(i))+row("dtype",esc(S[r[3]]))+
  row("role",esc(S[r[6]]))+row("attrs",esc(S[r[7]]))+row("where",esc(S[r[5]]))+
  row("inputs",links(ins[i]))+row("users",links(outs[i]))+"</table>"}
function focus(i){sel=i;sc=Math.max(sc,.8);tx=innerWidth/2-X[i]*sc;ty=innerHeight/2-Y[i]*sc;
 show();redraw()}
info.addEventListener("click",e=>{const a=e.target.closest("a[data-i]");
 if(a){e.preventDefault();focus(+a.dataset.i)}});
qi.addEventListener("input",()=>{const q=qi.value.trim().toLowerCase();hitList=[];hit=null;hitAt=-1;
 if(q){hit=new Uint8Array(N);for(let i=0;i<N;i++)
  if(S[R[i][1]].toLowerCase().includes(q)||S[R[i][4]].toLowerCase().includes(q)){
   hit[i]=1;hitList.push(i)}}
 hits.textContent=q?hitList.length+(hitList.length===1?" match":" matches"):"";redraw()});
qi.addEventListener("keydown",e=>{if(e.key!=="Enter"||!hitList.length)return;
 hitAt=(hitAt+(e.shiftKey?hitList.length-1:1))%hitList.length;focus(hitList[hitAt]);
 hits.textContent=(hitAt+1)+" / "+hitList.length});
document.getElementById("all").addEventListener("click",()=>view(true));
cv.addEventListener("mousedown",e=>{drag={x:e.clientX,y:e.clientY,tx,ty,moved:false};
 cv.style.cursor="grabbing"});
addEventListener("mousemove",e=>{
 if(drag){const dx=e.clientX-drag.x,dy=e.clientY-drag.y;
  if(Math.abs(dx)+Math.abs(dy)>3)drag.moved=true;tx=drag.tx+dx;ty=drag.ty+dy;redraw();return}
 const i=e.target===cv?at(e.clientX,e.clientY):-1;
 if(i!==hov){hov=i;cv.style.cursor=i>=0?"pointer":"grab";if(sel<0)show();redraw()}});
addEventListener("mouseup",e=>{if(!drag)return;const moved=drag.moved;drag=null;
 cv.style.cursor=hov>=0?"pointer":"grab";
 if(!moved){sel=at(e.clientX,e.clientY);show();redraw()}});
cv.addEventListener("wheel",e=>{e.preventDefault();
 const s=Math.min(4,Math.max(fitScale()/2,sc*Math.exp(-e.deltaY*(e.deltaMode?.05:.0015))));
 tx=e.clientX-(e.clientX-tx)*s/sc;ty=e.clientY-(e.clientY-ty)*s/sc;sc=s;redraw()},{passive:false});
addEventListener("resize",resize);
resize();view(false);show();
</script>
</body>
</html>
"""
