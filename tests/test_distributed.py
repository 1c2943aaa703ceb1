"""Data-parallel training across real MPI processes on the NumPy backend."""
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import COMPILE, MPI_ENV, ROOT, TINY, run_cli, sets

pytestmark = pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec (pip install mpich)")
B = 2


def compile_tiny(out, batch):
    overrides = [s for s in TINY if not s.startswith("batch_size")] + [f"batch_size={batch}"]
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(out), *sets(overrides))
    assert proc.returncode == 0, proc.stderr
    return out


def mpiexec(n, *args, timeout=120):
    return subprocess.run(["mpiexec", "-n", str(n), sys.executable, "-m", "mpi4py", *args],
                          cwd=ROOT, env=MPI_ENV, capture_output=True, text=True, timeout=timeout)


def two_ranks_and_one(tmp_path, backend, steps):
    """Train 2 ranks x batch B and 1 rank x batch 2B on the same tokens; their saved results."""
    tokens = np.random.default_rng(0).integers(0, 99, 5000).astype(np.int32)
    np.save(tmp_path / "tokens.npy", tokens)
    worker = str(ROOT / "tests" / "dist_worker.py")
    runs = {}
    for ranks, batch in ((2, B), (1, 2 * B)):
        plan = compile_tiny(tmp_path / f"plan{batch}", batch)
        proc = mpiexec(ranks, worker, str(plan), str(tmp_path / "tokens.npy"), str(steps), str(tmp_path / f"r{ranks}"),
                       backend, timeout=300)
        assert proc.returncode == 0, proc.stderr
        runs[ranks] = [dict(np.load(tmp_path / f"r{ranks}.{r}.npz")) for r in range(ranks)]
    for name in runs[1][0]:  # every rank holds exactly the same parameters
        np.testing.assert_array_equal(runs[2][0][name], runs[2][1][name])
    return runs[2][0], runs[1][0]


