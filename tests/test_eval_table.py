"""tools/eval_table.py: a log's evaluations as a table, read through graphgpt/runlog.py."""
import json

from tests.conftest import DEEP_JSON, ROOT, assert_user_error, run_cli

TOOL = str(ROOT / "tools" / "eval_table.py")


def test_rows_best_and_a_cut_last_line(tmp_path):
    log = tmp_path / "run.jsonl"
    records = [{"graphgpt_log": 1, "run": "r"}, {"step": 0, "train_loss": 2.0, "val_loss": float("nan")},
               {"step": 1, "loss": 2.1, "lr": 1e-3}, {"step": 5, "loss": 1.9, "train_loss": 1.8, "val_loss": 1.95}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 9, "loss": 1.')
    proc = run_cli(TOOL, str(log))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines() == [
        "  step batch loss train windows  held out",
        "     0          -        2.0000       nan",
        "     5     1.9000        1.8000    1.9500",
        "best held-out loss 1.9500 at step 5",
        f"{log}: its last line was cut short (a run killed while writing it) and is left out"]


def test_values_beyond_floats_range_are_shown_as_infinite(tmp_path):
    log = tmp_path / "run.jsonl"
    log.write_text('{"step": 4, "loss": 1' + "0" * 400 + ', "train_loss": -1' + "0" * 400 + ', "val_loss": 2.5}\n')
    proc = run_cli(TOOL, str(log))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines()[1:] == ["     4        inf          -inf    2.5000", "best held-out loss 2.5000 at step 4"]


def test_help_and_bad_input(tmp_path):
    proc = run_cli(TOOL, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: tools/eval_table.py")
    (tmp_path / "text.jsonl").write_text("step loss\n")
    assert_user_error(run_cli(TOOL, str(tmp_path / "text.jsonl")), "text.jsonl:1: not JSON")
    (tmp_path / "deep.jsonl").write_text(DEEP_JSON + "\n")
    assert_user_error(run_cli(TOOL, str(tmp_path / "deep.jsonl")), "deep.jsonl:1: not JSON (arrays or objects nested too deeply)")
    assert_user_error(run_cli(TOOL, str(tmp_path / "missing.jsonl")), "cannot read")
    assert_user_error(run_cli(TOOL), "the following arguments are required: RUN.jsonl")
