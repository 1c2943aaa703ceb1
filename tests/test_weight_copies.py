"""A bf16 plan's weight copies (passes/weight_copies.py, runtime/weight_copies.py): every program
reads them, the optimizer's update writes them in one launch, and a backend refreshes them when
the weights are written from outside a program."""
import ml_dtypes
import numpy as np

from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.plan import CAST_WEIGHTS, Buffer, Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import Trainer, init_params
from tests.conftest import ROOT

SMALL = ["n_layer=2", "n_head=2", "n_embd=64", "block_size=32", "batch_size=4", "dtype=bf16", "lr=1e-3"]


def plan_of(*overrides) -> Plan:
    return Plan(compile_model(ROOT / "model.py", [*SMALL, *overrides], log=lambda *a: None).data, "test")


def trainer(plan: Plan, seed: int = 0) -> Trainer:
    phrase = np.random.default_rng(0).integers(0, plan.config["vocab_size"], 50)
    tokens = np.tile(phrase, 40).astype(np.int32)
    t = Trainer(plan, NumpyBackend(plan), SequentialSampler(tokens, plan.config["batch_size"], plan.config["block_size"]))
    t.set_weights(init_params(plan, seed))
    return t


def copies_match_weights(backend, plan: Plan) -> bool:
    return all(np.array_equal(backend.get_tensor(f"{t['name']}.bf16").astype(np.float32),
                              backend.get_tensor(t["name"]).astype(ml_dtypes.bfloat16).astype(np.float32))
               for t in plan.params)


def test_the_training_step_reads_the_copies_and_its_update_writes_them_in_one_launch():
    plan = plan_of()
    launches = plan.program("train").launches
    start, size = plan.data["arena"]["regions"]["copies"]
    params_start, params_size = plan.data["arena"]["regions"]["params"]
    writes = [b for ln in launches for b in ln.outputs if start <= b.offset < start + size]
    # the update's last result, over every weight: the cast of the new weight (fuse.py step 6)
    assert writes == [Buffer("bf16", start, (size // 2,))] and writes[0] is launches[-1].outs[-1]
    assert launches[-1].attrs["program"][-1][0] == "cast"
    assert not [ln for ln in launches if ln.op == "cast" and ln.ins[0].offset < params_start + params_size]
    assert not [ln for ln in launches if ln.op == "copy"]  # each copy is written over itself
    gemm_operands = [b.offset for ln in launches if ln.kind == "matmul" for b in ln.ins]
    assert any(start <= off < start + size for off in gemm_operands)  # the weights, in bf16
    assert not any(params_start <= off < params_start + params_size for off in gemm_operands)
    assert len(plan.program(CAST_WEIGHTS).launches) == 1
    assert CAST_WEIGHTS not in plan_of("dtype=f32").data["programs"]


def test_the_copies_the_update_writes_are_the_casts_of_the_new_weights():
    """Steps whose copies come from the update give the bits of steps whose copies are made
    afresh from the weights before each step, and the copies always equal the weights' casts."""
    plan = plan_of()
    kept, fresh = trainer(plan), trainer(plan)
    for _ in range(3):
        a = next(kept.steps(1))["loss"]
        fresh.backend.weights_written()  # as after a checkpoint: cast_weights runs first
        b = next(fresh.steps(1))["loss"]
        assert a == b and copies_match_weights(kept.backend, plan)
    for t in plan.params:
        np.testing.assert_array_equal(kept.backend.get_tensor(t["name"]), fresh.backend.get_tensor(t["name"]))


def test_weights_written_from_outside_are_cast_before_the_next_program():
    plan = plan_of()
    a, b = trainer(plan, seed=1), trainer(plan, seed=2)
    next(a.steps(1))
    a.set_weights(b.weights())
    assert not copies_match_weights(a.backend, plan)  # the refresh waits for the next program
    feeds = {"tokens": np.zeros((4, 32), np.int32), "targets": np.ones((4, 32), np.int32)}
    assert a.backend.run("eval", feeds)["loss"] == b.backend.run("eval", feeds)["loss"]
    assert copies_match_weights(a.backend, plan)


def test_an_accumulating_plan_writes_the_copies_in_its_update_program():
    plan = plan_of("grad_accum=2")
    copies = plan.data["arena"]["regions"]["copies"][0]
    assert plan.program("update").launches[-1].outs[-1].offset == copies
    assert not [ln for ln in plan.program("accumulate").launches if ln.op == "cast"
                and ln.ins[0].offset < plan.data["arena"]["regions"]["grads"][0]]
    t = trainer(plan)
    for _ in range(2):
        next(t.steps(1))
        assert copies_match_weights(t.backend, plan)
