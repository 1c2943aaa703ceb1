"""python -m graphgpt.run with bad input: one line, exit status 2, before any training, and every
file already on disk left as it was. Also the failures a run meets later: a diverging loss, a
closed stdout, an error on one of several MPI ranks."""
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from graphgpt.tensor_files import save_safetensors
from tests.conftest import COMPILE, MPI_ENV, ROOT, TINY, assert_user_error, run_cli, sets



@dataclass
class Ctx:
    plan: Path
    other_plan: Path
    corpus: Path
    checkpoint: Path  # a checkpoint directory of `plan`, at step 2
    tmp: Path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inputs")
    corpus = tmp / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    plans = []
    for name, extra in (("plan", []), ("other", ["n_embd=8"])):
        proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp / name), "--data", str(corpus),
                       *sets(TINY + extra))
        assert proc.returncode == 0, proc.stderr
        plans.append(tmp / name)
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plans[0]), "--data", str(corpus), "--steps", "2",
                   "--backend", "numpy", "--generate", "0", "--save", str(tmp / "ckpt"))
    assert proc.returncode == 0, proc.stderr
    return Ctx(plans[0], plans[1], corpus, tmp / "ckpt", tmp)


def file(ctx, name, content: bytes | str):
    path = ctx.tmp / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def vocab_size(plan) -> int:
    return json.loads((plan / "plan.json").read_text())["config"]["vocab_size"]


