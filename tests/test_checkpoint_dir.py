"""Training-state checkpoint directories: real files, real processes, real SIGKILL."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from graphgpt import checkpoint as checkpoint_module
from graphgpt.checkpoint import CheckpointDir, TrainingState, load_weights
from graphgpt.errors import UserError
from graphgpt.tensor_files import load_seed_weights, save_safetensors
from tests import checkpoint_worker

DIGEST = "d1" * 32
OTHER_DIGEST = "0e" * 32
MODEL_HASH = "77" * 32
WORKER = Path(checkpoint_worker.__file__)


def small_state(step: int) -> TrainingState:
    rng = np.random.default_rng(step)
    params = {"wte": rng.standard_normal((5, 4)), "ln.w": rng.standard_normal(4).astype(np.float32),
              "lm.b": np.array(rng.standard_normal(), np.float64)}
    optimizer = {"adam.m.wte": rng.standard_normal((5, 4)), "adam.v.ln.w": rng.random(4).astype(np.float32)}
    return TrainingState(step, params, optimizer, {"sampler": {"epoch": 1, "position": step}, "best": 2.5})


def save(checkpoints: CheckpointDir, state: TrainingState, digest: str = DIGEST) -> Path:
    return checkpoints.save(state, digest, MODEL_HASH, list(state.params.values()))


def assert_same_state(got: TrainingState, want: TrainingState) -> None:
    assert got.step == want.step and got.meta == want.meta
    for got_tensors, want_tensors in [(got.params, want.params), (got.optimizer, want.optimizer)]:
        assert list(got_tensors) == list(want_tensors)
        for name, value in want_tensors.items():
            assert got_tensors[name].dtype == value.dtype and got_tensors[name].shape == value.shape
            assert got_tensors[name].tobytes() == value.tobytes(), name  # bit for bit


def temporaries(directory: Path) -> list[Path]:
    """What a save in progress (or a killed one) has in the directory: names starting with a dot."""
    return sorted(p for p in directory.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child.pid
    child.kill()
    child.wait()


# --- saving and loading ----------------------------------------------------------------------

def test_round_trip_is_exact_and_files_are_as_documented(tmp_path):
    checkpoints = CheckpointDir(tmp_path / "run", run="20261206T100000Z-0a1b2c3d")
    state = small_state(5)
    path = save(checkpoints, state)
    assert path == tmp_path / "run" / "step_00000005"
    assert (tmp_path / "run" / "latest").read_text() == "step_00000005\n"
    assert sorted(p.name for p in path.iterdir()) == [
        ".graphgpt-checkpoint", "model.safetensors", "optimizer.safetensors", "state.json", "trained_weights.bin"]
    record = json.loads((path / "state.json").read_text())
    assert record == {"format": "graphgpt-checkpoint", "version": 1, "step": 5, "plan_digest": DIGEST,
                      "model_hash": MODEL_HASH, "run": "20261206T100000Z-0a1b2c3d", "meta": state.meta}
    exported = load_seed_weights(path / "trained_weights.bin")
    assert [a.tobytes() for a in exported] == [v.astype(np.float32).tobytes() for v in state.params.values()]
    loaded = checkpoints.load(DIGEST)
    assert_same_state(loaded, state)
    assert loaded.run == "20261206T100000Z-0a1b2c3d"
    assert checkpoints.checkpoints() == [5] and temporaries(tmp_path / "run") == []


def test_keep_prunes_the_oldest_checkpoints_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    (run / "step_notes").mkdir(parents=True)
    (run / "step_notes" / "idea.txt").write_text("lr warmup")
    (run / "step_00000001").mkdir()  # a user's directory: no state.json of ours
    (run / "step_00000001" / "state.json").write_text('{"format": "someone-else"}')
    (run / "notes.txt").write_text("keep me")
    (run / ".step_00000002.tmp").mkdir()  # not a pid-named temporary of ours
    lookalike = run / f".step_00000003.{dead_pid()}.tmp"  # named like our temporary, but no marker
    lookalike.mkdir()
    (lookalike / "results.csv").write_text("mine")
    checkpoints = CheckpointDir(run, keep=2)
    for step in range(2, 8):
        save(checkpoints, small_state(step))
    assert checkpoints.checkpoints() == [6, 7]
    assert sorted(p.name for p in run.iterdir()) == sorted([
        ".step_00000002.tmp", lookalike.name, "latest", "notes.txt", "step_00000001", "step_00000006",
        "step_00000007", "step_notes"])
    assert (lookalike / "results.csv").read_text() == "mine"
    assert (run / "step_notes" / "idea.txt").read_text() == "lr warmup"
    assert (run / "step_00000001" / "state.json").read_text() == '{"format": "someone-else"}'


def test_keep_zero_keeps_every_checkpoint(tmp_path):
    checkpoints = CheckpointDir(tmp_path, keep=0)
    for step in [3, 1, 20, 10]:
        save(checkpoints, small_state(step))
    assert checkpoints.checkpoints() == [1, 3, 10, 20]
    assert checkpoints.latest() == tmp_path / "step_00000010"  # the last saved, not the highest step


def test_pruning_never_removes_the_checkpoint_just_saved(tmp_path):
    checkpoints = CheckpointDir(tmp_path, keep=2)
    for step in [10, 20, 5]:  # resumed from an earlier checkpoint
        save(checkpoints, small_state(step))
    assert checkpoints.checkpoints() == [5, 20]
    assert checkpoints.load(DIGEST).step == 5


def test_saving_a_step_again_replaces_that_checkpoint_whole(tmp_path):
    checkpoints = CheckpointDir(tmp_path)
    save(checkpoints, small_state(4))
    again = small_state(4)
    again.meta = {"sampler": {"epoch": 2}, "best": 1.0}
    again.params["wte"] = again.params["wte"] * 2
    save(checkpoints, again)
    assert_same_state(checkpoints.load(DIGEST), again)
    assert temporaries(tmp_path) == []


def test_save_refuses_to_replace_a_directory_that_is_not_its_checkpoint(tmp_path):
    (tmp_path / "step_00000003").mkdir()
    (tmp_path / "step_00000003" / "data.bin").write_bytes(b"mine")
    with pytest.raises(UserError, match="step_00000003: exists and is not a complete graphgpt checkpoint"):
        save(CheckpointDir(tmp_path), small_state(3))
    assert [p.name for p in (tmp_path / "step_00000003").iterdir()] == ["data.bin"]
    assert temporaries(tmp_path) == []


def test_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    checkpoints = CheckpointDir(tmp_path, keep=0)
    assert checkpoints.latest() is None and CheckpointDir(tmp_path / "missing").latest() is None
    for step in [1, 2, 3]:
        save(checkpoints, small_state(step))
    pointer = tmp_path / "latest"
    for damaged in ["", "garbage\n", "../step_00000002\n", "step_00000009\n"]:
        pointer.write_text(damaged)
        assert checkpoints.latest() == tmp_path / "step_00000003"
    pointer.write_bytes(b"\xff\xfe")
    assert checkpoints.latest() == tmp_path / "step_00000003"
    pointer.unlink()
    assert checkpoints.latest() == tmp_path / "step_00000003"
    pointer.write_text("step_00000002\n")
    assert checkpoints.latest() == tmp_path / "step_00000002"  # a complete one named is honoured
    pointer.write_text("step_00000003\n")
    (tmp_path / "step_00000003" / "optimizer.safetensors").unlink()
    assert checkpoints.latest() == tmp_path / "step_00000002"
    assert checkpoints.checkpoints() == [1, 2]
    assert checkpoints.load(DIGEST).step == 2


def test_load_refuses_a_checkpoint_of_another_plan(tmp_path):
    path = save(CheckpointDir(tmp_path), small_state(2), digest=OTHER_DIGEST)
    with pytest.raises(UserError) as error:
        CheckpointDir(tmp_path).load(DIGEST)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert OTHER_DIGEST[:12] in message and DIGEST[:12] in message and OTHER_DIGEST[:13] not in message


def test_load_refuses_garbled_and_foreign_checkpoints_in_one_line(tmp_path):
    checkpoints = CheckpointDir(tmp_path)
    with pytest.raises(UserError, match="no complete checkpoint"):
        checkpoints.load(DIGEST)
    path = save(checkpoints, small_state(1))
    state_file = path / "state.json"
    good = state_file.read_text()
    for damaged, why in [("{not json", "not valid JSON"), ('["a list"]', "not a JSON object"),
                         ('{"format": "graphgpt-checkpoint", "version": 2}', "version 2"),
                         (good.replace('"step": 1', '"step": "one"'), "field 'step' is \"one\", not int")]:
        state_file.write_text(damaged)
        with pytest.raises(UserError, match=why) as error:
            checkpoints.load(DIGEST, path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
    state_file.write_text(good)
    model = path / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-5])
    with pytest.raises(UserError, match="model.safetensors"):
        checkpoints.load(DIGEST, path)
    with pytest.raises(UserError, match="not a graphgpt checkpoint"):
        checkpoints.load(DIGEST, tmp_path / "notes")


def test_load_weights_from_each_kind_of_path(tmp_path):
    state = small_state(6)
    checkpoints = CheckpointDir(tmp_path / "run")
    save(checkpoints, small_state(3))
    step_dir = save(checkpoints, state)
    weights_file = tmp_path / "model.safetensors"
    save_safetensors(weights_file, state.params)
    for path in [weights_file, step_dir, tmp_path / "run"]:
        loaded = load_weights(path)
        assert list(loaded) == list(state.params)
        assert all(loaded[n].tobytes() == v.tobytes() for n, v in state.params.items())
    (tmp_path / "empty").mkdir()
    (tmp_path / "not-weights.txt").write_text("hello")
    for bad, why in [(tmp_path / "missing", "does not exist"),
                     (tmp_path / "empty", "neither a .safetensors file"),
                     (tmp_path / "not-weights.txt", "not a safetensors file")]:
        with pytest.raises(UserError, match=why) as error:
            load_weights(bad)
        assert str(error.value).startswith(str(bad)) and "\n" not in str(error.value)


def test_check_writable(tmp_path):
    """A directory yet to be made is checked in the one that will hold it and made by the first
    save only, so a run refused after the check leaves none behind."""
    nested = tmp_path / "a" / "b" / "run"
    CheckpointDir(nested).check_writable()
    assert not (tmp_path / "a").exists()
    nested.mkdir(parents=True)
    CheckpointDir(nested).check_writable()
    assert list(nested.iterdir()) == []  # the probe is gone
    regular = tmp_path / "file"
    regular.write_text("x")
    for bad, why in [(regular, "exists and is not a directory"), (regular / "run", f"cannot be made \\({regular} is not a directory")]:
        with pytest.raises(UserError, match=why) as error:
            CheckpointDir(bad).check_writable()
        assert str(error.value).startswith(str(bad)) and "\n" not in str(error.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_check_writable_refuses_a_read_only_directory(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    try:
        with pytest.raises(UserError, match=f"^{re.escape(str(read_only))}: not a writable directory"):
            CheckpointDir(read_only).check_writable()
    finally:
        read_only.chmod(0o755)


# --- temporaries -----------------------------------------------------------------------------

def test_temporaries_of_dead_processes_are_cleared_and_live_ones_left(tmp_path, live_pid):
    dead = dead_pid()
    checkpoints = CheckpointDir(tmp_path, keep=0)
    save(checkpoints, small_state(3))
    set_aside = save(checkpoints, small_state(4))
    os.rename(set_aside, tmp_path / f".step_00000004.{dead}.old.tmp")  # killed mid-replacement
    stale = [tmp_path / f".step_00000007.{dead}.tmp", tmp_path / f".step_00000003.{dead}.old.tmp",
             tmp_path / f".step_00000008.{os.getpid()}.tmp"]  # an earlier process with our pid
    live = [tmp_path / f".step_00000007.{live_pid}.tmp", tmp_path / f".step_00000005.{live_pid}.old.tmp"]
    for directory in stale + live:
        directory.mkdir()
        (directory / ".graphgpt-checkpoint").write_text("graphgpt checkpoint\n")
        (directory / "model.safetensors").write_bytes(b"partial")
    (tmp_path / f".latest.{dead}.k2j_x9.tmp").write_text("step_00000007\n")
    (tmp_path / f".latest.{live_pid}.a8fe1q.tmp").write_text("step_00000007\n")
    unrelated = [tmp_path / ".step_00000006.tmp", tmp_path / f".step_notes.{dead}.tmp", tmp_path / ".cache"]
    for directory in unrelated:
        directory.mkdir()

    cleared = checkpoints.remove_stale_temps()
    assert sorted(cleared) == sorted(stale + [tmp_path / f".step_00000004.{dead}.old.tmp",
                                              tmp_path / f".latest.{dead}.k2j_x9.tmp"])
    assert temporaries(tmp_path) == sorted(live + unrelated + [tmp_path / f".latest.{live_pid}.a8fe1q.tmp"])
    assert checkpoints.checkpoints() == [3, 4]  # the set-aside step 4 is back in place
    assert_same_state(checkpoints.load(DIGEST), small_state(4))


def test_only_marked_or_empty_directories_are_cleared(tmp_path):
    """A writer killed between making its directory and marking it leaves it empty: nothing to
    lose. Anything else without the marker (a regular file, a link, a directory) is the user's."""
    dead = dead_pid()
    empty, unmarked, linked = (tmp_path / f".step_0000000{i}.{dead}.tmp" for i in (1, 2, 3))
    empty.mkdir()
    unmarked.mkdir()
    (unmarked / "model.safetensors").write_bytes(b"mine")
    linked.mkdir()
    os.symlink(tmp_path / "elsewhere", linked / ".graphgpt-checkpoint")
    (tmp_path / "elsewhere").write_text("x")
    pointer_like = tmp_path / f".latest.{dead}.abc123.tmp"
    pointer_like.write_text("my notes, not a step name\n")
    assert CheckpointDir(tmp_path).remove_stale_temps() == [empty]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["elsewhere", linked.name, pointer_like.name, unmarked.name])


