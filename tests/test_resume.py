"""Checkpoints and exact resume, as a user runs them: real processes, real files, real kill -9.

10 steps, a resume and 10 more give the same losses and parameters, bit for bit, as 20 steps in
one go; so does a run killed 20 times at random moments and resumed after each kill.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from graphgpt.checkpoint import CheckpointDir
from graphgpt.plan import load as load_plan
from tests.conftest import COMPILE, MPI_ENV, ROOT, TINY, run_cli, sets

# What must repeat exactly; ms and tokens/s are timings. A run also evaluates at its last step, so
# a run stopped at step 10 has an evaluation there that an uninterrupted one has not.
EXACT = ("step", "loss", "lr", "grad_norm")
EVALUATED = ("train_loss", "val_loss")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    words = " ".join(f"w{i % 37} q{i % 11}" for i in range(600))
    path.write_text(words + ". the end.")
    return path


def compile_plan(out, corpus, *extra):
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(out), "--data", str(corpus),
                   *sets(TINY + ["lr=3e-3", *extra]))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def plan(tmp_path_factory, corpus):
    return compile_plan(tmp_path_factory.mktemp("plan") / "p", corpus)


def train(plan, corpus, *args, launcher=(sys.executable,), timeout=300):
    cmd = [*launcher, "-m", "graphgpt.run", "--plan", str(plan), "--data", str(corpus), "--backend", "numpy",
           "--generate", "0", "--val-fraction", "0.2", "--eval-every", "4", "--eval-batches", "2", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=MPI_ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def records(log):
    """The step records, after checking the header: the log's first line, and its only one."""
    lines = list(map(json.loads, log.read_text().splitlines()))
    assert lines[0]["graphgpt_log"] == 1 and not any("graphgpt_log" in r for r in lines[1:])
    return [{k: r[k] for k in EXACT if k in r} for r in lines[1:]]


def evaluations(log):
    return {r["step"]: tuple(r[k] for k in EVALUATED)
            for r in map(json.loads, log.read_text().splitlines()) if "val_loss" in r}


def assert_same_log(resumed, whole):
    assert records(resumed) == records(whole)
    assert evaluations(whole).items() <= evaluations(resumed).items()
    assert len(evaluations(whole)) > 2


def final_state(save_dir, plan):
    return CheckpointDir(save_dir).load(load_plan(plan).digest)


def assert_same_state(a, b):
    assert a.step == b.step
    for name in (*a.params, *a.optimizer):
        got = b.params.get(name, b.optimizer.get(name))
        want = a.params.get(name, a.optimizer.get(name))
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name


# bf16 with the classifier's and each layer's first MLP product in FP8 (passes/fp8.py)
FP8 = ["dtype=bf16", "vocab_size=64", "fp8=lm_head.weight,h.*.mlp.c_fc.weight"]


@pytest.mark.parametrize("settings", [[], ["grad_accum=2"], ["grad_accum=2", "dropout=0.2"], FP8],
                         ids=["plain", "accumulating", "accumulating-dropout", "fp8"])
def test_ten_resume_ten_equals_twenty(tmp_path, plan, corpus, settings):
    """With dropout too: the resumed run draws the masks the uninterrupted one drew."""
    if settings:
        plan = compile_plan(tmp_path / "variant", corpus, *settings)
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(plan, corpus, "--steps", "20", "--save", str(whole), "--log", str(tmp_path / "whole.jsonl"))
    # the first half starts with the whole run's schedule; its checkpoint keeps it for the second
    first = train(plan, corpus, "--steps", "10", "--decay-steps", "20", "--save", str(split),
                  "--log", str(tmp_path / "split.jsonl"))
    assert "step_00000010" in first.stdout
    second = train(plan, corpus, "--steps", "20", "--resume", str(split), "--log", str(tmp_path / "split.jsonl"))
    assert "resumed from" in second.stdout and "at step 10" in second.stdout
    assert_same_log(tmp_path / "split.jsonl", tmp_path / "whole.jsonl")
    header = json.loads((tmp_path / "split.jsonl").read_text().splitlines()[0])
    assert header["run"] == final_state(split, plan).run != final_state(whole, plan).run
    assert [r["step"] for r in records(tmp_path / "whole.jsonl")][:2] == [0, 1]  # the step-0 evaluation
    assert_same_state(final_state(whole, plan), final_state(split, plan))
    assert "best val loss" in second.stdout


def test_resume_under_mpiexec(tmp_path, corpus, tmp_path_factory):
    if shutil.which("mpiexec") is None:
        pytest.skip("needs mpiexec (pip install mpich)")
    plan = compile_plan(tmp_path / "plan", corpus)
    mpi = ("mpiexec", "-n", "2", sys.executable, "-m", "mpi4py")
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(plan, corpus, "--steps", "20", "--save", str(whole), "--log", str(tmp_path / "w.jsonl"), launcher=mpi)
    train(plan, corpus, "--steps", "10", "--decay-steps", "20", "--save", str(split), "--log", str(tmp_path / "s.jsonl"),
          launcher=mpi)
    train(plan, corpus, "--steps", "20", "--resume", str(split), "--log", str(tmp_path / "s.jsonl"), launcher=mpi)
    assert_same_log(tmp_path / "s.jsonl", tmp_path / "w.jsonl")
    assert_same_state(final_state(whole, plan), final_state(split, plan))


