"""The learning-rate schedule chosen at run time: flags over the plan's compiled values, decay_steps
= --steps by default, the schedule shown in the first lines and the log's first record, kept by a
checkpoint and changed on resume only by a flag."""
import json

import pytest

from graphgpt.schedule import lr_at
from tests.conftest import (
    COMPILE,
    ROOT,
    TINY,
    assert_user_error,
    run_cli,
    sets,
    step_records,
)

COMPILED = dict(optimizer="adamw", lr=1e-2, min_lr=1e-3, lr_schedule="linear", warmup_steps=2, decay_steps=10000)


@pytest.fixture(scope="module")
def plan_and_corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schedule")
    corpus = tmp / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    options = TINY + [f"{k}={v}" for k, v in COMPILED.items()] + ["beta2=0.99", "weight_decay=0.1"]
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp / "plan"), "--data", str(corpus), *sets(options))
    assert proc.returncode == 0, proc.stderr
    return tmp / "plan", corpus


def train(plan_and_corpus, *args):
    plan, corpus = plan_and_corpus
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--data", str(corpus), "--backend", "numpy",
                   "--generate", "0", *args)
    assert proc.returncode == 0, proc.stderr
    return proc


def header(log) -> dict:
    return json.loads(log.read_text().splitlines()[0])


def expected_rates(schedule: dict, first: int, last: int) -> list[float]:
    return [pytest.approx(lr_at(schedule, t - 1), rel=1e-12) for t in range(first, last + 1)]


def test_the_plans_schedule_decays_over_the_runs_steps(tmp_path, plan_and_corpus):
    log = tmp_path / "m.jsonl"
    proc = train(plan_and_corpus, "--steps", "12", "--log", str(log))
    schedule = dict(COMPILED, decay_steps=12)
    assert [r["lr"] for r in step_records(log)] == expected_rates(schedule, 1, 12)
    assert step_records(log)[-1]["lr"] < 2e-3  # near min_lr at the run's end, not the compiled 10000 steps' lr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("optimizer "))
    assert line == ("optimizer adamw: lr 0.01 -> min_lr 0.001, linear decay, warmup 2, decay_steps 12 (--steps), "
                    "betas 0.9/0.99, eps 1e-08, weight decay 0.1, clip 1")
    assert header(log)["optimizer"] == dict(COMPILED, decay_steps=12, beta1=0.9, beta2=0.99, eps=1e-8,
                                            weight_decay=0.1, grad_clip=1.0, grad_accum=1)


def test_flags_replace_the_compiled_schedule(tmp_path, plan_and_corpus):
    log = tmp_path / "m.jsonl"
    flags = dict(lr=3e-3, min_lr=1e-4, lr_schedule="cosine", warmup_steps=3, decay_steps=8)
    proc = train(plan_and_corpus, "--steps", "10", "--log", str(log),
                 *[a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))])
    assert [r["lr"] for r in step_records(log)] == expected_rates(flags, 1, 10)
    assert step_records(log)[-1]["lr"] == pytest.approx(1e-4)  # past decay_steps: min_lr
    assert "lr 0.003 (--lr) -> min_lr 0.0001 (--min-lr), cosine (--lr-schedule) decay, warmup 3 (--warmup-steps), " \
           "decay_steps 8 (--decay-steps)" in proc.stdout
    assert {k: header(log)["optimizer"][k] for k in flags} == flags


def test_a_resumed_run_keeps_its_schedule_unless_a_flag_changes_it(tmp_path, plan_and_corpus):
    save, log = tmp_path / "ck", tmp_path / "m.jsonl"
    train(plan_and_corpus, "--steps", "4", "--lr", "2e-3", "--save", str(save), "--log", str(log))
    state = json.loads((save / "step_00000004" / "state.json").read_text())
    started = dict(COMPILED, lr=2e-3, decay_steps=4)
    assert state["meta"]["schedule"] == {k: started[k] for k in state["meta"]["schedule"]}
    proc = train(plan_and_corpus, "--steps", "6", "--resume", str(save), "--log", str(log))
    assert "replaces" not in proc.stdout
    assert "lr 0.002 (the checkpoint's)" in proc.stdout and "decay_steps 4 (the checkpoint's)" in proc.stdout
    assert [r["lr"] for r in step_records(log)] == expected_rates(started, 1, 6)
    assert header(log)["optimizer"]["lr"] == 2e-3  # the header of the run the log began with, kept
    proc = train(plan_and_corpus, "--steps", "8", "--resume", str(save), "--min-lr", "5e-4")
    assert "--min-lr 0.0005 replaces the checkpoint's min_lr 0.001" in proc.stdout
    assert "min_lr 0.0005 (--min-lr)" in proc.stdout
    state = json.loads((save / "step_00000008" / "state.json").read_text())
    assert state["meta"]["schedule"]["min_lr"] == 5e-4  # the next resume keeps the change


@pytest.mark.parametrize("key, value, message", [
    ("decay_steps", "many", "state.json"),
    ("lr", 1e308, "lr=1e+308 (the checkpoint's): lr must be a finite number > 0 (float32's normal range"),
], ids=["not a number", "beyond float32"])
def test_a_damaged_saved_schedule_is_refused(tmp_path, plan_and_corpus, key, value, message):
    save = tmp_path / "ck"
    train(plan_and_corpus, "--steps", "3", "--save", str(save))
    state_file = save / "step_00000003" / "state.json"
    state = json.loads(state_file.read_text())
    state["meta"]["schedule"][key] = value
    state_file.write_text(json.dumps(state))
    plan, corpus = plan_and_corpus
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--data", str(corpus), "--backend", "numpy",
                   "--steps", "4", "--resume", str(save))
    assert_user_error(proc, message)
    assert "step " not in proc.stdout


@pytest.mark.parametrize("flags, message", [
    (["--lr", "1e39", "--min-lr", "0"], "--lr 1e+39: lr must be a finite number > 0 (float32's normal range"),
    (["--lr", "1e-39", "--min-lr", "0"], "--lr 1e-39: lr must be a finite number > 0 (float32's normal range"),
])
def test_a_rate_float32_does_not_hold_is_refused(plan_and_corpus, flags, message):
    plan, corpus = plan_and_corpus
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--data", str(corpus), "--backend", "numpy",
                   "--steps", "5", *flags)
    assert_user_error(proc, message)
    assert "step " not in proc.stdout
