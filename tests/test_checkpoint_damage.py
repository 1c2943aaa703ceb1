"""Damaged checkpoints: each is refused in one line naming the file and the problem, a damaged
latest one is never skipped silently, and --resume takes a step directory. Real files, real runs."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from graphgpt.checkpoint import MODEL, OPTIMIZER, CheckpointDir, Layout, TrainingState
from graphgpt.errors import UserError
from graphgpt.plan import load as load_plan
from graphgpt.tensor_files import load_safetensors, save_safetensors
from tests.conftest import DEEP_JSON, assert_user_error, run_cli, train_numpy, word_plan

DIGEST = "d1" * 32
META = {"seed": int, "data_tokens": int, "sampler": dict, "best": (dict, type(None))}


def small_state(step: int) -> TrainingState:
    rng = np.random.default_rng(step)
    return TrainingState(step, {"wte": rng.standard_normal((5, 4)).astype(np.float32),
                                "ln.w": rng.standard_normal(4).astype(np.float32)},
                         {"adam.m.wte": rng.standard_normal((5, 4)).astype(np.float32),
                          "adam.v.wte": rng.random((5, 4)).astype(np.float32)},
                         {"seed": 3, "data_tokens": 100, "sampler": {"kind": "random", "batches": step},
                          "best": None})


LAYOUT = Layout({MODEL: {n: (v.shape, v.dtype) for n, v in small_state(0).params.items()},
                 OPTIMIZER: {n: (v.shape, v.dtype) for n, v in small_state(0).optimizer.items()}}, META)


def saved(directory, *steps) -> CheckpointDir:
    checkpoints = CheckpointDir(directory, keep=0)
    for step in steps:
        state = small_state(step)
        checkpoints.save(state, DIGEST, "77" * 32, list(state.params.values()))
    return checkpoints


def edit_tensors(path, change) -> None:
    tensors = load_safetensors(path)
    change(tensors)
    save_safetensors(path, tensors)


def edit_state(path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def replace_dir_by_symlink(step_dir) -> None:
    elsewhere = step_dir.parent.parent / "elsewhere"
    shutil.move(step_dir, elsewhere)
    os.symlink(elsewhere, step_dir)


# Each damage to the checkpoint directory `c`, and what the one line must say.
DAMAGES = {
    "model tensor missing": (lambda c: edit_tensors(c / MODEL, lambda t: t.pop("ln.w")),
     "model.safetensors lacks tensors of this plan: ln.w"),
    "optimizer tensor missing": (lambda c: edit_tensors(c / OPTIMIZER, lambda t: t.pop("adam.v.wte")),
     "optimizer.safetensors lacks tensors of this plan: adam.v.wte"),
    "extra tensor": (lambda c: edit_tensors(c / MODEL, lambda t: t.update(bias=np.zeros(2, np.float32))),
     "model.safetensors has tensors this plan does not: bias"),
    "wrong shape": (lambda c: edit_tensors(c / OPTIMIZER, lambda t: t.update({"adam.m.wte": t["adam.m.wte"][:4]})),
     "adam.m.wte (4, 4) (plan: (5, 4))"),
    "wrong dtype": (lambda c: edit_tensors(c / MODEL, lambda t: t.update(wte=t["wte"].astype(np.float64))),
     "wte float64 (plan: float32)"),
    "truncated tensor file": (lambda c: (c / OPTIMIZER).write_bytes((c / OPTIMIZER).read_bytes()[:-3]),
     "optimizer.safetensors: tensor"),
    "garbage tensor file": (lambda c: (c / MODEL).write_bytes(b"\x07" * 300),
     "model.safetensors: safetensors header size"),
    "state.json not JSON": (lambda c: (c / "state.json").write_text('{"step": 4,'),
     "state.json: not valid JSON"),
    "state.json nested too deeply": (lambda c: (c / "state.json").write_text(DEEP_JSON),
     "state.json: not valid JSON (arrays or objects nested too deeply"),
    "tensor header nested too deeply": (lambda c: (c / MODEL).write_bytes(struct.pack("<Q", len(DEEP_JSON)) + DEEP_JSON.encode()),
     "model.safetensors: safetensors header is not valid JSON (arrays or objects nested too deeply"),
    "state.json not an object": (lambda c: (c / "state.json").write_text("[4]"),
     "state.json: not a JSON object"),
    "state.json field missing": (lambda c: edit_state(c / "state.json", lambda r: r.pop("model_hash")),
     "state.json: lacks the field 'model_hash'"),
    "state.json field mistyped": (lambda c: edit_state(c / "state.json", lambda r: r.update(step=4.0)),
     "state.json: field 'step' is 4.0, not int"),
    "run id mistyped": (lambda c: edit_state(c / "state.json", lambda r: r.update(run=["x"])),
     "state.json: field 'run'"),
    "meta field missing": (lambda c: edit_state(c / "state.json", lambda r: r["meta"].pop("seed")),
     "state.json: lacks the field 'meta.seed'"),
    "meta field mistyped": (lambda c: edit_state(c / "state.json", lambda r: r["meta"].update(best=1.5)),
     "field 'meta.best' is 1.5, not dict or null"),
    "step of another directory": (lambda c: edit_state(c / "state.json", lambda r: r.update(step=3)),
     "state.json: records step 3, but its directory is named for step 4"),
    "step directory a symlink": (replace_dir_by_symlink, "step_00000004: a symbolic link"),
    "seed export missing": (lambda c: (c / "trained_weights.bin").unlink(),
     "incomplete checkpoint, missing trained_weights.bin"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_each_damage_is_one_line_naming_the_file(tmp_path, damage):
    checkpoints = saved(tmp_path / "run", 4)
    step_dir = tmp_path / "run" / "step_00000004"
    damage_fn, message = DAMAGES[damage]
    damage_fn(step_dir)
    with pytest.raises(UserError) as error:
        checkpoints.load(DIGEST, step_dir, LAYOUT)
    assert str(error.value).startswith(str(step_dir)) and message in str(error.value)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="no other checkpoint in .* is whole either"):  # alone: refused
        checkpoints.load(DIGEST, layout=LAYOUT)


@pytest.mark.parametrize("damage", ["optimizer tensor missing", "state.json not JSON", "state.json nested too deeply",
                                    "tensor header nested too deeply", "step directory a symlink"])
def test_a_damaged_latest_falls_back_to_the_newest_whole_one_with_a_warning(tmp_path, capsys, damage):
    checkpoints = saved(tmp_path / "run", 2, 4)
    DAMAGES[damage][0](tmp_path / "run" / "step_00000004")
    state = checkpoints.load(DIGEST, layout=LAYOUT)
    assert state.step == 2
    assert state.optimizer["adam.v.wte"].tobytes() == small_state(2).optimizer["adam.v.wte"].tobytes()
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"warning: {tmp_path / 'run' / 'step_00000004'}")
    assert DAMAGES[damage][1] in warning[0] and f"{tmp_path / 'run' / 'step_00000002'}, the newest whole" in warning[0]


def test_a_checkpoint_of_another_plan_is_refused_not_skipped(tmp_path):
    checkpoints = saved(tmp_path / "run", 2, 4)
    edit_state(tmp_path / "run" / "step_00000004" / "state.json", lambda r: r.update(plan_digest="0e" * 32))
    with pytest.raises(UserError, match="step_00000004: checkpoint of plan 0e0e0e0e0e0e, not of this plan"):
        checkpoints.load(DIGEST, layout=LAYOUT)


# --- as a user runs it --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plan_and_data(tmp_path_factory):
    return word_plan(tmp_path_factory.mktemp("damage"), "lr=3e-3")


train = train_numpy


def snapshot(directory) -> dict:
    return {p: (p.read_bytes() if p.is_file() and not p.is_symlink() else os.readlink(p) if p.is_symlink() else None)
            for p in sorted(directory.rglob("*"))}


@pytest.fixture(scope="module")
def pristine(plan_and_data, tmp_path_factory):
    """Checkpoints of steps 2 and 4, and the state an uninterrupted run has at step 6 (one learning-rate
    schedule for both, which the checkpoints keep: the rate would otherwise decay over each run's --steps)."""
    base = tmp_path_factory.mktemp("runs")
    proc = train(plan_and_data, "--steps", "4", "--decay-steps", "6", "--save-every", "2", "--save", str(base / "run"))
    assert proc.returncode == 0, proc.stderr
    proc = train(plan_and_data, "--steps", "6", "--decay-steps", "6", "--save", str(base / "whole"))
    assert proc.returncode == 0, proc.stderr
    return base / "run", CheckpointDir(base / "whole").load(load_plan(plan_and_data[0]).digest)


def damaged_copy(pristine, tmp_path, damage: str):
    run = tmp_path / "run"
    shutil.copytree(pristine[0], run, symlinks=True)
    DAMAGES[damage][0](run / "step_00000004")
    return run


def test_a_run_resumes_from_the_older_checkpoint_past_a_damaged_latest(plan_and_data, pristine, tmp_path):
    """An optimizer tensor missing in the latest checkpoint: resumed today with it zeroed; now the
    run names it, resumes from step 2 and ends exactly where an uninterrupted run ends."""
    run = damaged_copy(pristine, tmp_path, "optimizer tensor missing")
    damaged = {p.relative_to(run / "step_00000004"): v for p, v in snapshot(run / "step_00000004").items()}
    proc = train(plan_and_data, "--steps", "6", "--save-every", "2", "--resume", str(run))
    assert proc.returncode == 0, proc.stderr
    warning = proc.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "adam.v.wte" in warning[0], proc.stderr
    assert str(run / "step_00000004") in warning[0] and str(run / "step_00000002") in warning[0]
    assert "kept as step_00000004.damaged" in warning[0]
    assert "at step 2" in proc.stdout
    # kept as it was under a name no save takes, for its owner to look at, so step 4 saves again
    aside = run / "step_00000004.damaged"
    assert {p.relative_to(aside): v for p, v in snapshot(aside).items()} == damaged
    assert CheckpointDir(run).load(load_plan(plan_and_data[0]).digest, run / "step_00000004").step == 4
    final = CheckpointDir(run).load(load_plan(plan_and_data[0]).digest, run / "step_00000006")
    for name, value in {**pristine[1].params, **pristine[1].optimizer}.items():
        assert {**final.params, **final.optimizer}[name].tobytes() == value.tobytes(), name


@pytest.mark.parametrize("damage", ["state.json not JSON", "state.json nested too deeply", "tensor header nested too deeply",
                                    "meta field mistyped", "step directory a symlink"])
def test_no_whole_checkpoint_is_refused_never_a_fresh_run_over_them(plan_and_data, pristine, tmp_path, damage):
    run = damaged_copy(pristine, tmp_path, damage)
    DAMAGES["garbage tensor file"][0](run / "step_00000002")
    before = snapshot(tmp_path)
    proc = train(plan_and_data, "--steps", "6", "--resume", str(run), "--log", str(tmp_path / "log.jsonl"))
    assert_user_error(proc, str(run / "step_00000004"), "no other checkpoint", "is whole either")
    assert snapshot(tmp_path) == before


def test_resume_from_a_step_directory_resumes_that_step_and_saves_beside_it(plan_and_data, pristine, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pristine[0], run)
    proc = train(plan_and_data, "--steps", "6", "--resume", str(run / "step_00000002"), "--keep", "0")
    assert proc.returncode == 0, proc.stderr
    assert "at step 2" in proc.stdout
    assert sorted(p.name for p in run.iterdir()) == ["latest", "step_00000002", "step_00000004", "step_00000006"]
    assert not any(p.is_dir() for p in (run / "step_00000002").iterdir())  # nothing nested inside it
    assert CheckpointDir(run).load(load_plan(plan_and_data[0]).digest).step == 6


@pytest.mark.parametrize("damage", ["optimizer tensor missing", "step of another directory", "step directory a symlink"])
def test_resume_from_a_damaged_step_directory_is_refused(plan_and_data, pristine, tmp_path, damage):
    run = damaged_copy(pristine, tmp_path, damage)
    before = snapshot(tmp_path)
    proc = train(plan_and_data, "--steps", "6", "--resume", str(run / "step_00000004"))
    assert_user_error(proc, str(run / "step_00000004"), DAMAGES[damage][1])
    assert snapshot(tmp_path) == before


def test_sample_init_from_damaged_checkpoints(plan_and_data, pristine, tmp_path):
    run = damaged_copy(pristine, tmp_path, "garbage tensor file")
    sample = ("-m", "graphgpt.sample", "--plan", str(plan_and_data[0]), "--tokens", "3", "--backend", "numpy")
    proc = run_cli(*sample, "--init-from", str(run / "step_00000004"))
    assert_user_error(proc, f"--init-from {run / 'step_00000004' / 'model.safetensors'}: safetensors header size")
    proc = run_cli(*sample, "--init-from", str(run))
    assert proc.returncode == 0, proc.stderr
    warning = proc.stderr.strip().splitlines()
    assert len(warning) == 1 and str(run / "step_00000004") in warning[0]
    assert f"loading {run / 'step_00000002'}" in warning[0]
    (run / "step_00000002" / "state.json").write_text("")
    proc = run_cli(*sample, "--init-from", str(run))
    assert_user_error(proc, "no other checkpoint", "is whole either")


def test_a_user_directory_named_like_a_staging_directory_survives_a_run(plan_and_data, tmp_path):
    """The data-loss case: a directory of the user's inside --save DIR, named as graphgpt names its
    temporaries and of a writer long gone, was deleted by the next save."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = tmp_path / "run"
    lookalikes = [run / f".step_00000004.{gone.pid}.tmp", run / f".step_00000002.{gone.pid}.old.tmp"]
    for directory in lookalikes:
        directory.mkdir(parents=True)
        (directory / "notes.txt").write_text("my results")
    proc = train(plan_and_data, "--steps", "4", "--save-every", "1", "--save", str(run))
    assert proc.returncode == 0, proc.stderr
    for directory in lookalikes:
        assert [p.name for p in directory.iterdir()] == ["notes.txt"]
        assert (directory / "notes.txt").read_text() == "my results"
    assert CheckpointDir(run).checkpoints() == [2, 3, 4]
