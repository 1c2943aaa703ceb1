"""Every command-line tool survives `| head -1`: exit 0, nothing on stderr, its work done.

Each tool runs twice: with its stdout read by `head -1` (conftest's run_into_head), and with a
reader that has gone before the first line, the limit of `| head -1` that does not depend on how
fast head reads. The tools that need a GPU or minutes of work show their `--help` only.
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from graphgpt.plan import Plan
from graphgpt.tensor_files import save_safetensors
from graphgpt.train import init_params
from tests.conftest import COMPILE, ROOT, TINY, run_into_head, sets
from tests.test_viz import small_graph

# Every script in tools/ that runs as a command (torch_gpt2.py is a module the others import).
TOOLS = sorted(p.name for p in (ROOT / "tools").glob("*.py") if '__name__ == "__main__"' in p.read_text())


def run_with_reader_gone(*args, cwd=ROOT, timeout=300):
    """Run an entry point whose stdout is a pipe nobody reads any more; (exit status, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=timeout)
    finally:
        os.close(write)
    return proc.returncode, proc.stderr


READERS = {"head -1": run_into_head, "reader gone": run_with_reader_gone}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """What the tools read: a tiny plan with weights, a graph dump, and a log with many
    evaluations (more rows than a pipe holds, so `head -1` closes it while the table is written)."""
    root = tmp_path_factory.mktemp("head")
    assert subprocess.run([sys.executable, COMPILE, str(ROOT / "model.py"), "--out", str(root / "plan"), *sets(TINY)],
                          cwd=ROOT, capture_output=True).returncode == 0
    plan = Plan(json.loads((root / "plan" / "plan.json").read_text()), "tiny")
    save_safetensors(root / "weights.safetensors", init_params(plan, 0))
    (root / "graph.json").write_text(json.dumps(small_graph()))
    (root / "run.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 4.0 - s / 1e4, "lr": 1e-3, "grad_norm": 1.0, "ms": 2.0, "tokens_per_s": 8000.0,
                    "train_loss": 4.1 - s / 1e4, "val_loss": 4.2 - s / 1e4}) + "\n" for s in range(3000)))
    return root


def commands(root: Path, out: Path) -> dict[str, tuple[list[str], Path | None]]:
    """name -> (arguments, what the run must leave written in `out`, if anything)."""
    return {
        "eval_table": (["tools/eval_table.py", str(root / "run.jsonl")], None),
        "plot": (["tools/plot.py", str(root / "run.jsonl"), "--out", str(out / "report.html")], out / "report.html"),
        "viz": (["tools/viz.py", str(root / "graph.json"), "--out", str(out)], out / "graph.html"),
        "export_hf": (["tools/export_hf.py", "--plan", str(root / "plan"), "--weights", str(root / "weights.safetensors"),
                       "--out", str(out / "hf")], out / "hf" / "model.safetensors"),
    }


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name", ["eval_table", "plot", "viz", "export_hf"])
def test_a_tool_survives_its_reader_going_away(tmp_path, work, name, reader):
    args, written = commands(work, tmp_path)[name]
    code, err = READERS[reader](*args)
    assert code == 0 and err == "", err
    assert written is None or written.exists()


def test_help_survives_its_reader_going_away():
    """`--help` of every tool, of graphgpt.run and of graphgpt.sample, under both readers; run a
    few at a time (each is a second of imports), failures collected with their stderr."""
    entries = [f"tools/{t}" for t in TOOLS] + ["-m graphgpt.run", "-m graphgpt.sample"]
    cases = [(entry, reader) for entry in entries for reader in READERS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda case: READERS[case[1]](*case[0].split(), "--help"), cases)
        failed = {case: result for case, result in zip(cases, results) if result != (0, "")}
    assert not failed, failed


def test_every_tool_is_covered():
    assert {"bench.py", "trace_step.py", "recipe_torch.py", "prepare.py", "compile.py", "eval_table.py", "plot.py",
            "viz.py", "export_hf.py", "bf16_gradients.py"} <= set(TOOLS)
    assert "torch_gpt2.py" not in TOOLS
