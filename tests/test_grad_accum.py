"""Gradient accumulation: K runs of "accumulate" over B rows each and one "update" are one step over
K x B rows, in a work region the size of one micro-batch's."""
import numpy as np
import pytest

from graphgpt import optim, schedule
from graphgpt.codegen import compile_cuda
from graphgpt.compiler import compile_model
from graphgpt.ops import REGISTRY
from graphgpt.passes.multi_tensor import merge_launches
from graphgpt.plan import Buffer, Launch, Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import init_params
from tests.conftest import ROOT, TINY

MICRO = 2  # rows of one micro-batch
MODEL = [s for s in TINY if not s.startswith("batch_size=")] + ["lr=1e-2"]  # steps large enough to matter


def compiled(batch_size: int, grad_accum: int, fusion: bool = True) -> Plan:
    overrides = MODEL + [f"batch_size={batch_size}", f"grad_accum={grad_accum}"]
    return Plan(compile_model(ROOT / "model.py", overrides, fusion=fusion, log=lambda *a: None).data, "test")


def backend(plan: Plan) -> NumpyBackend:
    be = NumpyBackend(plan, np.float64)
    for name, value in init_params(plan, seed=0).items():
        be.set_tensor(name, value)
    return be


def collectives(program: dict) -> list[dict]:
    return [ln for ln in program.launches if REGISTRY[ln.op].kind == "collective"]


@pytest.mark.parametrize("k,fusion", [(2, True), (3, True), (2, False)], ids=["k2", "k3", "k2-unfused"])
def test_accumulated_micro_batches_step_as_one_batch(k, fusion):
    small, big = compiled(MICRO, k, fusion), compiled(MICRO * k, 1, fusion)
    assert set(small.data["programs"]) == {"accumulate", "update", "eval", "generate", "decode"}
    be_small, be_big = backend(small), backend(big)
    cfg, rng = big.optimizer, np.random.default_rng(1)
    V, T = big.config["vocab_size"], big.config["block_size"]
    for step in range(3):  # from the second step on, accumulate=0 must overwrite the last step's sums
        x, y = rng.integers(0, V, (MICRO * k, T)), rng.integers(0, V, (MICRO * k, T))
        scalars = schedule.step_scalars(cfg, step)
        feeds = {name: scalars[name] for name in optim.scalar_inputs(cfg)}
        one = be_big.run("train", {"tokens": x, "targets": y, **feeds})
        rows = [slice(i * MICRO, (i + 1) * MICRO) for i in range(k)]
        losses = [be_small.run("accumulate", {"tokens": x[r], "targets": y[r], "accumulate": float(i > 0)})["loss"]
                  for i, r in enumerate(rows)]
        update = be_small.run("update", feeds)
        np.testing.assert_allclose(np.mean(losses), one["loss"], rtol=1e-12)
        np.testing.assert_allclose(update["grad_norm"], one["grad_norm"], rtol=1e-9)
        assert [t["name"] for t in small.tensors] == [t["name"] for t in big.tensors]  # params, Adam m and v
        for t in (t for t in big.tensors if t["kind"] != "cache"):  # generation's caches are scratch
            expected = be_big.get_tensor(t["name"])
            # atol: the key bias's gradient is zero up to rounding (a softmax ignores a shift of its row)
            np.testing.assert_allclose(be_small.get_tensor(t["name"]), expected, rtol=1e-9,
                                       atol=1e-9 * np.abs(expected).max(), err_msg=f"step {step}: {t['name']}")


def test_the_update_averages_over_ranks_and_the_accumulate_program_does_not():
    data = compiled(MICRO, 2).data
    accumulate, update = data["programs"]["accumulate"], data["programs"]["update"]
    assert collectives(accumulate) == []
    n_params = sum(t["kind"] == "param" for t in data["tensors"])
    assert len(collectives(update)) == n_params
    grads_start, grads_size = data["arena"]["regions"]["grads"]
    assert all(grads_start <= ln.out.offset < grads_start + grads_size for ln in collectives(update))
    assert set(accumulate.inputs) == {"tokens", "targets", optim.ACCUMULATE}
    assert set(accumulate.outputs) == {"loss"}
    assert set(update.inputs) == set(optim.scalar_inputs(data["optimizer"]))
    assert set(update.outputs) == {"grad_norm"}