def test_two_ranks_equal_one_rank_with_twice_the_batch(tmp_path):
    two, one = two_ranks_and_one(tmp_path, "numpy", steps=5)
    for name, value in one.items():
        np.testing.assert_allclose(two[name], value, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.gpu
def test_nccl_allreduce_inside_the_captured_step(tmp_path):
    """One GPU cannot host two NCCL ranks; a one-rank communicator still runs the whole path:
    buckets on the second stream, events, capture. Averaging over one rank changes nothing."""
    tokens = np.random.default_rng(0).integers(0, 99, 5000).astype(np.int32)
    np.save(tmp_path / "tokens.npy", tokens)
    plan = compile_tiny(tmp_path / "plan", B)
    runs = {}
    for mode in ("cuda", "cuda-nccl"):
        proc = mpiexec(1, str(ROOT / "tests" / "dist_worker.py"), str(plan), str(tmp_path / "tokens.npy"), "5",
                       str(tmp_path / mode), mode, timeout=300)
        assert proc.returncode == 0, proc.stderr
        runs[mode] = dict(np.load(tmp_path / f"{mode}.0.npz"))
    for name, value in runs["cuda"].items():
        np.testing.assert_array_equal(runs["cuda-nccl"][name], value, err_msg=name)


@pytest.mark.gpu
def test_two_ranks_sharing_one_gpu(tmp_path):
    two, one = two_ranks_and_one(tmp_path, "cuda", steps=20)
    np.testing.assert_allclose(two["losses"], one["losses"], atol=1e-3)


@pytest.fixture(scope="module")
def plan_and_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    (tmp / "data.txt").write_text("graphgpt trains on several ranks at once. " * 200)
    return compile_tiny(tmp / "plan", B), tmp / "data.txt"


def test_cli_under_mpiexec(plan_and_data):
    plan, data = plan_and_data
    proc = mpiexec(2, "-m", "graphgpt.run", "--plan", str(plan), "--data", str(data), "--steps", "3",
                   "--backend", "numpy", "--generate", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("trained 3 steps") == 1  # rank 0 alone reports
    assert "2 ranks: global batch 4 x 8" in proc.stdout


def two_commands(first: list[str], second: list[str], **kwargs):
    """mpiexec's MPMD form: rank 0 runs `first`, rank 1 `second` (each a graphgpt.run command line),
    with `kwargs` (e.g. -wdir DIR) given per rank as launcher options."""
    run = [sys.executable, "-m", "mpi4py", "-m", "graphgpt.run"]
    launch = ["mpiexec"]
    for rank, args in enumerate((first, second)):
        launch += [*(["-n", "1"] if rank == 0 else [":", "-n", "1"]), *kwargs.get(f"rank{rank}", []), *run, *args]
    start = time.monotonic()
    proc = subprocess.run(launch, cwd=ROOT, env=MPI_ENV, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 60, "the ranks waited for one another instead of refusing"
    return proc


def assert_refused(proc, *fragments):
    """One line from rank 0, exit status 2 from the launcher, nothing trained."""
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "step " not in proc.stdout


def test_mismatched_plans_fail_fast(plan_and_data, tmp_path):
    plan, data = plan_and_data
    other = compile_tiny(tmp_path / "other", 1)
    run = ["--data", str(data), "--steps", "2", "--backend", "numpy"]
    assert_refused(two_commands([*run, "--plan", str(plan)], [*run, "--plan", str(other)]),
                   "rank 1 has a plan of digest", "rank 0 a plan of digest")


@pytest.mark.parametrize("first,second,named", [
    (["--steps", "3"], ["--steps", "5"], "rank 1 has --steps 5, rank 0 --steps 3"),
    (["--lr", "1e-3"], [], "rank 1 has --lr (not given), rank 0 --lr 0.001"),
    (["--eval-every", "2"], ["--eval-every", "1"], "--eval-every 1, rank 0 --eval-every 2"),
    (["--sampler", "sequential"], ["--sampler", "random"], "--sampler random, rank 0 --sampler sequential"),
], ids=["steps", "lr", "eval-every", "sampler"])
def test_ranks_with_different_settings_are_refused(plan_and_data, first, second, named):
    """Ranks that would take different numbers of steps or collectives wait for each other forever;
    the settings are compared first."""
    plan, data = plan_and_data
    run = ["--plan", str(plan), "--data", str(data), "--backend", "numpy", "--generate", "0"]
    run = [*run, "--steps", "4"]  # a later --steps replaces it
    assert_refused(two_commands([*run, *first], [*run, *second]), named)


def test_a_bad_setting_of_every_rank_is_told_once(plan_and_data):
    plan, data = plan_and_data
    run = ["--plan", str(plan), "--data", str(data), "--backend", "numpy", "--steps", "3", "--lr", "nan"]
    assert_refused(two_commands(run, run), "error: rank 0: --lr nan: lr must be a finite number > 0")


def test_ranks_reading_different_data_under_one_name_are_refused(plan_and_data, tmp_path):
    """The same --data path names other files in each rank's working directory (as on the local
    disks of two hosts): the ranks compare what they read."""
    plan, data = plan_and_data
    for rank, repeat in ((0, 200), (1, 150)):
        (tmp_path / f"r{rank}").mkdir()
        (tmp_path / f"r{rank}" / "data.txt").write_text(data.read_text()[: len(data.read_text()) * repeat // 200])
    run = ["--plan", str(plan), "--data", "data.txt", "--steps", "2", "--backend", "numpy", "--generate", "0"]
    proc = two_commands(run, run, rank0=["-wdir", str(tmp_path / "r0")], rank1=["-wdir", str(tmp_path / "r1")])
    assert_refused(proc, "rank 1 has training tokens", "rank 0 training tokens")


def test_a_killed_rank_ends_the_run(plan_and_data):
    plan, data = plan_and_data
    proc = subprocess.Popen(["mpiexec", "-n", "2", sys.executable, "-m", "mpi4py", "-m", "graphgpt.run",
                             "--plan", str(plan), "--data", str(data), "--steps", "100000", "--backend", "numpy"],
                            cwd=ROOT, env=MPI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8)
        ranks = subprocess.run(["pgrep", "-f", f"graphgpt.run --plan {plan}"], capture_output=True, text=True)
        pids = [int(p) for p in ranks.stdout.split() if int(p) != proc.pid]
        victims = [p for p in pids if "mpiexec" not in open(f"/proc/{p}/cmdline").read()]
        assert victims, "no rank process found"
        subprocess.run(["kill", "-9", str(victims[-1])])
        start = time.monotonic()
        out, err = proc.communicate(timeout=60)
        assert time.monotonic() - start < 60
        assert proc.returncode != 0
        victim = victims[-1]
        assert f"=pid {victim}" in out, "the start-up line maps ranks to pids"
        assert f"PID {victim}" in out + err, "the launcher names the dead process"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
