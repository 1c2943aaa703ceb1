"""The side stream (passes/streams.py): which launches run there, and that every launch that
touches bytes another stream's launch touches (one of them writing) is ordered after it."""
from dataclasses import replace

import pytest

from graphgpt.compiler import compile_model
from graphgpt.dtypes import nbytes
from graphgpt.ops import REGISTRY
from graphgpt.ops.registry import BACKWARD_ONLY
from graphgpt.passes.streams import MAIN, SIDE, assign_streams
from graphgpt.plan import Buffer, KernelCall, Launch, Program
from tests.conftest import ROOT

TWO_LAYERS = ["n_layer=2", "n_head=2", "n_embd=64", "block_size=64", "batch_size=4"]
GRADS = (1000, 1000)


def launch(op, reads, writes, kind="reduction", kernel=None):
    """A launch touching [offset, offset + 4) of each named f32 buffer."""
    def bufs(offsets):
        return tuple(Buffer("f32", off, (1,)) for off in offsets)
    out = bufs(writes)
    return Launch(op=op, kind=kind, ins=bufs(reads), out=out[0], outs=out,
                  cuda=KernelCall(kernel or f"{op}_kernel", "kernels/synthetic.cu", (1, 1, 1), (1, 1, 1), 0, out))


def streams(launches):
    """The launches as assign_streams gives them back."""
    return assign_streams(Program(launches=tuple(launches)), GRADS).launches


def happens_before(launches):
    """after[i]: the launches that launch i follows, through its stream's order and its waits."""
    after, last = [], {}
    for i, x in enumerate(launches):
        seen = set()
        for j in [last.get(x.stream), *x.waits]:
            if j is not None:
                seen |= after[j] | {j}
        after.append(seen)
        last[x.stream] = i
    return after


def conflicts(a, b):
    def spans(bufs):
        return [(x.offset, x.offset + nbytes(x)) for x in bufs]

    def overlap(xs, ys):
        return any(x0 < y1 and y0 < x1 for x0, x1 in xs for y0, y1 in ys)
    aw, bw = spans(a.outputs), spans(b.outputs)
    return (overlap(aw, spans(b.ins) + bw) or overlap(spans(a.ins), bw)
            or _kernel(a) == _kernel(b) is not None)


def _kernel(launch):
    return launch.cuda.kernel if isinstance(launch.cuda, KernelCall) else None


def unordered_conflicts(launches):
    after = happens_before(launches)
    return [(j, i) for i, x in enumerate(launches) for j in range(i)
            if launches[j].stream != x.stream and j not in after[i] and conflicts(x, launches[j])]


def test_a_rewritten_buffer_waits_for_the_other_streams_reader():
    launches = [
        launch("mul", [0], [100], kind="elementwise"),             # main: the gradient g
        launch("sum", [100], [1000]),                              # side: a bias gradient from g
        launch("matmul", [100, 200], [300], kind="matmul"),        # main: reads g too, no wait
        launch("add", [300], [100], kind="elementwise"),           # main: g's bytes reused: after the sum
        launch("sum", [300], [1004]),                              # side: after the matmul that wrote its input
        launch("sum_squares", [1000, 1004], [400]),                # main: reads both gradients
        launch("embedding_grad", [0], [1008], kind="nn"),          # side, no conflict since the last wait
    ]
    launches = streams(launches)
    assert [x.stream for x in launches] == [MAIN, SIDE, MAIN, MAIN, SIDE, MAIN, SIDE]
    assert [x.waits for x in launches] == [(), (0,), (), (1,), (2,), (4,), ()]
    assert unordered_conflicts(launches) == []


def test_two_launches_of_one_kernel_on_two_streams_are_ordered():
    """A reduction's partials live in its kernel's scratch, which all its launches share."""
    launches = [launch("mul", [0], [100], kind="elementwise"), launch("sum", [100], [1000]),
                launch("sum", [0], [500])]
    launches = streams(launches)
    assert [x.stream for x in launches] == [MAIN, SIDE, MAIN]
    assert launches[2].waits == (1,)


def test_the_checker_sees_a_missing_wait():
    launches = [launch("mul", [0], [100], kind="elementwise"), launch("sum", [100], [1000])]
    first, second = streams(launches)
    assert unordered_conflicts([first, replace(second, waits=())]) == [(0, 1)]


def test_library_calls_and_launches_writing_elsewhere_stay_on_the_main_stream():
    launches = [launch("matmul", [0], [1000], kind="matmul"), launch("allreduce_mean", [1000], [1000], kind="collective"),
                launch("sum", [0], [1000, 2000]), launch("sum", [0], [996])]
    assert [x.stream for x in streams(launches)] == [MAIN] * 4


@pytest.mark.parametrize("overrides", [
    [*TWO_LAYERS, "dtype=bf16"],
    [*TWO_LAYERS, "dtype=bf16", "dropout=0.1", "tie_weights=1"],
    TWO_LAYERS,
    [*TWO_LAYERS, "grad_accum=2"],
], ids=["bf16", "bf16-dropout-tied", "f32", "accumulate"])
def test_every_plan_orders_each_conflicting_pair_across_streams(overrides):
    data = compile_model(ROOT / "model.py", overrides, log=lambda *a: None).data
    grads = data["arena"]["regions"]["grads"]
    for name, program in data["programs"].items():
        launches = program.launches
        assert unordered_conflicts(launches) == [], name
        for i, x in enumerate(launches):
            if x.stream == SIDE:  # a gradient's side work, or backward work on the program's inputs alone
                assert x.kind not in ("matmul", "collective")
                assert (all(grads[0] <= b.offset < grads[0] + grads[1] for b in x.outputs)
                        or REGISTRY[x.op].nondiff == BACKWARD_ONLY and not any(conflicts(replace(x, outs=()), w) for w in launches[:i]))
    train = data["programs"]["train" if "grad_accum=2" not in overrides else "accumulate"].launches
    assert any(x.stream == SIDE for x in train)
    assert not any(x.stream == SIDE for x in data["programs"]["eval"].launches)


def test_the_bf16_backward_runs_beside_its_side_launches():
    """The sum groups overlap the rest of the backward: the main stream goes on past each (its
    allreduce waits for it on a stream of its own) and waits for one only where the arena reuses
    bytes it reads (at once, in this small plan, for the first group), or where the update's
    gradient norm reads what they wrote. The one-hot matrix of the ids runs first, beside the
    forward, and its GEMM in the backward waits for it."""
    data = compile_model(ROOT / "model.py", [*TWO_LAYERS, "dtype=bf16"], log=lambda *a: None).data
    launches = data["programs"]["train"].launches
    side = [i for i, x in enumerate(launches) if x.stream == SIDE]
    assert [launches[i].op for i in side] == ["one_hot"] + ["sum_group"] * 3 and side[0] == 0
    reader = next(i for i, x in enumerate(launches) if launches[0].out in x.ins)
    assert launches[reader].kind == "matmul" and 0 in happens_before(launches)[reader]
    side = side[1:]
    overlapped = set(side)
    for i, x in enumerate(launches):
        if x.stream == MAIN and x.kind != "collective":
            for j in x.waits:
                if x.op != "sum_squares" and j != 0:  # the update needs every gradient
                    assert conflicts(replace(x, ins=()), launches[j]), (i, j)  # it rewrites bytes j read
                if not any(launches[k].stream == MAIN and launches[k].kind != "collective" for k in range(j + 1, i)):
                    overlapped.discard(j)
    assert len(overlapped) == len(side) - 1
    norm = next(x for x in launches if x.op == "sum_squares")
    assert norm.waits == (side[-1],)