# (what is wrong, extra arguments given a Ctx, a fragment of the one error line)
CASES = [
    ("negative steps", lambda c: ["--steps", "-1"], "--steps must not be negative"),
    ("steps not a number", lambda c: ["--steps", "ten"], "'ten' is not an integer"),
    ("unknown option", lambda c: ["--stepz", "3"], "unrecognized arguments: --stepz"),
    ("negative seed", lambda c: ["--seed", "-1"], "--seed must not be negative"),
    ("temperature nan", lambda c: ["--temperature", "nan"], "--temperature must be a finite number >= 0"),
    ("temperature inf", lambda c: ["--temperature", "inf"], "--temperature must be a finite number >= 0"),
    ("negative temperature", lambda c: ["--temperature", "-0.5"], "--temperature must be a finite number >= 0"),
    ("negative top-k", lambda c: ["--top-k", "-3"], "--top-k must not be negative"),
    ("top-k without a temperature", lambda c: ["--top-k", "5"], "--top-k narrows sampling"),
    ("negative generate", lambda c: ["--generate", "-1"], "--generate must not be negative"),
    ("zero eval batches", lambda c: ["--eval-batches", "0"], "--eval-batches must be at least 1"),
    ("negative eval-every", lambda c: ["--eval-every", "-5"], "--eval-every must not be negative"),
    ("val fraction 1.5", lambda c: ["--val-fraction", "1.5"], "--val-fraction must lie strictly between 0 and 1"),
    ("val fraction 0", lambda c: ["--val-fraction", "0"], "--val-fraction must lie strictly between 0 and 1"),
    ("val data and fraction", lambda c: ["--val-data", str(c.corpus), "--val-fraction", "0.1"], "pass one"),
    ("unknown sampler", lambda c: ["--sampler", "shuffled"], "invalid choice: 'shuffled'"),
    ("resume and init-from", lambda c: ["--resume", str(c.checkpoint), "--init-from", str(c.checkpoint)],
     "pass one"),
    ("save-every without save", lambda c: ["--save-every", "5"], "--save-every needs a checkpoint directory"),
    ("negative keep", lambda c: ["--keep", "-1"], "--keep must not be negative"),
    ("prompt outside the vocabulary", lambda c: ["--prompt", "zebra crossing"], "--prompt"),
    ("log under a regular file", lambda c: ["--log", str(file(c, "afile", "x") / "m.jsonl")], "afile"),
    ("log that exists", lambda c: ["--log", str(file(c, "old.jsonl", '{"step": 1}\n'))], "already exists"),
    ("log is a directory", lambda c: ["--log", str(c.tmp)], "is a directory"),
    ("save under a regular file", lambda c: ["--save", str(file(c, "bfile", "x") / "ck")], "bfile"),
    ("save over another run's checkpoints", lambda c: ["--save", str(c.checkpoint)], "already holds checkpoints"),
    ("resume a checkpoint of another plan", lambda c: ["--resume", str(c.checkpoint), "--plan", str(c.other_plan)],
     "plan"),
    ("resume from a regular file", lambda c: ["--resume", str(file(c, "cfile", "x"))], "cfile"),
    ("resume with another seed", lambda c: ["--resume", str(c.checkpoint), "--seed", "5"], "differs from the checkpoint's seed"),
    ("resume with another sampler", lambda c: ["--resume", str(c.checkpoint), "--sampler", "sequential"], "sampler"),
    ("resume on other data", lambda c: ["--resume", str(c.checkpoint), "--data",
                                        str(file(c, "more.txt", "the quick brown fox. " * 60))], "same data"),
    ("init-from a missing file", lambda c: ["--init-from", str(c.tmp / "nope.safetensors")], "nope.safetensors"),
    ("init-from a file that is not safetensors", lambda c: ["--init-from", str(file(c, "w.safetensors", "garbage!!"))],
     "w.safetensors"),
    ("init-from weights of another shape", lambda c: ["--init-from", str(_foreign_weights(c))], "other shapes"),
    ("missing data file", lambda c: ["--data", str(c.tmp / "absent.txt")], "absent.txt"),
    ("empty data file", lambda c: ["--data", str(file(c, "empty.txt", "  \n"))], "empty.txt"),
    ("data with words outside the vocabulary", lambda c: ["--data", str(file(c, "new.txt", "zebra " * 50))], "vocabulary"),
    ("token file of odd size", lambda c: ["--data", str(file(c, "odd.bin", b"\x01\x00\x02"))], "odd.bin"),
    ("token file with an id outside the vocabulary",
     lambda c: ["--data", str(file(c, "big.bin", np.full(100, vocab_size(c.plan), np.uint16).tobytes()))], "big.bin"),
    ("held-out data shorter than one window", lambda c: ["--val-data", str(file(c, "short.txt", "the fox"))], "window"),
    ("sequential data shorter than a batch", lambda c: ["--sampler", "sequential", "--data",
                                                        str(file(c, "few.txt", "the quick brown fox. " * 2))], "tokens"),
    ("missing plan", lambda c: ["--plan", str(c.tmp / "noplan")], "does not exist"),
    ("plan of an old schema", lambda c: ["--plan", str(_old_plan(c))], "schema version 0"),
    ("profile without a GPU", lambda c: ["--profile", "--backend", "numpy"], "--profile"),
    ("lr zero", lambda c: ["--lr", "0"], "--lr 0.0: lr must be a finite number > 0"),
    ("lr negative", lambda c: ["--lr=-1e-3"], "--lr -0.001: lr must be a finite number > 0"),
    ("lr nan", lambda c: ["--lr", "nan"], "--lr nan: lr must be a finite number > 0"),
    ("lr inf", lambda c: ["--lr", "inf"], "--lr inf: lr must be a finite number > 0"),
    ("lr not a number", lambda c: ["--lr", "fast"], "argument --lr: 'fast' is not a number"),
    ("min-lr negative", lambda c: ["--min-lr=-1e-5"], "--min-lr -1e-05: min_lr must be a finite number with 0 <= min_lr"),
    ("min-lr above lr", lambda c: ["--lr", "1e-3", "--min-lr", "1e-2"], "min_lr <= lr (0.001)"),
    ("lr below the plan's min_lr", lambda c: ["--lr", "1e-6"], "min_lr=1e-05 (the plan's): min_lr must be"),
    ("decay-steps zero", lambda c: ["--decay-steps", "0"], "--decay-steps 0: decay_steps must be an integer >= 1"),
    ("decay-steps not an integer", lambda c: ["--decay-steps", "1e4"], "argument --decay-steps: '1e4' is not an integer"),
    ("warmup-steps negative", lambda c: ["--warmup-steps", "-1"], "--warmup-steps -1: warmup_steps must be an integer >= 0"),
    ("warmup as long as the decay", lambda c: ["--warmup-steps", "5", "--decay-steps", "5"], "< decay_steps (5)"),
    ("warmup as long as the run", lambda c: ["--warmup-steps", "3"], "< decay_steps (3)"),
    ("unknown schedule", lambda c: ["--lr-schedule", "step"], "invalid choice: 'step'"),
    ("resume with a warmup longer than its decay", lambda c: ["--resume", str(c.checkpoint), "--warmup-steps", "9"],
     "< decay_steps (2)"),
]