def test_accumulators_are_the_gradient_slots():
    """The accumulators are no tensors of their own: the params' "grad" offsets name them."""
    plan = compiled(MICRO, 2)
    be = backend(plan)
    V, T = plan.config["vocab_size"], plan.config["block_size"]
    batch = np.random.default_rng(2).integers(0, V, (2, MICRO, T))
    assert not any(name.startswith("grad_acc") for name in (t["name"] for t in plan.tensors))
    be.run("accumulate", {"tokens": batch[0], "targets": batch[1], "accumulate": 0.0})
    first = {t["name"]: be.get_tensor(t["name"], grad=True) for t in plan.params}
    be.run("accumulate", {"tokens": batch[0], "targets": batch[1], "accumulate": 1.0})
    for name, g in first.items():  # the same micro-batch twice: twice its share
        np.testing.assert_allclose(be.get_tensor(name, grad=True), 2 * g, rtol=1e-12, err_msg=name)


def test_work_memory_is_one_micro_batch():
    """Four micro-batches take one micro-batch's work memory, not four. The accumulate program
    also holds each new gradient in a buffer of its own until it is added into its slot (train
    writes it into the slot): in this tiny model that is a few percent more."""
    peaks = {k: max(p.memory["work_peak"] for p in compiled(4, k).data["programs"].values()) for k in (1, 4)}
    assert abs(peaks[4] - peaks[1]) <= 0.1 * peaks[1], peaks


def test_grad_accum_1_is_the_one_program_plan():
    data = compiled(MICRO, 1).data
    assert set(data["programs"]) == {"train", "eval", "generate", "decode"}
    assert data["optimizer"]["grad_accum"] == 1


def test_launches_over_work_buffers_do_not_join():
    """Accumulations of neighbouring gradients could line up in the work region as well; joined,
    they would write a work buffer's leftover padding into the gradient region's zero padding,
    which the norm sums."""
    def accumulation(acc: int, grad: int) -> Launch:
        program = (("mul", (), (-1, -2)), ("add", (), (0, -3)))
        return Launch(op="fused", kind="elementwise", out=Buffer("f32", acc, (6,)),
                      ins=(Buffer("f32", acc, (6,)), Buffer("f32", 900, ()), Buffer("f32", grad, (6,))),
                      attrs={"program": program}, node=acc, where="gradient accumulation")
    pair = [accumulation(0, 1024), accumulation(256, 1280)]  # byte offsets: 256-byte slots
    assert len(merge_launches(pair)) == 1
    assert len(merge_launches(pair, work_start=1024)) == 2


def test_the_accumulating_plans_kernels_compile():
    compiled = compile_model(ROOT / "model.py", MODEL + [f"batch_size={MICRO}", "grad_accum=2"], log=lambda *a: None)
    for program in ("accumulate", "update"):
        for launch in compiled.data["programs"][program].launches:
            assert launch.cuda is not None or REGISTRY[launch.op].kind == "collective", launch.op
    for path, source in compiled.files.items():
        if path.startswith("kernels/"):
            assert compile_cuda(source, "sm_90"), path


def test_the_trainer_steps_k_micro_batches_as_one_batch():
    """Trainer over a grad_accum=2 plan: the same losses and weights as over the K=1 plan with twice
    the rows (the sequential sampler hands out the same rows in the same order), and tokens/s counts
    every micro-batch."""
    from graphgpt.data import SequentialSampler
    from graphgpt.train import Trainer
    small, big = compiled(MICRO, 2), compiled(MICRO * 2, 1)
    T = big.config["block_size"]
    tokens = np.random.default_rng(2).integers(0, big.config["vocab_size"], 40 * T + 1)
    runs = {}
    for name, plan in (("small", small), ("big", big)):
        trainer = Trainer(plan, NumpyBackend(plan, np.float64), SequentialSampler(tokens, plan.config["batch_size"], T))
        runs[name] = (list(trainer.steps(3)), trainer.weights())
    for a, b in zip(runs["small"][0], runs["big"][0]):
        assert a["step"] == b["step"]
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-12)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-9)
        assert a["tokens_per_s"] * a["ms"] / 1e3 == pytest.approx(2 * MICRO * T)
    for name, value in runs["big"][1].items():
        np.testing.assert_allclose(runs["small"][1][name], value, rtol=1e-6, atol=1e-7, err_msg=name)
