"""Static memory plan: every tensor gets a fixed byte offset in one arena.

The arena is laid out as   [params | grads | optimizer state | weight copies | constants | inputs |
work] (constants: the float32 scalars, then the constant tensors, such as rotary tables, which
the backends load from the plan directory and no program writes), with the key/value caches of
the generation programs at the start of the work region.
Parameters, their gradients and the optimizer state have fixed slots, parameters and gradients in
the same order (so the gradients form one flat buffer, and an allreduce or a multi-tensor
optimizer can treat them as a single array). The weights' copies in the compute type
(passes/weight_copies.py) repeat the params region's layout at their width. The key/value caches
have fixed slots, but only hold from the generation programs' run that writes them to the ones
that read them: a generation starts by writing them, so the training programs' work may go over
them and they cost training no memory; the generation programs plan their own work above them.
Every tensor starts on a 256-byte boundary (a bf16 weight copy on a 128-byte one), so any 16-byte
vector access a kernel makes at a multiple of its vector width stays aligned. A gradient
accumulator (a state node with attribute grad_of=<param>) has no slot of its own: it is its
parameter's gradient slot, so the region means the same in every plan. The work region is shared by every program of a plan and
planned per program from each buffer's lifetime (from the step that computes it to its last reader)
in two ways, keeping the smaller: a best-fit heap simulated over the schedule (as XLA's heap
simulator), and an offline placement of the largest buffers first (as TFLite's greedy-by-size
planner), which strands fewer large buffers above small holes. Either is checked: no two buffers
alive at one step share memory.

An op with several outputs runs as its tuple node, which owns no memory; each of its outputs owns a
buffer (or takes an input's, step 1b of plan_program), live from the step that runs the op.

Four kinds of sharing remove copies, as each op declares them in its registry entry:
- views: a reshape, or a slice of contiguous memory, reads its input's buffer at an offset; a
  collective (the gradient allreduce) works in place, so it shares its input's buffer too but runs;
- concats built in place, views in reverse: a concat of contiguous pieces owns a buffer and each
  input is computed directly into its slice of it, so the concat itself runs nothing;
- in-place updates: a parameter's or optimizer state's new value is written over the old one when
  it is an elementwise op that reads the old value last, or when it does not read the old value
  and runs after everything that does (a weight's compute-type copy); otherwise a copy runs at the
  end. An op that only writes part of its output (a cache update: the new rows) must run in place,
  and the plan fails where it cannot;
- sums in a gradient's slot: a gradient computed over its partial sum in place (the classifier's
  weight gradient, summed over its chunks by GEMMs with beta = 1) keeps that partial sum in the
  gradient's own slot, where the program has no other use for it, instead of in the work region.
"""
from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..dtypes import DTYPES
from ..errors import UserError
from ..families.shape.ops import contiguous_along
from ..ir import Graph, Node
from ..ops import REGISTRY
from ..ops.registry import PERSISTENT_REGIONS, prod
from ..plan import aligned

CONST = "f32"  # scalar constants are stored as float32


@dataclass
class Layout:
    """The persistent part of the arena, shared by all programs of one plan (byte offsets)."""
    tensors: dict[str, int] = field(default_factory=dict)   # param/state/cache name -> offset
    grads: dict[str, int] = field(default_factory=dict)     # param name -> offset of its gradient
    consts: dict[float, int] = field(default_factory=dict)        # scalar value -> offset
    const_tensors: dict[str, int] = field(default_factory=dict)   # const_tensor name -> offset
    regions: dict[str, list[int]] = field(default_factory=dict)  # name -> [start, size]

    @property
    def inputs_base(self) -> int:
        return self.regions["inputs"][0]

    @property
    def work_base(self) -> int:
        start, size = self.regions["inputs"]
        return aligned(start + size)

    def offset(self, n: Node) -> int:
        """The slot of a param, state or cache node."""
        grad_of = n.attr.get("grad_of")
        return self.grads[grad_of] if grad_of else self.tensors[n.name]

    def constant(self, n: Node) -> int:
        """The slot of a const (by its value) or a const_tensor (by its name)."""
        return self.const_tensors[n.name] if n.name else self.consts[n.attr["value"]]


