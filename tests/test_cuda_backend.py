"""The CUDA backend against the NumPy backend: whole training steps, graph on and off."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.plan import Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import Trainer
from tests.conftest import ROOT, run_cli, step_records

pytestmark = pytest.mark.gpu
SMALL = ["n_layer=2", "n_head=4", "n_embd=128", "block_size=64", "batch_size=4"]


def small_plan(*extra):
    c = compile_model(ROOT / "model.py", [*SMALL, *extra], log=lambda *a: None)
    return Plan(c.data, "test", {k: v for k, v in c.files.items() if k.startswith("kernels/")})


def train(backend, plan, steps=3):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, plan.config["vocab_size"], 10_000).astype(np.int32)
    trainer = Trainer(plan, backend, SequentialSampler(tokens, plan.config["batch_size"], plan.config["block_size"]))
    losses = [m["loss"] for m in trainer.steps(steps)]
    return losses, {t["name"]: backend.get_tensor(t["name"]) for t in plan.params}


def informative(plan) -> dict[str, np.ndarray]:
    """Per parameter, the elements whose gradient is not zero in exact arithmetic.

    The key part of c_attn's bias never gets a gradient (softmax ignores a constant added to all of
    a query's scores): in float32 it gets rounding noise, which Adam scales up to about lr per step,
    in NumPy and CUDA alike. Comparing it would compare noise.
    """
    backend = NumpyBackend(plan, np.float64)
    Trainer(plan, backend, SequentialSampler(np.zeros(1000, np.int32), 4, 64))
    tokens = np.random.default_rng(0).integers(0, plan.config["vocab_size"], (4, 64))
    backend.run("train", {"tokens": tokens, "targets": tokens, "step_size": 0.0})
    grads = {t["name"]: np.abs(backend.get_tensor(t["name"], grad=True)) for t in plan.params}
    return {name: g > 1e-9 * g.max() for name, g in grads.items()}


def assert_params_close(params, ref_params, informative_masks):
    for name, keep in informative_masks.items():
        ref, got = ref_params[name][keep], params[name][keep]
        err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert err <= 1e-4, f"{name}: relative error {err:.2e}"


def test_accumulated_steps_match_numpy():
    """grad_accum=3: more micro-batches than the backend has result slots per program, so the
    trainer must read each micro-batch's loss before its slot is reused."""
    from graphgpt.runtime.cuda_backend import CudaBackend
    plan = small_plan("grad_accum=3")
    ref_losses, ref_params = train(NumpyBackend(plan, np.float64), plan)
    losses, params = train(CudaBackend(plan), plan)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    assert_params_close(params, ref_params, informative(small_plan()))


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "no-graph"])
def test_three_steps_match_numpy(graph):
    from graphgpt.runtime.cuda_backend import CudaBackend
    plan = small_plan()
    # The reference in float64: the error measured is the CUDA backend's own, not the sum of two
    # float32 roundings in different summation orders.
    ref_losses, ref_params = train(NumpyBackend(plan, np.float64), plan)
    losses, params = train(CudaBackend(plan, graph=graph), plan)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    assert_params_close(params, ref_params, informative(plan))


def test_generation_matches_numpy():
    from graphgpt.runtime.cuda_backend import CudaBackend
    plan = small_plan()
    tokens = np.random.default_rng(1).integers(0, plan.config["vocab_size"], (1, plan.config["block_size"]))
    outs = []
    for backend in (NumpyBackend(plan), CudaBackend(plan)):
        Trainer(plan, backend, SequentialSampler(np.zeros(1000, np.int32), 4, 64))  # same initial weights
        outs.append(backend.run("generate", {"tokens": tokens})["logits"])
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-4, atol=1e-5)


