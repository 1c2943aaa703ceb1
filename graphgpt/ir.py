"""The static graph: nodes with fixed shapes and dtypes, built through `Value` handles.

A `Graph` is an append-only list of `Node`s in topological order (inputs before users). Sources
are `param` (trainable weights), `state` (optimizer state), `cache` (a layer's keys and values,
kept between runs of the generation programs), `input` (fed each step: tokens, targets, runtime
scalars such as the learning rate or a decoding position), `const` (a float scalar) and
`const_tensor` (a table the compiler computes, such as rotary embedding's cosines). `updates` maps
a param, state or cache node to the node holding its new value after one run; `grads` maps a param
to its gradient.

Every node records where it came from (`where`, the user's file:line) so that errors and graph
dumps point at the model file, not at graphgpt.

An op with several outputs (LayerNorm: the normalised rows, their means and reciprocal standard
deviations) is one node of dtype "tuple" holding its outputs' specs, followed by one `output` node
per output (attr index): each output is a value of its own, with its own shape, dtype and buffer,
and the tuple node is what runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import networkx as nx

from .dtypes import DTYPES
from .errors import UserError
from .ops import REGISTRY, ShapeMismatch, Spec

FLOAT = "f32"  # the compute float type; a backend may run it in float64 (tests)
INT = "i32"
TUPLE = "tuple"  # the dtype of a node with several outputs

PERSISTENT_OPS = ("param", "state", "cache")  # sources with a slot of their own in the arena
CONSTANT_OPS = ("const", "const_tensor")  # values the plan carries: the constants region of the arena
SOURCE_OPS = (*PERSISTENT_OPS, "input", *CONSTANT_OPS)


class GraphError(UserError):
    """A graph that cannot be built: shape or dtype mismatch, unknown op, bad attribute."""


@dataclass(frozen=True)
class Node:
    id: int
    op: str
    inputs: tuple[int, ...]
    attrs: tuple[tuple[str, object], ...]
    shape: tuple[int, ...]
    dtype: str
    where: str | None = None
    specs: tuple = ()  # a tuple node's outputs: ((shape, dtype), ...)

    @property
    def attr(self) -> dict:
        return dict(self.attrs)

    @property
    def spec(self) -> Spec:
        """What the op rules see of this node as an input (a tuple node: its outputs' specs)."""
        return Spec(self.specs, TUPLE) if self.specs else Spec(self.shape, self.dtype)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Bytes of its buffer; a tuple node has none (its outputs do)."""
        return 0 if self.specs else self.size * DTYPES[self.dtype].bytes

    @property
    def name(self) -> str | None:
        return self.attr.get("name")


@dataclass
class Graph:
    nodes: dict[int, Node] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)
    updates: dict[int, int] = field(default_factory=dict)
    grads: dict[int, int] = field(default_factory=dict)
    late: dict[int, int] = field(default_factory=dict)  # recomputed node -> the reader it runs just before
    locate: Callable[[], str | None] | None = None  # gives `where` for new nodes
    _next_id: int = 0
    _consts: dict[tuple | str, int] = field(default_factory=dict)  # a scalar's (value,), a table's name

    # ---- building -------------------------------------------------------------------------
    def add(self, op: str, inputs: Iterable["Value | int"] = (), **attrs) -> "Value | tuple[Value, ...]":
        """Add a node; an op with several outputs gives a tuple of Values, one per output."""
        ids = tuple(v.id if isinstance(v, Value) else v for v in inputs)
        where = self.locate() if self.locate else None
        if op not in REGISTRY:
            raise GraphError(_located(where, f"unknown op '{op}'"))
        specs = [self.nodes[i].spec for i in ids]
        try:
            out = REGISTRY[op].infer(attrs, *specs)
        except ShapeMismatch as e:
            shapes = ", ".join(f"{s.shape}:{s.dtype}" for s in specs)
            raise GraphError(_located(where, f"{op}: {e} (inputs {shapes})")) from None
        if isinstance(out, list):
            node = Node(self._next_id, op, ids, _freeze(attrs), (), TUPLE, where,
                        specs=tuple((tuple(s.shape), s.dtype) for s in out))
        else:
            node = Node(self._next_id, op, ids, _freeze(attrs), tuple(out.shape), out.dtype, where)
        self.nodes[node.id] = node
        self._next_id += 1
        if node.specs:
            return tuple(self.add("output", (node.id,), index=k) for k in range(len(node.specs)))
        return Value(self, node.id)

    def const(self, value: float) -> "Value":
        """A float scalar constant; equal values share one node."""
        key = (float(value),)
        if key not in self._consts:
            self._consts[key] = self.add("const", value=float(value)).id
        return Value(self, self._consts[key])

    def const_tensor(self, table: str, shape: tuple[int, ...], **params) -> "Value":
        """A float32 tensor of constants, table `table` (ops/source.py's TABLES) of `params`;
        equal tables share one node, and across programs one slot, by their name."""
        shown = ",".join(f"{k}={v!r}" for k, v in sorted(params.items()))
        name = f"{table}[{'x'.join(map(str, shape))}]({shown})"
        if name not in self._consts:
            self._consts[name] = self.add("const_tensor", name=name, table=table, shape=tuple(shape),
                                          dtype=FLOAT, **params).id
        return Value(self, self._consts[name])

    def value(self, node_id: int) -> "Value":
        return Value(self, node_id)

    # ---- reading --------------------------------------------------------------------------
    def users(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {i: [] for i in self.nodes}
        for n in self.nodes.values():
            for i in n.inputs:
                out[i].append(n.id)
        return out

    def depends_on(self, roots: set[int]) -> set[int]:
        """The nodes whose value depends on any of `roots` (the roots among them)."""
        hit = set(roots)
        for n in self.nodes.values():
            if any(i in hit for i in n.inputs):
                hit.add(n.id)
        return hit

    def of_op(self, *ops: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.op in ops]

    def projections(self) -> dict[int, list[int]]:
        """Each tuple node's output nodes, by index."""
        out: dict[int, dict[int, int]] = {}
        for n in self.nodes.values():
            if n.op == "output":
                out.setdefault(n.inputs[0], {})[n.attr["index"]] = n.id
        return {t: [ks[k] for k in sorted(ks)] for t, ks in out.items()}

    def param_ids(self) -> list[int]:
        return [n.id for n in self.nodes.values() if n.op == "param"]

    def to_networkx(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from((i, n.id) for n in self.nodes.values() for i in n.inputs)
        return g

    def roles(self) -> dict[int, str]:
        role = {n.id: n.op for n in self.nodes.values() if n.op in SOURCE_OPS}
        role.update({g: "grad" for g in self.grads.values()})
        role.update({v: "update" for v in self.updates.values()})
        role.update({o: "output" for o in self.outputs.values()})
        return role

    def summary(self, title: str) -> dict:
        """JSON-able description used by the graph dumps."""
        roles = self.roles()
        return {"title": title, "nodes": [
            {"id": n.id, "op": n.op, "inputs": list(n.inputs), "shape": list(n.shape),
             "dtype": n.dtype, "name": n.name, "where": n.where, "role": roles.get(n.id),
             "attrs": {k: v for k, v in n.attrs if k != "name"}}
            for n in self.nodes.values()]}

    def verify(self) -> None:
        """Structural invariants every pass must keep; raises AssertionError on a broken graph."""
        seen: set[int] = set()
        for n in self.nodes.values():
            assert all(i in seen for i in n.inputs), f"node {n.id} ({n.op}) uses a later node"
            out = REGISTRY[n.op].infer(n.attr, *(self.nodes[i].spec for i in n.inputs))
            if isinstance(out, list):
                assert tuple((tuple(s.shape), s.dtype) for s in out) == n.specs, f"node {n.id} shape drift"
            else:
                assert (tuple(out.shape), out.dtype) == (n.shape, n.dtype), f"node {n.id} shape drift"
            seen.add(n.id)
        for name, o in self.outputs.items():
            assert o in self.nodes, f"output {name} missing"
        for s, v in self.updates.items():
            assert self.nodes[s].op in PERSISTENT_OPS, f"update of non-persistent node {s}"
            assert self.nodes[s].shape == self.nodes[v].shape, f"update of {s} changes shape"
        assert nx.is_directed_acyclic_graph(self.to_networkx())


class Value:
    """A handle on one node while a graph is being built; arithmetic adds nodes."""

    __slots__ = ("graph", "id")

    def __init__(self, graph: Graph, node_id: int):
        self.graph, self.id = graph, node_id

    @property
    def node(self) -> Node:
        return self.graph.nodes[self.id]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.node.shape

    @property
    def dtype(self) -> str:
        return self.node.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _lift(self, other) -> "Value":
        return other if isinstance(other, Value) else self.graph.const(other)

    def __add__(self, o): return self.graph.add("add", (self, self._lift(o)))
    def __radd__(self, o): return self.graph.add("add", (self._lift(o), self))
    def __sub__(self, o): return self.graph.add("sub", (self, self._lift(o)))
    def __rsub__(self, o): return self.graph.add("sub", (self._lift(o), self))
    def __mul__(self, o): return self.graph.add("mul", (self, self._lift(o)))
    def __rmul__(self, o): return self.graph.add("mul", (self._lift(o), self))
    def __truediv__(self, o): return self.graph.add("div", (self, self._lift(o)))
    def __rtruediv__(self, o): return self.graph.add("div", (self._lift(o), self))
    def __neg__(self): return self.graph.add("neg", (self,))
    def __matmul__(self, o): return self.graph.add("matmul", (self, o), ta=False, tb=False)

    def sum(self, axes: Iterable[int] | int | None = None, keepdims: bool = False) -> "Value":
        return self.graph.add("sum", (self,), axes=_axes(axes, self.ndim), keepdims=keepdims)

    def mean(self, axes: Iterable[int] | int | None = None, keepdims: bool = False) -> "Value":
        ax = _axes(axes, self.ndim)
        count = 1
        for a in ax:
            count *= self.shape[a]
        return self.sum(ax, keepdims) * (1.0 / count)

    def reshape(self, *shape) -> "Value":
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = [int(d) for d in shape]
        if shape.count(-1) == 1:  # one inferred dimension, as in NumPy
            known = 1
            for d in shape:
                known *= d if d != -1 else 1
            shape[shape.index(-1)] = self.node.size // known if known else 0
        return self.graph.add("reshape", (self,), shape=tuple(shape))

    @property
    def T(self) -> "Value":
        """The last two axes swapped (a matrix transposed); a matmul reads it through its flags."""
        return self.transpose(*range(self.ndim - 2), self.ndim - 1, self.ndim - 2)

    def transpose(self, *perm) -> "Value":
        perm = tuple(perm[0]) if len(perm) == 1 and isinstance(perm[0], (tuple, list)) else perm
        return self.graph.add("transpose", (self,), perm=tuple(int(p) for p in perm))

    def broadcast_to(self, shape) -> "Value":
        return self.graph.add("broadcast_to", (self,), shape=tuple(shape))

    def __getitem__(self, index) -> "Value":
        """Basic indexing: `x[i]` drops the leading axis; contiguous slices (step 1, negative
        bounds counted from the end) keep their axes, on any of them: `x[a:b]`, `x[:, a:b]`,
        `x[..., a:b]`. Each slice of an axis is one slice op; a whole axis (`:`) is none."""
        if isinstance(index, int):
            i = index % self.shape[0] if self.ndim else index
            return self.graph.add("slice", (self,), axis=0, start=i, stop=i + 1).reshape(self.shape[1:])
        items = index if isinstance(index, tuple) else (index,)
        if sum(item is Ellipsis for item in items) == 1:
            at = next(k for k, item in enumerate(items) if item is Ellipsis)
            items = items[:at] + (slice(None),) * (self.ndim - len(items) + 1) + items[at + 1:]
        if len(items) > self.ndim or not all(isinstance(s, slice) and s.step in (None, 1) for s in items):
            raise GraphError(_located(self.graph.locate() if self.graph.locate else None,
                                      f"unsupported index {index!r} of a value of shape {self.shape}: use x[i] on "
                                      "the first axis, or contiguous slices such as x[a:b], x[:, a:b], x[..., a:b]"))
        out = self
        for axis, s in enumerate(items):
            if (s.start, s.stop) != (None, None):
                start, stop, _ = s.indices(self.shape[axis])
                out = self.graph.add("slice", (out,), axis=axis, start=start, stop=stop)
        return out

    def __repr__(self) -> str:
        n = self.node
        return f"Value(%{n.id} = {n.op}, shape={n.shape}, dtype={n.dtype})"


def _axes(axes, ndim: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, int):
        axes = (axes,)
    return tuple(sorted(a % ndim for a in axes))


def _freeze(attrs: dict) -> tuple:
    def f(v):
        return tuple(f(x) for x in v) if isinstance(v, (list, tuple)) else v
    return tuple(sorted((k, f(v)) for k, v in attrs.items()))


def _located(where: str | None, msg: str) -> str:
    return f"{where}: {msg}" if where else msg
