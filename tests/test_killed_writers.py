"""compile --out and tools/export_hf.py --out, killed or signalled at an exact instant: the output
path always ends up holding the old result or the new one, whole, and what a dead writer left
beside it is removed by the next run, never a live writer's or another path's.

A tool is run under a wrapper that sends itself a signal right after the Nth call of a named os
function: for SIGKILL, a real kill -9 at that instant."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from graphgpt import plan as plan_io
from graphgpt.fsutil import process_alive
from graphgpt.plan import Plan
from graphgpt.tensor_files import save_safetensors
from graphgpt.train import init_params
from tests.conftest import COMPILE, ROOT, TINY, assert_user_error, run_cli, sets

EXPORT = str(ROOT / "tools" / "export_hf.py")

SIGNAL_AFTER = """
import os, runpy, shutil, signal, sys  # shutil first: its rmtree keeps the os functions it checked at import
sig, name, n = signal.Signals[sys.argv[1]], sys.argv[2], int(sys.argv[3])
real, calls = getattr(os, name), 0
def counted(*args, **kwargs):
    global calls
    result = real(*args, **kwargs)
    calls += 1
    if calls == n:
        os.kill(os.getpid(), sig)
    return result
setattr(os, name, counted)
sys.argv = sys.argv[4:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def signalled(sig: str, function: str, n: int, *tool) -> subprocess.CompletedProcess:
    """Run a tool (its script and arguments) that gets `sig` right after its nth call of os.`function`."""
    return subprocess.run([sys.executable, "-c", SIGNAL_AFTER, sig, function, str(n), *tool], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)


def killed(function: str, n: int, *tool) -> None:
    proc = signalled("SIGKILL", function, n, *tool)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def compile_args(out, *settings, model=ROOT / "model.py"):
    return [COMPILE, str(model), "--out", str(out), *sets([*TINY, *settings])]


def export_args(plan, weights, out):
    return [EXPORT, "--plan", str(plan), "--weights", str(weights), "--out", str(out)]


def snapshot(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A compiled plan, two .safetensors files of its weights and an export of the first."""
    root = tmp_path_factory.mktemp("tiny")
    assert run_cli(*compile_args(root / "plan")).returncode == 0
    plan = Plan(json.loads((root / "plan" / "plan.json").read_text()), "tiny")
    for seed in (0, 1):
        save_safetensors(root / f"weights{seed}.safetensors", init_params(plan, seed))
    assert run_cli(*export_args(root / "plan", root / "weights0.safetensors", root / "export")).returncode == 0
    return root / "plan", root / "weights0.safetensors", root / "weights1.safetensors", root / "export"


def a_dead_pid() -> int:
    return int(subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout)


def mark(directory, beside: str, pid: int) -> None:
    (directory / plan_io.TEMPORARY_MARKER).write_text(f"graphgpt temporary beside {beside}, pid {pid}\n")


# The first os.replace of a compile over a plan moves the old plan aside, the second moves the new
# one in; an export's first three write its files.
MID_SWAP_COMPILE = 1
MID_SWAP_EXPORT = 4


def test_a_compile_killed_mid_swap_has_its_old_plan_put_back_before_anything_else(tmp_path, tiny):
    plan, _, _, _ = tiny
    out = tmp_path / "plan"
    shutil.copytree(plan, out)
    killed("replace", MID_SWAP_COMPILE, *compile_args(out, "lr=1e-3"))
    assert not out.exists() and len(list(tmp_path.glob(".plan.*.old/plan"))) == 1
    broken = tmp_path / "broken.py"  # a compile that fails: the plan is back all the same
    broken.write_text("CONFIG = dict(batch_size=2, block_size=4)\n\n"
                      "def forward(idx, cfg):\n    return undefined_name\n")
    assert_user_error(run_cli(COMPILE, str(broken), "--out", str(out)), "NameError")
    assert snapshot(out) == snapshot(plan)
    assert run_cli(*compile_args(out, "lr=1e-3")).returncode == 0
    assert json.loads((out / "plan.json").read_text())["optimizer"]["lr"] == 1e-3
    assert names(tmp_path) == ["broken.py", "plan"]


@pytest.mark.parametrize("sig,line", [("SIGTERM", "terminated by SIGTERM"), ("SIGINT", "interrupted")])
def test_a_signal_just_after_a_compile_set_the_old_plan_aside_puts_it_back(tmp_path, tiny, sig, line):
    """The signal's exception comes just after the rename: the old plan is moved back, not removed."""
    plan, _, _, _ = tiny
    out = tmp_path / "plan"
    shutil.copytree(plan, out)
    proc = signalled(sig, "replace", MID_SWAP_COMPILE, *compile_args(out, "lr=1e-3"))
    assert proc.returncode == 128 + signal.Signals[sig] and proc.stderr == f"{line}: --out {out} left as it was\n", \
        proc.stderr
    assert names(tmp_path) == ["plan"]
    assert snapshot(out) == snapshot(plan)


def test_a_plan_set_aside_by_a_killed_compile_is_put_back_by_its_reader(tmp_path, tiny):
    plan, weights, _, _ = tiny
    out = tmp_path / "plan"
    shutil.copytree(plan, out)
    killed("replace", MID_SWAP_COMPILE, *compile_args(out, "lr=1e-3"))
    proc = run_cli("-m", "graphgpt.sample", "--plan", str(out), "--init-from", str(weights), "--tokens", "1",
                   "--backend", "numpy")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(out) == snapshot(plan)


def test_an_export_killed_mid_swap_has_its_old_export_put_back_before_anything_else(tmp_path, tiny):
    plan, first, second, export = tiny
    out = tmp_path / "export"
    shutil.copytree(export, out)
    killed("replace", MID_SWAP_EXPORT, *export_args(plan, second, out))
    assert not out.exists() and len(list(tmp_path.glob(".export.*.old/export"))) == 1
    assert_user_error(run_cli(*export_args(plan, plan / "plan.json", out)), "plan.json")  # fails: put back all the same
    assert snapshot(out) == snapshot(export)


@pytest.mark.parametrize("function,n", [("replace", 2), ("replace", MID_SWAP_EXPORT), ("unlink", 1)],
                         ids=["writing the new export", "mid-swap", "removing the old export"])
def test_what_a_killed_export_left_is_removed_by_the_next(tmp_path, tiny, function, n):
    plan, _, second, export = tiny
    out = tmp_path / "export"
    shutil.copytree(export, out)
    killed(function, n, *export_args(plan, second, out))
    assert names(tmp_path) != ["export"]  # the kill left something
    assert run_cli(*export_args(plan, second, out)).returncode == 0
    assert names(tmp_path) == ["export"]
    assert run_cli(*export_args(plan, second, tmp_path / "fresh")).returncode == 0
    assert snapshot(out) == snapshot(tmp_path / "fresh")


def test_a_kill_while_a_set_aside_copy_is_removed_leaves_it_marked(tmp_path, tiny):
    """The set-aside copy's files go before its marker, whatever order the directory lists them in:
    here, under a name that this filesystem lists after the marker."""
    plan, _, second, export = tiny
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / plan_io.TEMPORARY_MARKER).touch()
    for i in range(64):
        (probe / f"export{i}").mkdir()
    listed = [entry.name for entry in os.scandir(probe)]
    after = listed[listed.index(plan_io.TEMPORARY_MARKER) + 1:]
    if not after:
        pytest.skip("this filesystem lists the marker after every other name")
    shutil.rmtree(probe)
    out = tmp_path / after[0]
    shutil.copytree(export, out)
    killed("unlink", 1, *export_args(plan, second, out))
    assert run_cli(*export_args(plan, second, out)).returncode == 0
    assert names(tmp_path) == [out.name]


@pytest.mark.parametrize("sig,function,n", [("SIGTERM", "replace", 2), ("SIGHUP", "replace", MID_SWAP_EXPORT)],
                         ids=["SIGTERM writing the new export", "SIGHUP mid-swap"])
def test_a_signal_during_an_export_is_one_line_and_keeps_the_old_export(tmp_path, tiny, sig, function, n):
    plan, _, second, export = tiny
    out = tmp_path / "export"
    shutil.copytree(export, out)
    proc = signalled(sig, function, n, *export_args(plan, second, out))
    assert proc.returncode == 128 + signal.Signals[sig], proc.stderr
    assert proc.stderr == f"terminated by {sig}: --out {out} left as it was\n"
    assert names(tmp_path) == ["export"]
    assert snapshot(out) == snapshot(export)


def test_a_zombie_writers_leftovers_are_removed(tmp_path, tiny):
    """A writer killed but not yet reaped by its parent is a zombie: gone, though kill(pid, 0) still
    finds it. Here this test is the parent and reaps it only at the end."""
    plan, _, second, export = tiny
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # it has exited; it is not reaped
        assert not process_alive(zombie.pid)
        out = tmp_path / "export"
        shutil.copytree(export, out)
        for name in (".export.z1.staging", ".export.z2.old"):
            shutil.copytree(export, tmp_path / name / "export")
            mark(tmp_path / name, "export", zombie.pid)
        assert run_cli(*export_args(plan, second, out)).returncode == 0
        assert names(tmp_path) == ["export"]
    finally:
        zombie.wait()


def test_only_the_leftovers_of_the_path_written_are_removed(tmp_path, tiny):
    """`.plan.x.*.old` matches `.plan.*`, but its marker names plan.x: compiling plan leaves it, the
    only copy of plan.x, which is put back at plan.x's next reading."""
    plan, weights, _, _ = tiny
    out = tmp_path / "plan"
    shutil.copytree(plan, out)
    other = tmp_path / ".plan.x.k1.old"
    shutil.copytree(plan, other / "plan.x")
    mark(other, "plan.x", a_dead_pid())
    assert run_cli(*compile_args(out)).returncode == 0
    assert names(tmp_path) == [".plan.x.k1.old", "plan"]
    proc = run_cli("-m", "graphgpt.sample", "--plan", str(tmp_path / "plan.x"), "--init-from", str(weights),
                   "--tokens", "1", "--backend", "numpy")
    assert proc.returncode == 0, proc.stderr
    assert names(tmp_path) == ["plan", "plan.x"]
