"""tools/quickstart.py, the README's first command, in a reduced form (30 steps instead of 800):
it compiles, shows the commands it runs, trains with a held-out loss that falls and prints a
sample. The full run is timed by hand (README: Quick start)."""
import json

import pytest

from tests.conftest import ROOT, assert_user_error, run_cli, run_into_head, step_records

TOOL = str(ROOT / "tools" / "quickstart.py")


def test_a_short_quickstart_trains_evaluates_and_samples(tmp_path):
    """Run into a directory that holds an earlier quick start's log: that log stays as it was."""
    out = tmp_path / "qs"
    out.mkdir()
    (out / "log-1.jsonl").write_text("kept\n")
    proc = run_cli(TOOL, "--out", str(out), "--steps", "30", "--backend", "numpy")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    commands = [line for line in lines if line.startswith("$ ")]
    assert commands[0].startswith("$ python ") and "tools/compile.py" in commands[0]
    assert commands[1].startswith("$ OMP_NUM_THREADS=1 python -m graphgpt.run ") and len(commands) == 2
    assert "--set n_layer=2" in commands[0] and "--lr 0.002" in commands[1]
    summary = next(line for line in lines if line.startswith("compiled model.py"))
    assert "2 layers, 128 wide" in summary and str(out / "plan" / "report.txt") in summary
    assert (out / "plan" / "report.txt").is_file() and "arena" not in proc.stdout  # the report is in its file
    evaluations = [r["val_loss"] for r in map(json.loads, (out / "log-2.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert (out / "log-1.jsonl").read_text() == "kept\n"
    assert len(evaluations) == 2 and evaluations[-1] < evaluations[0] - 0.5
    curve = next(line for line in lines if line.startswith("held-out loss: "))
    assert curve == f"held-out loss: {evaluations[0]:.2f} (step 0), {evaluations[1]:.2f} (step 30)"
    assert any(line.startswith("sample (300 tokens") for line in lines)


def test_bad_steps_are_one_line():
    assert_user_error(run_cli(TOOL, "--steps", "0"), "--steps must be at least 1")


def test_cuda_without_a_gpu_is_refused_before_the_compile(tmp_path):
    from graphgpt.runtime import cuda_available
    if cuda_available():
        pytest.skip("this machine has the GPU the test is about lacking")
    assert_user_error(run_cli(TOOL, "--out", str(tmp_path / "qs"), "--backend", "cuda"), "no NVIDIA GPU visible to CuPy")
    assert not (tmp_path / "qs").exists()


def test_a_closed_stdout_does_not_stop_it(tmp_path):
    """`| head -1`: the reader goes after the first command line; compile, run and log go on."""
    code, err = run_into_head(TOOL, "--out", str(tmp_path / "qs"), "--steps", "5", "--backend", "numpy")
    assert code == 0 and err == "", err
    assert [r["step"] for r in step_records(tmp_path / "qs" / "log-1.jsonl")] == [0, 1, 2, 3, 4, 5]