def persistent_layout(*graphs: Graph) -> Layout:
    """Slots for the params, states and caches of all programs of a plan, in order of first
    appearance; room for the largest program's inputs."""
    lay, top = Layout(), 0

    def region(name: str, items: list[tuple[str, int]], table: dict) -> None:
        nonlocal top
        start = top
        for key, size in items:
            table[key] = top
            top += aligned(size)
        lay.regions[name] = [start, top - start]

    def of_region(name: str) -> list[Node]:
        return [n for g in graphs for n in g.nodes.values() if region_of(n) == name]

    def slots(name: str) -> list[tuple[str, int]]:
        sizes = {n.name: n.nbytes for n in of_region(name) if "grad_of" not in n.attr and "copy_of" not in n.attr}
        return list(sizes.items())

    # in the order the optimizer updates them (optim.add_update puts the parameters that take the
    # same update together), so that each group's update is one multi-tensor launch
    updated = [n.name for g in graphs for i in g.updates if region_of(n := g.nodes[i]) == "params"]
    rank = {name: i for i, name in enumerate(dict.fromkeys(updated))}
    params = sorted(slots("params"), key=lambda slot: rank.get(slot[0], len(rank)))
    copies_of = [n for n in of_region("caches") if "copy_of" in n.attr]
    # a program that reads a weight only through its copy has no node of the weight itself
    params += list({n.attr["copy_of"]: n.size * DTYPES["f32"].bytes for n in copies_of
                    if n.attr["copy_of"] not in dict(params)}.items())
    region("params", params, lay.tensors)
    region("grads", params, lay.grads)
    region("state", slots("state"), lay.tensors)
    copies(lay, copies_of)
    top = aligned(sum(lay.regions["copies"]))
    # scalar constants by value; constant tensors (which have names) after them
    values = sorted({n.attr["value"] for n in of_region("consts") if not n.name})
    start = top
    width = DTYPES[CONST].bytes
    lay.consts = {v: start + i * width for i, v in enumerate(values)}
    top += len(values) * width
    # the constant tensors after the scalars, in order of first appearance, each on a boundary
    tables = {n.name: n.nbytes for n in of_region("consts") if n.name}
    for name, size in tables.items():
        top = aligned(top)
        lay.const_tensors[name] = top
        top += size
    lay.regions["consts"] = [start, top - start]
    lay.regions["inputs"] = [aligned(top), max((sum(aligned(n.nbytes) for n in g.nodes.values()
                                                     if region_of(n) == "inputs") for g in graphs), default=0)]
    top = lay.work_base
    region("caches", slots("caches"), lay.tensors)
    return lay


def region_of(n: Node) -> str | None:
    """The arena region a source's value lies in, as its op declares; None for a computed node."""
    return REGISTRY[n.op].source