def test_evaluation_matches_numpy():
    """The forward-only eval program, over several batches queued ahead of their reads."""
    from graphgpt.runtime.cuda_backend import CudaBackend
    from graphgpt.train import evaluate
    plan = small_plan()
    rng = np.random.default_rng(3)
    B, T, V = plan.config["batch_size"], plan.config["block_size"], plan.config["vocab_size"]
    batches = [(rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))) for _ in range(5)]
    losses = []
    for backend in (NumpyBackend(plan, np.float64), CudaBackend(plan)):
        Trainer(plan, backend, SequentialSampler(np.zeros(1000, np.int32), B, T))  # same initial weights
        losses.append(evaluate(backend, batches))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_seed_workload_cuda_matches_numpy(tmp_path, seed_corpus):
    """The seed's 50 steps on CUDA reach the seed's loss, and every stretch of them is checked
    against the NumPy oracle: NumPy starts from CUDA's own state at steps 0, 10, 20, 30 and 40
    (its checkpoints) and takes the next two steps, whose losses must agree within 1e-3. The oracle's
    stretches run side by side, so the check costs a few NumPy steps of time, not fifty."""
    plan = tmp_path / "plan"
    assert run_cli(str(ROOT / "tools" / "compile.py"), str(ROOT / "model.py"), "--data", str(seed_corpus),
                   "--out", str(plan)).returncode == 0
    common = ["-m", "graphgpt.run", "--plan", str(plan), "--data", str(seed_corpus), "--decay-steps", "10000",
              "--generate", "0"]
    saves = tmp_path / "cuda_run"
    proc = run_cli(*common, "--steps", "50", "--backend", "cuda", "--log", str(tmp_path / "cuda.jsonl"),
                   "--save", str(saves), "--save-every", "10", "--keep", "0")
    assert proc.returncode == 0, proc.stderr
    cuda = {r["step"]: r["loss"] for r in step_records(tmp_path / "cuda.jsonl")}
    assert cuda[50] <= 0.94

    stretch = 2
    oracles = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    for start in (0, 10, 20, 30, 40):
        home = tmp_path / f"numpy_from_{start}"
        home.mkdir()
        if start:  # CUDA's checkpoint, alone in a directory of its own, is the one resumed
            shutil.copytree(saves / f"step_{start:08d}", home / f"step_{start:08d}")
        log = tmp_path / f"numpy_{start}.jsonl"
        args = [*common, "--steps", str(start + stretch), "--backend", "numpy", "--log", str(log),
                *(["--resume", str(home)] if start else [])]
        oracles[start] = log, subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for start, (log, oracle) in oracles.items():
        _, err = oracle.communicate(timeout=900)
        assert oracle.returncode == 0, err
        numpy = {r["step"]: r["loss"] for r in step_records(log)}
        steps = range(start + 1, start + stretch + 1)
        assert sorted(numpy) == list(steps)
        np.testing.assert_allclose([cuda[s] for s in steps], [numpy[s] for s in steps], atol=1e-3,
                                   err_msg=f"NumPy from CUDA's step {start}")


def test_profile_times_every_launch():
    from graphgpt.runtime.cuda_backend import CudaBackend
    from graphgpt.runtime.profile import format_profile, profile
    plan = small_plan()
    backend = CudaBackend(plan)
    tokens = np.random.default_rng(0).integers(0, plan.config["vocab_size"], (4, 64)).astype(np.int32)
    rows = profile(backend, "train", {"tokens": tokens, "targets": tokens, "step_size": 0.0})
    assert sum(r["calls"] for r in rows) == len(backend.programs["train"].launches)
    assert all(r["ms"] > 0 for r in rows)
    assert any(r["name"].startswith("gemm") and r["flops"] for r in rows)
    text = format_profile(rows, {"bandwidth": 4e12, "flops": 50e12})
    assert text.splitlines()[-1].startswith("total")


FP8_SETTINGS = ["vocab_size=128", "fp8=lm_head.weight,h.*.mlp.c_fc.weight"]


@pytest.mark.parametrize("extra,grad_rtol", [([], 2.0**-7), (FP8_SETTINGS, 2.0**-5),
                                             ([*FP8_SETTINGS, "fp8_grad=lm_head.weight"], 2.0**-4)],
                         ids=["bf16", "fp8", "fp8_grad"])
