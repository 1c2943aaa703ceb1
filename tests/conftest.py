import os
import sys
from pathlib import Path

# Under the test command's parallel workers (pytest -n auto, one per core) each worker and the
# processes it starts do their linear algebra on one thread: OpenBLAS's threads wait by spinning,
# so two workers' threads on the same cores ran the seed's NumPy steps three times slower.
if "PYTEST_XDIST_WORKER" in os.environ:
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The seed's corpus lives beside the checkout; GRAPHGPT_SEED_CORPUS points elsewhere (a GPU machine).
SEED_CORPUS = Path(os.environ.get("GRAPHGPT_SEED_CORPUS", ROOT.parent / "shared" / "data" / "dummy.txt"))
TINY = ["n_layer=2", "n_head=2", "n_embd=16", "block_size=8", "batch_size=2"]
COMPILE = str(ROOT / "tools" / "compile.py")
# JSON nested deeper than json.loads can recurse: every JSON reader takes it as a damaged file
DEEP_JSON = "[" * 100_000 + "]" * 100_000
# Processes started as a user would: graphgpt from this checkout. Open MPI refuses to start as
# root unless told; MPICH ignores these.
MPI_ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def sets(pairs: list[str]) -> list[str]:
    """--set arguments for tools/compile.py: ["n_layer=2"] -> ["--set", "n_layer=2"]."""
    return [a for p in pairs for a in ("--set", p)]


# The longest module (fifty NumPy steps of the seed's model) runs first, so that the test command's
# parallel workers (pytest -n auto) end together instead of waiting on it at the end.
FIRST = "tests/test_seed_workload.py"


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(FIRST))  # stable: the rest keep their order
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


def run_cli(*args, cwd=ROOT, timeout=300, bound_by_file_modes=False):
    """Run a command-line entry point as a user would; returns the CompletedProcess. With
    `bound_by_file_modes`, a root process meets file and directory modes as any other user does."""
    import subprocess
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_without_root_file_access if bound_by_file_modes else None)


def _without_root_file_access() -> None:
    """In a child about to exec: drop the capabilities by which root passes file modes
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from the bounding set, which an exec as root draws its
    capabilities from. Without root there is nothing to drop."""
    if os.geteuid() != 0:
        return
    import ctypes
    prctl, capbset_drop = ctypes.CDLL(None, use_errno=True).prctl, 24
    for cap in (1, 2):
        if prctl(capbset_drop, cap, 0, 0, 0) != 0:
            os._exit(77)  # the test sees status 77 and skips: this machine lets no process drop them


def word_plan(base: Path, *extra: str) -> tuple[Path, Path]:
    """A tiny plan (TINY, then `extra`) compiled into base/plan from a corpus of made-up words,
    base/corpus.txt: (plan directory, corpus)."""
    corpus = base / "corpus.txt"
    corpus.write_text(" ".join(f"w{i % 37} q{i % 11}" for i in range(600)) + ". the end.")
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(base / "plan"), "--data", str(corpus),
                   *sets([*TINY, *extra]))
    assert proc.returncode == 0, proc.stderr
    return base / "plan", corpus


def train_numpy(plan_and_corpus: tuple[Path, Path], *args):
    """python -m graphgpt.run on `word_plan`'s plan and corpus, on the NumPy backend, generating nothing."""
    plan, corpus = plan_and_corpus
    return run_cli("-m", "graphgpt.run", "--plan", str(plan), "--data", str(corpus), "--backend", "numpy",
                   "--generate", "0", *args)


def assert_user_error(proc, *fragments):
    """Bad input: exit status 2 and one line on stderr, `error: ...`, holding every fragment."""
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB filesystem of its own (tmpfs, mounted as root), to fill up: a full disk for real.
    Skipped, with the reason, where this process may not mount one."""
    import subprocess
    mount = tmp_path / "small_fs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip() or 'mount failed'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Path) -> None:
    """Write into `directory` until its filesystem has no byte left. Unbuffered: a buffered file
    would try the refused bytes again when it closes, and raise there."""
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    try:  # the last bytes a 64 KiB write could not take; a tmpfs may have no room left for the file
        with open(directory / "filler_tail", "wb", buffering=0) as f:
            while True:
                f.write(b"\0")
                f.flush()
    except OSError:
        pass


def run_into_head(*args, cwd=ROOT, timeout=300):
    """Run an entry point with its stdout read by `head -1`, which closes the pipe after one line;
    returns (exit status, stderr). A tool that survives this exits 0 with nothing on stderr, or
    with its own one-line error."""
    import subprocess
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tool = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    head = subprocess.Popen(["head", "-1"], stdin=tool.stdout, stdout=subprocess.DEVNULL)
    tool.stdout.close()  # head alone holds the pipe's read end now
    _, err = tool.communicate(timeout=timeout)
    head.wait(timeout=timeout)
    return tool.returncode, err


def step_records(log: Path) -> list[dict]:
    """A run's --log, its steps' records in order (without the header record that opens it)."""
    import json
    return [r for r in map(json.loads, Path(log).read_text().splitlines()) if "step" in r]
