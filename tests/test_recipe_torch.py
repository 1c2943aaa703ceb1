"""tools/recipe_torch.py: a plan's training run in PyTorch, evaluated as graphgpt.run evaluates."""
import json

import numpy as np
import pytest

from tests.conftest import COMPILE, ROOT, TINY, assert_user_error, run_cli, sets

pytest.importorskip("torch")
TOOL = str(ROOT / "tools" / "recipe_torch.py")
RECIPE = ["optimizer=adamw", "lr=3e-3", "min_lr=3e-4", "lr_schedule=cosine", "warmup_steps=5", "decay_steps=60",
          "weight_decay=0.1", "beta2=0.99"]


@pytest.fixture(scope="module")
def text_and_plan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    words = np.random.default_rng(0).choice(["graph", "kernel", "plan", "stream", "tile", "wave"], 3000)
    text = tmp / "text.txt"
    text.write_text(" ".join(words) + "\n")
    plan = tmp / "plan"
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--data", str(text), "--tokenizer", "char", "--out", str(plan),
                   *sets(TINY + RECIPE))
    assert proc.returncode == 0, proc.stderr
    return text, plan


def records(path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if "val_loss" in r]


def test_pytorch_trains_what_graphgpt_trains(tmp_path, text_and_plan):
    """Without dropout, in float32, from the same weights on the same windows: PyTorch's AdamW run
    gives graphgpt's losses, and the same evaluations."""
    text, plan = text_and_plan
    common = ["--data", str(text), "--val-fraction", "0.1", "--steps", "60", "--eval-every", "30", "--eval-batches", "4"]
    torch_log, graphgpt_log = tmp_path / "torch.jsonl", tmp_path / "graphgpt.jsonl"
    proc = run_cli(TOOL, "--plan", str(plan), *common, "--device", "cpu", "--no-compile", "--log", str(torch_log))
    assert proc.returncode == 0, proc.stderr
    assert "best val loss" in proc.stdout.splitlines()[-1]
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), *common, "--backend", "numpy", "--generate", "0",
                   "--log", str(graphgpt_log))
    assert proc.returncode == 0, proc.stderr
    ours, theirs = records(graphgpt_log), records(torch_log)
    assert [r["step"] for r in theirs] == [r["step"] for r in ours] == [0, 30, 60]
    assert theirs[-1]["val_loss"] < theirs[0]["val_loss"] - 0.5  # it learned
    for a, b in zip(ours, theirs):
        for key in ("loss", "train_loss", "val_loss"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    table = run_cli(str(ROOT / "tools" / "eval_table.py"), str(torch_log))
    assert table.returncode == 0 and "best held-out loss" in table.stdout


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--val-fraction", "0"], "--val-fraction must be between 0 and 1"),
    (["--eval-batches", "0"], "--eval-batches must be at least 1"),
])
def test_bad_arguments_get_one_line_and_status_2(text_and_plan, args, message):
    text, plan = text_and_plan
    assert_user_error(run_cli(TOOL, "--plan", str(plan), "--data", str(text), *args), message)


def test_an_existing_log_is_left_as_it_is(tmp_path, text_and_plan):
    text, plan = text_and_plan
    log = tmp_path / "run.jsonl"
    log.write_text("kept\n")
    proc = run_cli(TOOL, "--plan", str(plan), "--data", str(text), "--log", str(log), "--device", "cpu")
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert log.read_text() == "kept\n"