def test_save_and_load_clear_stale_temporaries(tmp_path):
    checkpoints = CheckpointDir(tmp_path)
    stale = tmp_path / f".step_00000002.{dead_pid()}.tmp"
    for clear in (lambda: save(checkpoints, small_state(1)), lambda: checkpoints.load(DIGEST)):
        stale.mkdir()
        (stale / ".graphgpt-checkpoint").write_text("graphgpt checkpoint\n")
        clear()
        assert not stale.exists()


def failing_optimizer_state(step: int) -> TrainingState:
    state = small_state(step)
    state.optimizer["adam.m.wte"] = state.optimizer["adam.m.wte"].astype(np.complex64)  # no safetensors code
    return state


def interrupted_seed_export(path, tensors):
    raise KeyboardInterrupt  # as a SIGINT, or SystemExit from a SIGTERM handler, would mid-save


@pytest.mark.parametrize("step", [2, 1], ids=["new step", "replacing a step"])
def test_a_failed_save_leaves_no_temporary_and_the_previous_checkpoint(tmp_path, monkeypatch, step):
    checkpoints = CheckpointDir(tmp_path)
    save(checkpoints, small_state(1))
    with pytest.raises(ValueError):
        save(checkpoints, failing_optimizer_state(step))
    monkeypatch.setattr(checkpoint_module, "save_seed_weights", interrupted_seed_export)
    with pytest.raises(KeyboardInterrupt):
        save(checkpoints, small_state(step))
    assert temporaries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]
    assert_same_state(checkpoints.load(DIGEST), small_state(1))


