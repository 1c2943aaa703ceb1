import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The seed's corpus lives beside the checkout; GRAPHGPT_SEED_CORPUS points elsewhere (a GPU machine).
SEED_CORPUS = Path(os.environ.get("GRAPHGPT_SEED_CORPUS", ROOT.parent / "shared" / "data" / "dummy.txt"))
TINY = ["n_layer=2", "n_head=2", "n_embd=16", "block_size=8", "batch_size=2"]
COMPILE = str(ROOT / "tools" / "compile.py")
# Processes started as a user would: graphgpt from this checkout. Open MPI refuses to start as
# root unless told; MPICH ignores these.
MPI_ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def sets(pairs: list[str]) -> list[str]:
    """--set arguments for tools/compile.py: ["n_layer=2"] -> ["--set", "n_layer=2"]."""
    return [a for p in pairs for a in ("--set", p)]


def pytest_collection_modifyitems(config, items):
    from graphgpt.runtime import cuda_available
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed_corpus() -> Path:
    if not SEED_CORPUS.is_file():
        pytest.skip(f"{SEED_CORPUS} is not present")
    return SEED_CORPUS


def run_cli(*args, cwd=ROOT, timeout=300):
    """Run a command-line entry point as a user would; returns the CompletedProcess."""
    import subprocess
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_user_error(proc, *fragments):
    """Bad input: exit status 2 and one line on stderr, `error: ...`, holding every fragment."""
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
