"""A full disk or a read-only one while a run saves a checkpoint or writes its log: one line,
exit status 2, the previous checkpoint and the log intact, no temporary left. A real tmpfs, filled
for real (tests/conftest.py's small_fs and fill)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from graphgpt.checkpoint import CheckpointDir
from graphgpt.errors import UserError
from graphgpt.plan import load as load_plan
from tests.conftest import assert_user_error, fill, train_numpy, word_plan
from tests.test_checkpoint_dir import DIGEST, assert_same_state, save, small_state


@pytest.fixture(scope="module")
def plan_and_data(tmp_path_factory):
    return word_plan(tmp_path_factory.mktemp("io"))


train = train_numpy


def snapshot(directory) -> dict:
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(directory.rglob("*"))
            if not p.name.startswith("filler")}


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(plan_and_data, small_fs):
    run, log = small_fs / "run", small_fs / "run.jsonl"
    assert train(plan_and_data, "--steps", "2", "--save", str(run), "--log", str(log)).returncode == 0
    # the log's trimmed copy needs room; the checkpoint of step 4 will not have it
    with open(small_fs / "room", "wb") as f:
        f.write(b"\0" * 8192)
    fill(small_fs)
    os.unlink(small_fs / "room")
    before = snapshot(run)
    proc = train(plan_and_data, "--steps", "4", "--resume", str(run), "--log", str(log))
    assert_user_error(proc, f"{run / 'step_00000004'}: cannot write the checkpoint (No space left on device)",
                      f"the latest checkpoint, {run / 'step_00000002'}, is intact")
    assert snapshot(run) == before  # no temporary, and step 2 as it was
    assert CheckpointDir(run).load(load_plan(plan_and_data[0]).digest).step == 2
    assert [r.get("step") for r in map(json.loads, log.read_text().splitlines())] == [None, 1, 2, 3, 4]


def test_a_full_disk_during_a_log_write_keeps_the_whole_records(plan_and_data, small_fs):
    """Room for the header and some records: the run stops at the first record the disk refuses,
    and the log ends with the last whole record."""
    log = small_fs / "run.jsonl"
    with open(small_fs / "room", "wb") as f:
        f.write(b"\0" * 4096)
    fill(small_fs)
    os.unlink(small_fs / "room")
    proc = train(plan_and_data, "--steps", "200", "--log", str(log))
    assert_user_error(proc, f"--log {log}: cannot write step",
                      "(No space left on device); the records before it are intact")
    text = log.read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    assert records[0]["graphgpt_log"] == 1 and [r["step"] for r in records[1:]] == list(range(1, len(records)))
    assert f"cannot write step {len(records)}'s record" in proc.stderr


def test_a_full_disk_before_a_resumed_runs_log_is_trimmed_keeps_it(plan_and_data, small_fs, tmp_path):
    run, log = tmp_path / "run", small_fs / "run.jsonl"
    assert train(plan_and_data, "--steps", "3", "--save", str(run), "--log", str(log)).returncode == 0
    fill(small_fs)
    before = log.read_bytes()
    proc = train(plan_and_data, "--steps", "5", "--resume", str(run), "--log", str(log))
    assert_user_error(proc, f"--log {log}: cannot write it (No space left on device); it is as it was")
    assert log.read_bytes() == before
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler", "filler_tail", "run.jsonl"]


def remount(mount, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True, capture_output=True)


def test_a_read_only_directory_during_a_save(small_fs):
    checkpoints = CheckpointDir(small_fs / "run")
    save(checkpoints, small_state(1))
    before = snapshot(small_fs)
    remount(small_fs, "ro")
    try:
        with pytest.raises(UserError, match=r"step_00000002: cannot write the checkpoint \(Read-only file system\); "
                                             r"the latest checkpoint, .*step_00000001, is intact"):
            save(checkpoints, small_state(2))
        assert snapshot(small_fs) == before
    finally:
        remount(small_fs, "rw")
    assert_same_state(checkpoints.load(DIGEST), small_state(1))


def test_a_read_only_directory_is_refused_before_any_work(plan_and_data, small_fs):
    assert train(plan_and_data, "--steps", "2", "--save", str(small_fs / "run"), "--log",
                 str(small_fs / "run.jsonl")).returncode == 0
    before = snapshot(small_fs)
    remount(small_fs, "ro")
    try:
        proc = train(plan_and_data, "--steps", "4", "--resume", str(small_fs / "run"))
        assert_user_error(proc, f"--resume {small_fs / 'run'}: not a writable directory (Read-only file system)")
        proc = train(plan_and_data, "--steps", "4", "--log", str(small_fs / "new.jsonl"))
        assert_user_error(proc, f"--log {small_fs / 'new.jsonl'}: {small_fs} is on a read-only filesystem")
        assert snapshot(small_fs) == before
    finally:
        remount(small_fs, "rw")