def interrupted_fsync(path):
    raise KeyboardInterrupt


@pytest.mark.parametrize("step", [2, 1], ids=["new step", "replacing a step"])
def test_an_interrupt_once_the_checkpoint_is_in_place_leaves_no_temporary(tmp_path, monkeypatch, step):
    checkpoints = CheckpointDir(tmp_path)
    save(checkpoints, small_state(1))
    new = dataclasses.replace(small_state(7), step=step)
    monkeypatch.setattr(checkpoint_module, "fsync_dir", interrupted_fsync)  # right after the rename
    with pytest.raises(KeyboardInterrupt):
        save(checkpoints, new)
    assert temporaries(tmp_path) == []
    assert checkpoints.checkpoints() == sorted({1, step})
    assert_same_state(checkpoints.load(DIGEST, tmp_path / f"step_{step:08d}"), new)
    assert checkpoints.latest() == tmp_path / "step_00000001"  # `latest` was not yet replaced


# --- kill -9 ---------------------------------------------------------------------------------

KILLS = 20


def wait_for_a_save_in_progress(directory: Path, worker: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while not temporaries(directory):
        assert worker.poll() is None, worker.stderr.read().decode()
        assert time.monotonic() < deadline, "the worker never started a save"
        time.sleep(0.0005)


def test_kill_9_at_random_moments_never_loses_or_damages_a_checkpoint(tmp_path):
    """A worker saves checkpoints in a loop and is SIGKILLed, then restarted from what it can
    load. Every other kill waits for a save in progress; the rest land anywhere (imports, load,
    writes, renames, pruning). Whatever the moment, the latest checkpoint must load, hold exactly
    its step's state, and never be older than the one before the kill."""
    rng = random.Random(1234)
    directory = tmp_path / "run"
    checkpoints = CheckpointDir(directory, keep=checkpoint_worker.KEEP)
    checkpoint_worker.save(checkpoints, checkpoint_worker.state_for_step(0))
    last_step, kills_during_a_save = 0, 0
    for kill in range(KILLS):
        worker = subprocess.Popen([sys.executable, str(WORKER), str(directory)], stderr=subprocess.PIPE)
        try:
            if kill % 2:
                wait_for_a_save_in_progress(directory, worker)
                time.sleep(rng.uniform(0, 0.01))
            else:
                time.sleep(rng.uniform(0.05, 0.6))
            assert worker.poll() is None, worker.stderr.read().decode()
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            worker.stderr.close()
        kills_during_a_save += bool(temporaries(directory))
        state = checkpoints.load(checkpoint_worker.PLAN_DIGEST)
        assert_same_state(state, checkpoint_worker.state_for_step(state.step))
        assert state.step >= last_step
        last_step = state.step

    assert kills_during_a_save >= 1, "no kill landed during a save: the test did not test that"
    assert last_step > 0
    assert temporaries(directory) == []  # load cleared what the killed workers left
    steps = checkpoints.checkpoints()
    assert sorted(p.name for p in directory.iterdir()) == ["latest"] + [f"step_{s:08d}" for s in steps]
    assert len(steps) <= checkpoint_worker.KEEP + 1  # a kill before pruning leaves one extra


def test_a_directory_is_held_by_one_process_until_it_ends(tmp_path):
    """hold() makes the directory and keeps it the process's: another holder is refused in one
    line while the first lives, and a holder killed by SIGKILL lets it go, leaving nothing."""
    run_dir = tmp_path / "a" / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from graphgpt.checkpoint import CheckpointDir; "
                               f"CheckpointDir({str(run_dir)!r}).hold(); print('held', flush=True); time.sleep(60)"],
                              cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="another run is saving checkpoints here now") as refused:
            CheckpointDir(run_dir).hold()
        assert str(refused.value).startswith(str(run_dir)) and "\n" not in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    CheckpointDir(run_dir).hold()
    assert list(run_dir.iterdir()) == []