def copies(lay: Layout, nodes: list[Node]) -> None:
    """The weights' copies: the params region again, at the copies' width. A copy lies as many
    elements into its region as its weight into the params region, so the casts of all weights
    are one pointwise pass over both regions, padding included (passes/multi_tensor.py); a bf16
    copy thus starts on a boundary of half the alignment, which still aligns 16-byte vectors."""
    params_start, params_size = lay.regions["params"]
    start = aligned(sum(lay.regions["state"]))
    widths = {DTYPES[n.dtype].bytes for n in nodes}
    assert len(widths) <= 1, "the copies of one plan have one type"
    width, f32 = min(widths, default=0), DTYPES["f32"].bytes
    for n in nodes:
        lay.tensors[n.name] = start + (lay.tensors[n.attr["copy_of"]] - params_start) * width // f32
    lay.regions["copies"] = [start, params_size * width // f32]


@dataclass
class ProgramMemory:
    offsets: dict[int, int]                  # node id -> byte offset in the arena
    launches: list[int]                      # node ids that run, in order (views do not)
    copies: list[tuple[int, int]]            # (value node, state node) copied after the last launch
    work_size: int                           # bytes of the work region this program needs
    work_sum: int                            # sum of all work buffer sizes (no reuse at all)
    lower_bound: int                         # most bytes live at any one time


def plan_program(graph: Graph, order: list[int], layout: Layout) -> ProgramMemory:
    nodes = graph.nodes
    pos = {nid: i for i, nid in enumerate(order)}
    end = len(order)
    readers = graph.users()
    pinned = set(graph.grads.values()) | set(graph.updates.values())  # must own their memory

    # 1. views: a node that only reinterprets its input's memory shares the input's buffer, and the
    #    inputs of a concat built in place share the concat's
    parent: dict[int, tuple[int, int]] = {}  # node -> (node whose buffer it lies in, byte offset)

    def resolve(nid: int) -> tuple[int, int]:
        """(root node, byte offset in root): where a node's memory is."""
        off = 0
        while nid in parent:
            nid, shift = parent[nid]
            off += shift
        return nid, off

    unplaceable = pinned | set(graph.outputs.values()) | {n.id for n in nodes.values() if region_of(n)}
    in_place_concats, placed = set(), set()  # concats built in place; the pieces computed into them
    for nid in order:
        n = nodes[nid]
        shift = view_shift(n, nodes)
        if _in_place_op(n):  # overwriting its input is only legal when nothing reads that later
            assert all(pos.get(r, -1) <= pos[nid] for r in readers[n.inputs[0]]), f"node {nid} cannot run in place"
        if shift is not None and nid not in pinned:
            parent[nid] = (n.inputs[0], shift)
        elif REGISTRY[n.op].assembles:
            pieces = _concat_pieces(n, nodes, resolve, unplaceable)
            if isinstance(pieces, str):
                if REGISTRY[n.op].template is None:
                    raise UserError(f"{n.where}: {n.op} of {len(n.inputs)} pieces along axis {n.attr['axis']} "
                                    f"cannot be built: {pieces}; it runs no kernel, each piece must be "
                                    "computed into its part of the result")
                continue
            for root, off in pieces:  # a piece's views move along with it
                parent[root] = (nid, off)
                placed.add(root)
            in_place_concats.add(nid)
    root_of, members, last_read = _buffers(nodes, readers, pos, resolve)

    # 1b. in place: an op that may overwrite an input (its registry entry says which output over
    #     which input) gives that output the input's whole buffer when the op is that buffer's last
    #     reader and the sizes match, so the two are never live together (GPT-2's logits and their
    #     gradient: 1.5 GiB at 124M in bf16). An output of an op with several is its own node; each
    #     output takes at most one input's buffer, and each buffer goes to at most one output.
    in_place = set()
    projections = graph.projections()
    for nid in order:
        n = nodes[nid]
        if REGISTRY[n.op].kind == "projection":
            continue
        outs, taken = projections[nid] if n.specs else [nid], set()
        for k, i in REGISTRY[n.op].overwrites(n.attr, len(n.inputs)):
            o = outs[k]
            root, shift = resolve(n.inputs[i])
            if (o not in parent and o not in unplaceable and root not in taken and shift == 0
                    and root not in unplaceable and root not in in_place_concats and not nodes[root].specs
                    and REGISTRY[nodes[root].op].kind != "projection" and nodes[root].nbytes == nodes[o].nbytes
                    and last_read.get(root) == pos[nid]):
                parent[o] = (root, 0)
                in_place.add(o)
                taken.add(root)
                last_read[root] = max(last_read[root], last_read.get(o, pos[nid]))
    view = {nid: resolve(nid) for nid in parent}
    root_of, members, last_read = _buffers(nodes, readers, pos, resolve)

    # 2. fixed slots: sources, gradients, and updates written in place
    fixed: dict[int, int] = {}
    input_top = layout.inputs_base
    for n in nodes.values():
        if region_of(n) in PERSISTENT_REGIONS:
            fixed[n.id] = layout.offset(n)
        elif region_of(n) == "consts":
            fixed[n.id] = layout.constant(n)
        elif region_of(n) == "inputs":
            fixed[n.id] = input_top
            input_top += aligned(n.nbytes)
    for p, g in graph.grads.items():
        assert g not in fixed and not region_of(nodes[g]), \
            f"gradient of {nodes[p].name} has no memory of its own"
        fixed[g] = layout.grads[nodes[p].name]
    slot_users = Counter(fixed.values())
    for g in graph.grads.values():
        sums = _sums_before(g, nodes, resolve, last_read, pos, fixed, slot_users, unplaceable | in_place_concats)
        if sums is not None:
            fixed[sums] = fixed[g]
    copies = []
    for state, new in graph.updates.items():
        if (_in_place(new, state, nodes, pos, readers, members)
                or _read_before(new, state, nodes, pos, readers, members)) and new not in fixed:
            fixed[new] = fixed[state]
        elif _in_place_op(nodes[new]):
            raise UserError(f"{nodes[new].where}: {nodes[new].op} (node {new}) writes only part of "
                            f"{nodes[state].name} and must run over it, but something reads it afterwards")
        else:
            copies.append((new, state))
    keep_alive = set(graph.outputs.values()) | {new for new, _ in copies}

    # 3. the work region: each buffer lives from the step that computes it to its last reader
    roots = [nid for nid in nodes if nid not in fixed and nid not in view and not nodes[nid].specs]

    def written(k: int) -> int:
        """The step that writes node k: an output of an op with several is written by that op."""
        n = nodes[k]
        return pos.get(n.inputs[0], -1) if REGISTRY[n.op].kind == "projection" else pos.get(k, -1)
    # born when its first member is computed (a concat built in place: its first piece)
    born = {r: min(written(k) for k in members[r]) for r in roots}
    dies = {r: (end if any(root_of[k] == r for k in keep_alive) else last_read.get(r, born[r]))
            for r in roots}
    buffers = [_Buffer(r, born[r], dies[r], aligned(nodes[r].nbytes)) for r in roots]
    work, peak = min((_simulated_heap(buffers), _largest_first(buffers)), key=lambda placement: placement[1])
    _check_disjoint(buffers, work)
    offsets: dict[int, int] = dict(fixed)
    # a program with key/value caches plans its work above them
    base = layout.work_base + (layout.regions["caches"][1] if any(_kv_cache(n) for n in nodes.values()) else 0)
    offsets.update({r: base + off for r, off in work.items()})
    for nid, (root, shift) in view.items():
        offsets[nid] = offsets[root] + shift
    return ProgramMemory(
        offsets=offsets,
        launches=[nid for nid in order
                  if (nid not in view or nid in placed or nid in in_place or _in_place_op(nodes[nid]))
                  and nid not in in_place_concats
                  and REGISTRY[nodes[nid].op].kind != "projection"],
        copies=copies,
        work_size=base - layout.work_base + peak,  # the caches below it included
        work_sum=sum(b.size for b in buffers),
        lower_bound=_most_live(buffers),
    )


def _sums_before(g: int, nodes, resolve, last_read, pos, fixed, slot_users, unplaceable) -> int | None:
    """The buffer a gradient is summed onto in place (the classifier's weight gradient over its
    chunks: D = A B + C, D over C), when the gradient's slot can hold those sums before it: the
    slot is nobody else's in this program (no accumulator of a micro-batch's gradients lives there)
    and the sums are read by nothing after the gradient's op. The partial sums then take no work
    memory: they are written into the slot the last sum completes."""
    n = nodes[g]
    if n.specs or slot_users[fixed[g]] > 1:
        return None
    for k, i in REGISTRY[n.op].overwrites(n.attr, len(n.inputs)):
        root, shift = resolve(n.inputs[i])
        x = nodes[root]
        if (k == 0 and shift == 0 and root not in fixed and root not in unplaceable and not x.specs
                and REGISTRY[x.op].kind != "projection" and x.nbytes == n.nbytes and last_read.get(root) == pos[g]):
            return root
    return None


def _buffers(nodes, readers, pos, resolve):
    """Each node's root buffer, each root's members, and the step of each root's last reader."""
    root_of = {nid: resolve(nid)[0] for nid in nodes}
    members: dict[int, list[int]] = {}
    for nid, root in root_of.items():
        members.setdefault(root, []).append(nid)
    last_read: dict[int, int] = {}
    for nid in nodes:
        for r in readers[nid]:
            if r in pos:
                root = root_of[nid]
                last_read[root] = max(last_read.get(root, -1), pos[r])
    return root_of, members, last_read


def _kv_cache(n: Node) -> bool:
    """A cache that lies in the work region (a weight's copy has a region of its own)."""
    return region_of(n) == "caches" and "copy_of" not in n.attr


def _in_place_op(n: Node) -> bool:
    return REGISTRY[n.op].in_place


def view_shift(n: Node, nodes: dict[int, Node]) -> int | None:
    """Byte offset into the input if `n` shares its input's memory (as its op declares), else None."""
    view = REGISTRY[n.op].view
    if view is None:
        return None
    x = nodes[n.inputs[0]]
    return view(n.attr, x, DTYPES[x.dtype].bytes)


def _concat_pieces(n: Node, nodes: dict[int, Node], resolve, unplaceable: set[int]) -> list[tuple[int, int]] | str:
    """(root, byte offset in the concat) of each input's buffer, if every input can be computed
    directly into its slice of the concat; otherwise why not."""
    axis = n.attr["axis"]
    if not contiguous_along(n.shape, axis):
        return f"its pieces are not contiguous along axis {axis}"
    inner, start, pieces = prod(n.shape[axis + 1:]) * DTYPES[n.dtype].bytes, 0, []
    for k, i in enumerate(n.inputs, 1):
        root, shift = resolve(i)
        if shift or nodes[root].nbytes != nodes[i].nbytes:
            return f"piece {k} is part of another value's memory (a slice or reshape of it)"
        if root in unplaceable:
            return f"piece {k} is a parameter, input, gradient, update or output, which keeps its own memory"
        if any(root == r for r, _ in pieces):
            return f"piece {k} is given twice"
        pieces.append((root, start * inner))
        start += nodes[i].shape[axis]
    return pieces


def _writer(new: int, nodes) -> tuple[Node, int]:
    """The node that runs to write value `new`, and which of its outputs `new` is."""
    n = nodes[new]
    return (nodes[n.inputs[0]], n.attr["index"]) if REGISTRY[n.op].kind == "projection" else (n, 0)


def _in_place(new: int, state: int, nodes, pos, readers, members) -> bool:
    """Can `new` overwrite `state`'s memory? Its op allows it, it reads it directly, and reads it last."""
    op, k = _writer(new, nodes)
    may = REGISTRY[op.op].overwrites(op.attr, len(op.inputs))
    if not any((k, i) in may for i, x in enumerate(op.inputs) if x == state):
        return False
    others = [r for m in members[state] for r in readers[m] if r != op.id]
    return all(pos[r] < pos[op.id] for r in others if r in pos)


def _read_before(new: int, state: int, nodes, pos, readers, members) -> bool:
    """Everything that reads `state` runs before the op that writes `new`, which does not read it:
    its new value may be computed straight into its slot. A weight's copy: the step's GEMMs read
    it, then the update writes it."""
    op, _ = _writer(new, nodes)
    return not nodes[new].specs and all(pos[r] < pos[op.id]
                                        for m in members[state] for r in readers[m] if r in pos)


@dataclass(frozen=True)
class _Buffer:
    """A work buffer: alive from step `born` to step `dies`, both included (a buffer freed at a
    step and one allocated at it are live together: the step reads the one and writes the other)."""
    node: int
    born: int
    dies: int
    size: int


def _simulated_heap(buffers: list[_Buffer]) -> tuple[dict[int, int], int]:
    """Offsets by a best-fit heap run over the schedule: allocate at birth, free after the last read."""
    heap, offsets = _Heap(), {}
    by_time: dict[int, list[_Buffer]] = {}
    frees: dict[int, list[_Buffer]] = {}
    for b in buffers:
        by_time.setdefault(b.born, []).append(b)
        frees.setdefault(b.dies, []).append(b)
    for t in sorted(set(by_time) | set(frees)):
        for b in sorted(by_time.get(t, ()), key=lambda b: b.node):
            offsets[b.node] = heap.alloc(b.size)
        for b in sorted(frees.get(t, ()), key=lambda b: b.node):
            heap.free(offsets[b.node], b.size)
    return offsets, heap.peak


def _largest_first(buffers: list[_Buffer]) -> tuple[dict[int, int], int]:
    """Offsets placed offline, largest buffer first: each goes into the smallest gap left between the
    buffers already placed whose lifetimes meet its own, or above them all. The heap, which sees
    buffers in schedule order, can strand large ones above small holes; knowing every lifetime in
    advance avoids that (TFLite's greedy-by-size planner works this way)."""
    order = sorted(buffers, key=lambda b: (-b.size, b.born, b.node))
    born = np.array([b.born for b in order])
    dies = np.array([b.dies for b in order])
    sizes = np.array([b.size for b in order], dtype=np.int64)
    starts = np.zeros(len(order), dtype=np.int64)
    peak = 0
    for i, b in enumerate(order):
        meets = np.flatnonzero((born[:i] <= b.dies) & (b.born <= dies[:i]))
        best, top = None, 0
        for j in meets[np.argsort(starts[meets], kind="stable")]:
            gap = starts[j] - top
            if gap >= b.size and (best is None or gap < best[1]):
                best = (top, gap)
            top = max(top, starts[j] + sizes[j])
        starts[i] = best[0] if best else top
        peak = max(peak, int(starts[i]) + b.size)
    return {b.node: int(start) for b, start in zip(order, starts)}, peak


def _check_disjoint(buffers: list[_Buffer], offsets: dict[int, int]) -> None:
    """No two buffers alive at the same step share memory."""
    born = np.array([b.born for b in buffers])
    dies = np.array([b.dies for b in buffers])
    start = np.array([offsets[b.node] for b in buffers], dtype=np.int64)
    stop = start + np.array([b.size for b in buffers], dtype=np.int64)
    for i in range(len(buffers)):
        clash = (born <= dies[i]) & (born[i] <= dies) & (start < stop[i]) & (start[i] < stop)
        clash[i] = False
        assert not clash.any(), f"buffers of nodes {buffers[i].node} and {buffers[int(np.argmax(clash))].node} overlap"


def _most_live(buffers: list[_Buffer]) -> int:
    """The lower bound of any placement: the most bytes alive at one step."""
    change: dict[int, int] = {}
    for b in buffers:
        change[b.born] = change.get(b.born, 0) + b.size
        change[b.dies + 1] = change.get(b.dies + 1, 0) - b.size
    live = most = 0
    for t in sorted(change):
        live += change[t]
        most = max(most, live)
    return most


class _Heap:
    """Best-fit allocator over a growing region; tracks the peak size."""

    def __init__(self):
        self.free_blocks: list[tuple[int, int]] = []  # (start, size), sorted by start
        self.top = 0
        self.peak = 0

    def alloc(self, size: int) -> int:
        fits = [(s, start) for start, s in self.free_blocks if s >= size]
        if fits:
            s, start = min(fits)
            i = bisect.bisect_left(self.free_blocks, (start, s))
            del self.free_blocks[i]
            if s > size:
                bisect.insort(self.free_blocks, (start + size, s - size))
            return start
        if self.free_blocks and sum(self.free_blocks[-1]) == self.top:  # grow the last hole
            start, _ = self.free_blocks.pop()
        else:
            start = self.top
        self.top = start + size
        self.peak = max(self.peak, self.top)
        return start

    def free(self, start: int, size: int) -> None:
        i = bisect.bisect_left(self.free_blocks, (start, size))
        self.free_blocks.insert(i, (start, size))
        # merge with the neighbours on both sides
        if i + 1 < len(self.free_blocks) and start + size == self.free_blocks[i + 1][0]:
            size += self.free_blocks.pop(i + 1)[1]
            self.free_blocks[i] = (start, size)
        if i > 0 and sum(self.free_blocks[i - 1]) == start:
            prev_start, prev_size = self.free_blocks.pop(i - 1)
            self.free_blocks[i - 1] = (prev_start, prev_size + size)
        if self.free_blocks and sum(self.free_blocks[-1]) == self.top:
            self.top = self.free_blocks.pop()[0]