def test_bf16_steps_match_the_numpy_oracle(extra, grad_rtol):
    """A bf16 plan on CUDA against the NumPy backend running the same plan, which rounds to bf16 at
    the same points (every store of a bf16 buffer, and the casts inside fused chains; with FP8
    products, their operands to E4M3 at the same power-of-two scales). Tolerances,
    from bf16's 8-bit mantissa (one rounding step: 2^-8 relative):
    - Both backends compute in float32 and differ in summation order only, so a value lands on the
      other bf16 neighbour only near a rounding boundary, and then by one step. The loss, a mean
      over every position, agrees within 2^-8 (measured: 3e-5).
    - Such flips feed every later layer, and a weight's gradient sums over the whole batch: the
      first step's gradients agree within two steps, 2^-7, norm-relative (measured: 0.48% at worst).
    - Adam moves every element by about +-lr whatever its gradient's size, so an element whose
      gradient lies within 2^-7 of the tensor's gradient scale from zero may move either way. For
      gradients spread like a Gaussian that is under 2^-7 of the elements, each off by up to
      2 lr: what three steps add to each master weight agrees within 2 * sqrt(2^-7) = 0.18 of its
      norm (measured: 0.087 at worst).
    - With FP8 products, an input that lands on the other bf16 neighbour crosses an E4M3 rounding
      boundary about once in 2^4 flips, and then moves by an E4M3 step, 2^4 bf16 steps: in the
      norm, sqrt(2^-4) 2^4 = 4 times what bf16's flips give, so the gradients agree within 2^-5
      and the updates within 2 * sqrt(2^-5) (measured on an H100: 1.1e-2 and 0.124 at worst; the
      loss within 8e-5, under 2^-8).
    - With the classifier's input gradient on E5M2 as well (2 bits of mantissa), a flip of its
      bf16 gradient crosses an E5M2 boundary about once in 2^5, and then moves by 2^5 bf16 steps:
      sqrt(2^-5) 2^5 = 5.7 times bf16's, so within 2^-4 for the gradients."""
    from graphgpt.runtime.cuda_backend import CudaBackend
    plan = small_plan("dtype=bf16", *extra)
    tokens = np.random.default_rng(0).integers(0, plan.config["vocab_size"], 10_000).astype(np.int32)
    runs = {}
    for name, backend in (("oracle", NumpyBackend(plan, np.float32)), ("cuda", CudaBackend(plan))):
        trainer = Trainer(plan, backend, SequentialSampler(tokens, plan.config["batch_size"], plan.config["block_size"]))
        start = {t["name"]: backend.get_tensor(t["name"]) for t in plan.params}
        losses = [m["loss"] for m in trainer.steps(1)]
        grads = {t["name"]: backend.get_tensor(t["name"], grad=True) for t in plan.params}
        losses += [m["loss"] for m in trainer.steps(2)]
        runs[name] = losses, grads, {k: backend.get_tensor(k) - v for k, v in start.items()}
    (ref_losses, ref_grads, ref_updates), (losses, grads, updates) = runs["oracle"], runs["cuda"]
    np.testing.assert_allclose(losses, ref_losses, rtol=2.0**-8)
    masks = informative(small_plan(*extra[:1]))  # c_attn's key bias has no gradient but rounding noise

    def errors(got: dict, ref: dict) -> dict:
        return {k: float(np.linalg.norm(got[k][m] - ref[k][m]) / np.linalg.norm(ref[k][m])) for k, m in masks.items()}
    grad_err, update_err = errors(grads, ref_grads), errors(updates, ref_updates)
    print(f"bf16 CUDA vs oracle: losses {losses} vs {ref_losses}; worst gradient error "
          f"{max(grad_err.values()):.2e}, worst update error {max(update_err.values()):.2e}")
    assert max(grad_err.values()) <= grad_rtol, grad_err
    assert max(update_err.values()) <= 2 * np.sqrt(grad_rtol), update_err


def test_bf16_seed_workload_is_within_2_percent_of_fp32(tmp_path, seed_corpus):
    """The seed workload (default model, the seed corpus, 50 steps, the seed's sequential loader)
    compiled with dtype=bf16 ends within 2% of the float32 plan's loss. The two compile and train
    side by side, each in its own process."""
    def started(*args):
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def finished(proc):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err

    dtypes = ("f32", "bf16")
    for proc in [started(str(ROOT / "tools" / "compile.py"), str(ROOT / "model.py"), "--data", str(seed_corpus),
                         "--set", f"dtype={dtype}", "--out", str(tmp_path / dtype)) for dtype in dtypes]:
        finished(proc)
    for proc in [started("-m", "graphgpt.run", "--plan", str(tmp_path / dtype), "--data", str(seed_corpus),
                         "--steps", "50", "--decay-steps", "10000", "--sampler", "sequential", "--backend", "cuda",
                         "--log", str(tmp_path / f"{dtype}.jsonl"), "--generate", "0") for dtype in dtypes]:
        finished(proc)
    final = {dtype: step_records(tmp_path / f"{dtype}.jsonl")[-1]["loss"] for dtype in dtypes}
    print(f"seed workload, final loss at step 50: {final}")
    assert abs(final["bf16"] - final["f32"]) <= 0.02 * final["f32"]


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
def test_the_side_stream_trains_bit_for_bit_as_one_stream(graph):
    """The gradient branch's kernels on the side stream (passes/streams.py) give the same bits as
    the same plan with every launch on the main stream."""
    from dataclasses import replace

    from graphgpt.runtime.cuda_backend import CudaBackend
    plan = small_plan("dtype=bf16")
    assert any(x.stream for x in plan.programs["train"].launches)
    one = dict(plan.data, programs={name: replace(program, launches=tuple(replace(x, stream=0, waits=())
                                                                         for x in program.launches))
                                    for name, program in plan.programs.items()})
    one_stream = Plan(one, "one stream", plan.kernels)
    losses, params = train(CudaBackend(plan, graph=graph), plan, steps=4)
    ref_losses, ref_params = train(CudaBackend(one_stream, graph=graph), one_stream, steps=4)
    assert losses == ref_losses
    for name, value in ref_params.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