def _foreign_weights(c) -> Path:
    path = c.tmp / "foreign.safetensors"
    names = [t["name"] for t in json.loads((c.plan / "plan.json").read_text())["tensors"] if t["kind"] == "param"]
    save_safetensors(path, {name: np.zeros((3, 3), np.float32) for name in names})
    return path


def _old_plan(c) -> Path:
    old = c.tmp / "oldplan"
    old.mkdir(exist_ok=True)
    data = json.loads((c.plan / "plan.json").read_text())
    data["schema_version"] = 0
    (old / "plan.json").write_text(json.dumps(data))
    return old


def snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("what,extra,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_before_any_work(ctx, what, extra, fragment):
    args = extra(ctx)
    before = snapshot(ctx.tmp)
    base = ["-m", "graphgpt.run", "--plan", str(ctx.plan), "--data", str(ctx.corpus), "--steps", "3",
            "--backend", "numpy", "--generate", "2"]
    proc = run_cli(*base, *args)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0], lines[0]
    assert "step " not in proc.stdout and "sample" not in proc.stdout, "the error came after work was done"
    assert snapshot(ctx.tmp) == before, "a bad run changed files on disk"


@pytest.mark.parametrize("variable,value", [("PMI_SIZE", "abc"), ("OMPI_COMM_WORLD_SIZE", "-1"), ("PMIX_SIZE", "1.5"),
                                            ("MPI_LOCALNRANKS", "0"), ("WORLD_SIZE", "x"), ("WORLD_SIZE", "0"),
                                            ("PMI_SIZE", "\u0662")])
