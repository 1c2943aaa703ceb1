"""Multi-tensor launches: which neighbouring pointwise launches join, and that a join computes the
same as the launches it replaces."""
from dataclasses import replace

import numpy as np
import pytest

from graphgpt.compiler import compile_model
from graphgpt.ops import REGISTRY
from graphgpt.plan import aligned
from graphgpt.passes.multi_tensor import merge_launches
from graphgpt.plan import Buffer, Launch
from tests.conftest import ROOT

PROGRAM = (("mul", (), (-1, -2)), ("add", (), (0, -3)))  # x0 * x1 + x2
S = aligned(6 * 4) // 4  # where a region's second tensor starts when its first has 6 floats


def f32(offset: int, shape: tuple) -> Buffer:
    """A float32 buffer `offset` elements into the arena."""
    return Buffer("f32", 4 * offset, shape)


def launch(out: int, ins: list[int], n: int = 6, scalar: int = 1000) -> Launch:
    """out = x0 * scalar + x2, the scalar's buffer shared; tensor buffers at the given offsets."""
    return Launch(op="fused", kind="elementwise", out=f32(out, (n,)), ins=(f32(ins[0], (n,)), f32(scalar, ()), f32(ins[1], (n,))),
                  attrs={"program": PROGRAM}, node=out, where="optimizer")


def test_neighbours_in_every_region_join():
    a = launch(0, [200, 400])
    b = launch(S, [200 + S, 400 + S], n=8)
    (joined,) = merge_launches([a, b])
    assert joined.out == f32(0, (S + 8,)) and joined.attrs["tensors"] == 2
    assert joined.ins == (f32(200, (S + 8,)), f32(1000, ()), f32(400, (S + 8,)))


def test_what_does_not_join():
    a = launch(0, [200, 400])
    assert len(merge_launches([a, launch(S, [200 + S, 404 + S])])) == 2            # one operand elsewhere
    assert len(merge_launches([a, launch(S, [200 + S, 400 + S], scalar=1001)])) == 2  # another scalar
    assert len(merge_launches([a, launch(S + 4, [204 + S, 404 + S])])) == 2        # a gap in the output
    other = replace(launch(S, [200 + S, 400 + S]), attrs={"program": PROGRAM[:1]})
    assert len(merge_launches([a, other])) == 2                                    # another program
    full = launch(S, [200 + S, 400 + S])
    broadcast = replace(full, ins=(*full.ins[:2], f32(400 + S, (3,))))
    assert len(merge_launches([a, broadcast])) == 2                      # not full-size, not a scalar


def test_a_join_computes_what_its_launches_did():
    rng = np.random.default_rng(0)
    arena = rng.standard_normal(1001)
    for start in (0, 200, 400):  # the padding after the first tensors: zero, as in a plan's arena
        arena[start + 6:start + S] = 0.0
    launches = [launch(0, [200, 400]), launch(S, [200 + S, 400 + S], n=8)]

    def run(ls):
        memory = arena.copy()
        view = lambda b: memory[b.offset // 4:b.offset // 4 + int(np.prod(b.shape))].reshape(b.shape)  # noqa: E731
        for ln in ls:
            view(ln.out)[...] = REGISTRY[ln.op].ref(ln.attrs, *(view(b) for b in ln.ins))
        return memory
    separate, joined = run(launches), run(merge_launches(launches))
    np.testing.assert_array_equal(joined, separate)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_the_optimizer_runs_as_one_launch(dtype):
    """m, v, the parameters and (bf16) their copies, each over its whole region, written over
    the old values: one pass that reads the gradients, moments and weights once."""
    data = compile_model(ROOT / "model.py", [f"dtype={dtype}"], log=lambda *a: None).data
    launches = data["programs"]["train"].launches
    (optimizer,) = [ln for ln in launches if "tensors" in ln.attrs]
    assert optimizer is launches[-1] and optimizer.op == "fused_multi"
    regions = data["arena"]["regions"]
    state, copies = regions["state"][0], regions.get("copies", [None])[0]
    starts = [state, state + regions["state"][1] // 2, 0] + ([copies] if dtype == "bf16" else [])
    assert [b.offset for b in optimizer.outs] == starts  # m over m, v over v, weights, copies
    n_params = sum(int(np.prod(t["shape"])) for t in data["tensors"] if t["kind"] == "param")
    assert all(np.prod(b.shape) >= n_params for b in optimizer.outs)
    assert not [ln for ln in launches if ln.op == "copy"]


def test_adamw_decays_the_matrices_in_one_launch_and_updates_the_rest_in_another():
    """AdamW decays tensors of rank 2 and up, not the rest: two updates that compute different
    things. The decayed parameters lie first, in the model's order, then the rest, so the update is
    two launches whatever the depth, the first over the decayed ones' whole range. The weights'
    order in the plan, which initial weights are drawn in, is still the model's."""
    common = ["dtype=bf16", "optimizer=adamw", "n_layer=3"]
    decayed = compile_model(ROOT / "model.py", [*common, "weight_decay=0.1"], log=lambda *a: None).data
    plain = compile_model(ROOT / "model.py", [*common, "weight_decay=0"], log=lambda *a: None).data
    params = [t for t in decayed["tensors"] if t["kind"] == "param"]
    assert [t["name"] for t in params] == [t["name"] for t in plain["tensors"] if t["kind"] == "param"]
    ranked = sorted(params, key=lambda t: t["offset"])
    n_matrices = sum(len(t["shape"]) >= 2 for t in params)
    assert all(len(t["shape"]) >= 2 for t in ranked[:n_matrices]) and 0 < n_matrices < len(params)
    updates = [ln for ln in decayed["programs"]["train"].launches if ln.op == "fused_multi"]
    assert [ln.attrs["tensors"] for ln in updates] == [n_matrices, len(params) - n_matrices]
    last = ranked[n_matrices - 1]
    weights = updates[0].outs[2]
    assert weights.offset == 0 and weights.shape == ((last["offset"] + 4 * int(np.prod(last["shape"]))) // 4,)
    (one,) = [ln for ln in plain["programs"]["train"].launches if ln.op == "fused_multi"]
    assert one.attrs["tensors"] == len(params)


def cast(out: int, src: int, n: int) -> Launch:
    """A float32 tensor's cast into a bf16 buffer; offsets in bytes."""
    return Launch(op="cast", kind="elementwise", out=Buffer("bf16", out, (n,)), ins=(Buffer("f32", src, (n,)),),
                  attrs={"dtype": "bf16"}, node=out, where="optimizer")


def test_casts_of_weights_into_their_copies_join_at_the_weights_steps():
    """A bf16 copy lies as many elements into its region as its float32 weight into the params
    region: 100 floats take a 512-byte slot, so the next weight and the next copy both start 128
    elements on (256 bytes into the copies). Anywhere else is not the next copy."""
    (joined,) = merge_launches([cast(0, 4096, 100), cast(256, 4096 + 512, 64)])
    assert joined.out == Buffer("bf16", 0, (192,)) and joined.ins == (Buffer("f32", 4096, (192,)),)
    assert joined.attrs == {"dtype": "bf16", "tensors": 2}
    assert len(merge_launches([cast(0, 4096, 100), cast(512, 4096 + 512, 64)])) == 2  # a copy skipped
    assert len(merge_launches([cast(0, 4096, 100), cast(256, 4096 + 1024, 64)])) == 2  # a weight skipped
    assert len(merge_launches([cast(0, 4096, 128), replace(cast(256, 4096 + 512, 64), attrs={"dtype": "f32"})])) == 2
