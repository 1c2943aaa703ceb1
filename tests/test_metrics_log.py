"""The --log file: a header naming its run, and nothing but a graphgpt log of this run is ever
appended to or trimmed. Real files and real runs."""
from __future__ import annotations

import json
import os

import pytest

from graphgpt.errors import UserError
from graphgpt.monitor import MetricsLog, log_header, new_run_id
from tests.conftest import DEEP_JSON, assert_user_error, train_numpy, word_plan

PLAN = "ab" * 32


def written_log(path, header, steps) -> None:
    log = MetricsLog(path)
    log.check(header)
    log.open(header)
    for step in steps:
        log.write({"step": step, "loss": 1.0 / step})
    log.close()


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_new_log_starts_with_its_header_and_a_new_run_never_overwrites_one(tmp_path):
    path, header = tmp_path / "run.jsonl", log_header(new_run_id(), PLAN, seed=3, save=None)
    written_log(path, header, [1, 2])
    assert lines(path) == [{"graphgpt_log": 1, "run": header["run"], "plan": PLAN, "seed": 3, "save": None},
                           {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    with pytest.raises(UserError, match="already exists; a new run does not overwrite it"):
        MetricsLog(path).check(log_header(new_run_id(), PLAN))


def test_run_ids_differ():
    assert len({new_run_id() for _ in range(50)}) == 50


def test_a_resumed_run_trims_only_its_own_log(tmp_path):
    path, header = tmp_path / "run.jsonl", log_header(new_run_id(), PLAN, save="/ck")
    written_log(path, header, [1, 2, 3, 4])
    with open(path, "a") as f:
        f.write('{"step": 5, "lo')  # cut short by a kill
    log = MetricsLog(path)
    log.check(dict(header, seed=9), resuming=True)  # a field the header gained since: the first one stays
    log.open(dict(header, seed=9), keep_through=2)
    log.write({"step": 3, "loss": 7.0})
    log.close()
    assert lines(path) == [header, {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 3, "loss": 7.0}]


def test_a_line_nested_too_deeply_is_dropped_as_damage_when_a_resumed_run_trims_its_log(tmp_path):
    path, header = tmp_path / "run.jsonl", log_header(new_run_id(), PLAN, save="/ck")
    written_log(path, header, [1, 2])
    with open(path, "a") as f:
        f.write(DEEP_JSON + "\n")
    log = MetricsLog(path)
    log.check(header, resuming=True)
    log.open(header, keep_through=2)
    log.close()
    assert lines(path) == [header, {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]


def test_a_run_restarted_from_step_0_takes_over_the_log_of_its_own_checkpoint_directory(tmp_path):
    """Killed before its first checkpoint, a run is started again with the same command line: its
    log is that of the same plan and checkpoint directory, and starts again under the new run's id."""
    path = tmp_path / "run.jsonl"
    written_log(path, log_header(new_run_id(), PLAN, save="/ck"), [1, 2])
    again = log_header(new_run_id(), PLAN, save="/ck")
    log = MetricsLog(path)
    log.check(again, resuming=True)
    log.open(again, keep_through=-1)
    log.close()
    assert lines(path) == [again]
    for other in (log_header(new_run_id(), PLAN, save="/elsewhere"), log_header(new_run_id(), "cd" * 32, save="/ck")):
        with pytest.raises(UserError, match="is the log of run"):
            MetricsLog(path).check(other, resuming=True)


FOREIGN = {
    "a text file": b"the training text, which a user gave as --log by mistake\n",
    "a JSONL of someone else": b'{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n',
    "an empty file": b"",
    "binary bytes": b"\xff\xfe\x00garbage\n",
    "a header of another format": b'{"graphgpt_log": 2, "run": "r"}\n',
    "a JSON list": b"[1, 2]\n",
    "JSON nested too deeply": DEEP_JSON.encode() + b"\n",
}


@pytest.mark.parametrize("content", FOREIGN, ids=list(FOREIGN))
def test_a_resumed_run_refuses_a_file_that_is_not_a_graphgpt_log(tmp_path, content):
    path = tmp_path / "file"
    path.write_bytes(FOREIGN[content])
    with pytest.raises(UserError, match="is not a graphgpt log") as error:
        MetricsLog(path).check(log_header(new_run_id(), PLAN, save="/ck"), resuming=True)
    assert "\n" not in str(error.value)
    assert path.read_bytes() == FOREIGN[content]


def test_a_resumed_run_refuses_another_runs_log(tmp_path):
    path = tmp_path / "run.jsonl"
    written_log(path, log_header("first-run", PLAN, save="/a"), [1, 2])
    before = path.read_bytes()
    with pytest.raises(UserError, match="is the log of run 'first-run', not of this run 'second-run'"):
        MetricsLog(path).check(log_header("second-run", PLAN, save="/b"), resuming=True)
    assert path.read_bytes() == before


@pytest.mark.parametrize("resuming", [False, True], ids=["new run", "resumed run"])
def test_a_symbolic_link_is_refused_and_stays_a_link(tmp_path, resuming):
    target, link = tmp_path / "run.jsonl", tmp_path / "link.jsonl"
    header = log_header("the-run", PLAN, save="/ck")
    written_log(target, header, [1])
    os.symlink(target, link)
    with pytest.raises(UserError, match="is a symbolic link"):
        MetricsLog(link).check(header, resuming=resuming)
    assert link.is_symlink() and os.readlink(link) == str(target)
    os.symlink(tmp_path / "nowhere.jsonl", tmp_path / "dangling.jsonl")
    with pytest.raises(UserError, match="is a symbolic link"):
        MetricsLog(tmp_path / "dangling.jsonl").check(header, resuming=resuming)
    assert not (tmp_path / "nowhere.jsonl").exists()


def test_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UserError, match="is not a regular file"):
        MetricsLog(tmp_path / "fifo").check(log_header("r", PLAN), resuming=True)


# --- as a user runs it --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plan_and_data(tmp_path_factory):
    return word_plan(tmp_path_factory.mktemp("log"))


train = train_numpy


@pytest.mark.parametrize("checkpointed", [False, True], ids=["new run", "run with a checkpoint"])
def test_the_training_text_given_as_log_to_a_resumed_run_is_left_whole(plan_and_data, tmp_path, checkpointed):
    """The data-loss case: `--log d.txt --resume newrun` cut the training text to a few records."""
    if checkpointed:
        assert train(plan_and_data, "--steps", "2", "--save", str(tmp_path / "newrun")).returncode == 0
    text = plan_and_data[1].read_bytes()
    proc = train(plan_and_data, "--steps", "4", "--resume", str(tmp_path / "newrun"), "--log", str(plan_and_data[1]))
    assert_user_error(proc, f"--log {plan_and_data[1]} is not a graphgpt log")
    assert plan_and_data[1].read_bytes() == text


def test_a_resumed_run_continues_its_own_log_and_refuses_another_runs(plan_and_data, tmp_path):
    run, log, other = tmp_path / "run", tmp_path / "run.jsonl", tmp_path / "other.jsonl"
    assert train(plan_and_data, "--steps", "2", "--save", str(run), "--log", str(log)).returncode == 0
    assert train(plan_and_data, "--steps", "1", "--log", str(other)).returncode == 0
    before = other.read_bytes()
    proc = train(plan_and_data, "--steps", "4", "--resume", str(run), "--log", str(other))
    assert_user_error(proc, f"--log {other} is the log of run")
    assert other.read_bytes() == before
    os.symlink(log, tmp_path / "link.jsonl")
    proc = train(plan_and_data, "--steps", "4", "--resume", str(run), "--log", str(tmp_path / "link.jsonl"))
    assert_user_error(proc, "is a symbolic link")
    assert (tmp_path / "link.jsonl").is_symlink()
    proc = train(plan_and_data, "--steps", "4", "--resume", str(run), "--log", str(log))
    assert proc.returncode == 0, proc.stderr
    records = lines(log)
    assert records[0]["graphgpt_log"] == 1 and records[0]["seed"] == 0 and records[0]["save"] == str(run.resolve())
    assert records[0]["run"] == json.loads((run / "step_00000004" / "state.json").read_text())["run"]
    assert [r["step"] for r in records[1:]] == [1, 2, 3, 4]


def test_a_log_another_run_makes_after_the_check_is_left_to_it(tmp_path):
    """Two new runs with one --log: both find the name free, the first to make the file keeps it,
    and the second is refused in one line instead of writing over it or into it."""
    path = tmp_path / "run.jsonl"
    log = MetricsLog(path)
    log.check({"run": "mine"})
    path.write_text('{"graphgpt_log": 1, "run": "theirs"}\n')
    with pytest.raises(UserError, match="was made by another run meanwhile"):
        log.open({"graphgpt_log": 1, "run": "mine"})
    assert path.read_text() == '{"graphgpt_log": 1, "run": "theirs"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.jsonl"]


def test_a_rewrite_a_kill_cut_short_is_cleared_by_the_next_open(tmp_path):
    """A resumed run rewrites its log through a temporary beside it; a kill mid-write leaves that
    temporary, named with the dead writer's pid, which the next run removes. A live writer's, and
    a file of the user's of another name, stay."""
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "run.jsonl"
    left = tmp_path / f".run.jsonl.{int(dead.stdout)}.k3j_x9.tmp"
    live = tmp_path / f".run.jsonl.{os.getpid()}.a1b2c3.tmp"
    mine = tmp_path / ".run.jsonl.notes.tmp"
    for f in (left, live, mine):
        f.write_text("{")
    log = MetricsLog(path)
    log.check({"run": "r"})
    log.open({"graphgpt_log": 1, "run": "r"})
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, live.name, mine.name])