def test_twenty_kills_then_the_same_run(tmp_path, plan, corpus):
    """kill -9 at random moments, half of them while a checkpoint is being written; after each
    the latest checkpoint loads and the run resumes with the same command line."""
    steps, every = 3000, 10
    reference = tmp_path / "reference"
    train(plan, corpus, "--steps", str(steps), "--save", str(reference), "--save-every", str(every),
          "--log", str(tmp_path / "reference.jsonl"))
    save, log = tmp_path / "killed", tmp_path / "killed.jsonl"
    cmd = [sys.executable, "-m", "graphgpt.run", "--plan", str(plan), "--data", str(corpus), "--backend", "numpy",
           "--generate", "0", "--val-fraction", "0.2", "--eval-every", "4", "--eval-batches", "2",
           "--steps", str(steps), "--save-every", str(every), "--resume", str(save), "--log", str(log)]
    rng, digest = random.Random(10), load_plan(plan).digest
    during_save, last = 0, 0
    for kill in range(20):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=MPI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kill % 2:  # kill as soon as a checkpoint is being written
            deadline = time.monotonic() + 30
            while not _saving(save) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.0005)
        else:
            time.sleep(rng.uniform(0.3, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        during_save += _saving(save)
        steps_saved = CheckpointDir(save).checkpoints()
        if steps_saved:
            state = CheckpointDir(save).load(digest)  # loads, whole, after every kill
            assert state.step >= last
            last = state.step
    assert last < steps, "every run finished before its kill: the test killed nothing"
    assert during_save > 0, "no kill landed during a save"
    train(plan, corpus, "--steps", str(steps), "--save-every", str(every), "--resume", str(save), "--log", str(log))
    assert_same_log(log, tmp_path / "reference.jsonl")
    assert_same_state(final_state(reference, plan), final_state(save, plan))
    assert not [p for p in save.iterdir() if p.name.startswith(".")], "a temporary file outlived the runs"


def _saving(save_dir) -> bool:
    try:
        return any(p.name.startswith(".") and p.name.endswith(".tmp") for p in os.scandir(save_dir))
    except FileNotFoundError:
        return False


@pytest.mark.gpu
@pytest.mark.parametrize("settings", [[], ["grad_accum=3"], ["dropout=0.2"], FP8], ids=["plain", "accumulating", "dropout", "fp8"])
def test_ten_resume_ten_equals_twenty_on_cuda_with_the_graph(tmp_path, plan, corpus, settings):
    if settings:
        plan = compile_plan(tmp_path / "variant", corpus, *settings)
    whole, split = tmp_path / "whole", tmp_path / "split"
    cuda = ("--backend", "cuda")
    train(plan, corpus, *cuda, "--steps", "20", "--save", str(whole), "--log", str(tmp_path / "w.jsonl"))
    train(plan, corpus, *cuda, "--steps", "10", "--decay-steps", "20", "--save", str(split),
          "--log", str(tmp_path / "s.jsonl"))
    train(plan, corpus, *cuda, "--steps", "20", "--resume", str(split), "--log", str(tmp_path / "s.jsonl"))
    assert_same_log(tmp_path / "s.jsonl", tmp_path / "w.jsonl")
    assert_same_state(final_state(whole, plan), final_state(split, plan))


@pytest.mark.parametrize("sig,said", [(signal.SIGTERM, "terminated by SIGTERM"), (signal.SIGINT, "interrupted"),
                                      (signal.SIGHUP, "terminated by SIGHUP")], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_during_a_save_leaves_no_temporary(tmp_path, plan, corpus, sig, said):
    """A run stopped by a signal (a scheduler's preemption, Ctrl-C, the terminal gone) while it
    writes a checkpoint finishes that checkpoint, then stops with one line: no temporary file
    outlives it."""
    save = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-m", "graphgpt.run", "--plan", str(plan), "--data", str(corpus),
                             "--backend", "numpy", "--generate", "0", "--steps", "100000", "--save", str(save),
                             "--save-every", "1"], cwd=ROOT, env=MPI_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (len(CheckpointDir(save).checkpoints()) >= 2 and _saving(save)) and time.monotonic() < deadline:
        time.sleep(0.0005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig and err.strip().splitlines() == [said], err
    assert not _saving(save), "a temporary outlived its process"
    steps = CheckpointDir(save).checkpoints()
    assert CheckpointDir(save).load(load_plan(plan).digest).step == steps[-1] >= 2
