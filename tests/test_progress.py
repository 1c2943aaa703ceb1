"""The progress lines: elapsed time, and the time left estimated from the steps after the first."""
import io

from graphgpt.monitor import Progress, duration
from tests.conftest import COMPILE, ROOT, TINY, run_cli, sets


def step(n: int, ms: float) -> dict:
    return {"step": n, "loss": 1.0, "lr": 1e-3, "grad_norm": 0.5, "ms": ms, "tokens_per_s": 1000.0}


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (0.04, 12.34, 59.96, 65, 3599, 3599.7, 7380)] == \
        ["0.0s", "12.3s", "1m00s", "1m05s", "59m59s", "1h00m", "2h03m"]


def test_the_estimate_leaves_out_the_first_steps():
    """The first steps carry one-time work (here 5 s each); the estimate is the steps left at the
    mean of the later steps (0.1 s each)."""
    out = io.StringIO()
    progress = Progress(100, stream=out)
    for n in range(1, 11):
        progress.update(step(n, 5000.0 if n <= Progress.WARMUP_STEPS else 100.0))
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("s elapsed") and "ETA" not in lines[0]  # step 1: nothing to estimate from yet
    assert lines[-1].startswith("step  10/100") and lines[-1].endswith(", ETA 9.0s")  # 90 steps x 0.1 s
    for n in range(11, 101):
        progress.update(step(n, 100.0))
    assert out.getvalue().splitlines()[-1].startswith("step 100/100") and "ETA" not in out.getvalue().splitlines()[-1]


def test_the_estimate_follows_the_recent_steps():
    out = io.StringIO()
    progress = Progress(1000, stream=out)
    for n in range(1, 201):
        progress.update(step(n, 10.0 if n <= 100 else 20.0))
    assert out.getvalue().splitlines()[-1].endswith("ETA 16.0s")  # 800 steps at the latest 20 ms


def test_a_run_shows_elapsed_time_and_eta(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "plan"), "--data", str(corpus), *sets(TINY))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("-m", "graphgpt.run", "--plan", str(tmp_path / "plan"), "--data", str(corpus), "--steps", "20",
                   "--backend", "numpy", "--generate", "0")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/20", "2/20", "4/20", "6/20", "8/20", "10/20", "12/20", "14/20",
                                                   "16/20", "18/20", "20/20"]
    assert all(" elapsed, ETA " in line for line in lines[2:-1]), lines
    assert lines[-1].endswith(" elapsed"), lines[-1]