def test_a_launcher_variable_that_is_no_process_count_is_refused(ctx, variable, value):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{variable: value})
    proc = subprocess.run([sys.executable, "-m", "graphgpt.run", "--plan", str(ctx.plan), "--data", str(ctx.corpus),
                           "--steps", "1", "--backend", "numpy"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert_user_error(proc, f"{variable}={value!r} is not a process count")
    assert proc.stdout == ""


def test_a_launcher_variable_without_its_launcher_is_refused(ctx):
    """PMI_SIZE=2 left in the environment of a plain run: MPI starts a world of this one process,
    and the run would wait for a second that never comes."""
    pytest.importorskip("mpi4py")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PMI_SIZE="2")
    proc = subprocess.run([sys.executable, "-m", "graphgpt.run", "--plan", str(ctx.plan), "--data", str(ctx.corpus),
                           "--steps", "1", "--backend", "numpy"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert_user_error(proc, "PMI_SIZE=2 says this is one of several processes, but the MPI world has only this one")


def test_torchrun_like_launch_is_refused(ctx):
    env = dict(os.environ, PYTHONPATH=str(ROOT), WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    proc = subprocess.run([sys.executable, "-m", "graphgpt.run", "--plan", str(ctx.plan), "--steps", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "no MPI world" in proc.stderr


def test_non_finite_loss_stops_at_its_step(tmp_path, ctx):
    plan = tmp_path / "wild"
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(plan), "--data", str(ctx.corpus),
                   *sets(TINY + ["lr=1e30", "grad_clip=0"]))
    assert proc.returncode == 0, proc.stderr
    save, log = tmp_path / "ck", tmp_path / "m.jsonl"
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--data", str(ctx.corpus), "--steps", "50",
                   "--backend", "numpy", "--save", str(save), "--save-every", "1", "--log", str(log))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: step "), proc.stderr
    bad = int(lines[0].split()[2].rstrip(":"))
    from graphgpt.checkpoint import CheckpointDir
    from graphgpt.plan import load
    assert CheckpointDir(save).checkpoints()[-1] == bad - 1
    assert CheckpointDir(save).load(load(plan).digest).step == bad - 1  # the last good one, intact
    assert f"step_{bad - 1:08d}" in lines[0]
    assert json.loads(log.read_text().splitlines()[-1])["step"] == bad


def test_a_refused_run_leaves_no_directory_of_its_own(tmp_path, ctx):
    """--save's and --log's directories are made once every check has passed: a run refused over
    its data makes neither."""
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = run_cli("-m", "graphgpt.run", "--plan", str(ctx.plan), "--data", str(empty), "--steps", "3", "--backend",
                   "numpy", "--save", str(tmp_path / "ck" / "deep"), "--log", str(tmp_path / "logs" / "deep" / "x.jsonl"))
    assert_user_error(proc, str(empty))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def test_a_run_saving_where_another_run_saves_now_is_refused(tmp_path, ctx):
    """Two runs started with one --save would write over each other's checkpoints: while one holds
    the directory (it has not saved yet, so the other's check for checkpoints finds none), the
    other is refused in one line, before its first step."""
    save = tmp_path / "ck"
    holder = subprocess.Popen([sys.executable, "-c", "import time; from graphgpt.checkpoint import CheckpointDir; "
                               f"CheckpointDir({str(save)!r}).hold(); print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_cli("-m", "graphgpt.run", "--plan", str(ctx.plan), "--data", str(ctx.corpus), "--steps", "3",
                       "--backend", "numpy", "--save", str(save))
    finally:
        holder.kill()
        holder.wait()
    assert_user_error(proc, f"--save {save}: another run is saving checkpoints here now")
    assert "step " not in proc.stdout and list(save.iterdir()) == []


def test_closed_stdout_does_not_stop_a_save(tmp_path, ctx):
    """`| head -1`: the reader goes away after the first line; the run still trains and saves."""
    save = tmp_path / "ck"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "graphgpt.run", "--plan", str(ctx.plan), "--data",
                             str(ctx.corpus), "--steps", "30", "--backend", "numpy", "--save", str(save)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    from graphgpt.checkpoint import CheckpointDir
    assert CheckpointDir(save).checkpoints() == [30]


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec (pip install mpich)")
@pytest.mark.parametrize("with_mpi4py_run", [True, False], ids=["python -m mpi4py", "plain python"])
def test_an_error_on_one_rank_ends_every_rank(tmp_path, ctx, with_mpi4py_run):
    """Only rank 0 writes the log, so only rank 0 finds its path unusable; the other rank must
    not be left waiting for it."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    runner = [sys.executable, "-m", "mpi4py"] if with_mpi4py_run else [sys.executable]
    start = time.monotonic()
    proc = subprocess.run(["mpiexec", "-n", "2", *runner, "-m", "graphgpt.run", "--plan", str(ctx.plan),
                           "--data", str(ctx.corpus), "--steps", "5", "--backend", "numpy",
                           "--log", str(blocker / "m.jsonl")],
                          cwd=ROOT, env=MPI_ENV, capture_output=True, text=True, timeout=90)
    assert time.monotonic() - start < 60
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: rank 0: --log"), \
        f"exit {proc.returncode}; stderr: {proc.stderr!r}; stdout: {proc.stdout!r}"
