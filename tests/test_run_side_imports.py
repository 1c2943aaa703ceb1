"""The run side reads the plan and nothing of the compiler: training a plan on the NumPy backend,
as `graphgpt.run` does, imports no module of the compile half: of a kernel family, only its
NumPy references."""
import re
import subprocess
import sys

from tests.conftest import COMPILE, ROOT, TINY, sets

COMPILE_HALF = ("graphgpt.ops", "graphgpt.passes", "graphgpt.optim", "graphgpt.compiler", "graphgpt.codegen",
                "graphgpt.kernels", "graphgpt.ir", "graphgpt.autodiff", "graphgpt.dsl", "graphgpt.reference",
                "graphgpt.viz", "graphgpt.target", "graphgpt.compile_cli", "graphgpt.model_file",
                "graphgpt.plan_assembly", "graphgpt.compile_report", "graphgpt.lowering")
FAMILY_COMPILE_PARTS = re.compile(r"graphgpt\.families\.\w+\.(ops|lowering)")

TRAIN = """
import sys
import numpy as np
from graphgpt import plan as plan_io
from graphgpt.data import SequentialSampler
from graphgpt.run import main  # noqa: F401  (the command, with everything it imports)
from graphgpt.runtime import make_backend
from graphgpt.train import Trainer
plan = plan_io.load(sys.argv[1])
backend = make_backend("numpy", plan)
tokens = np.arange(200, dtype=np.int32) % plan.config["vocab_size"]
trainer = Trainer(plan, backend, SequentialSampler(tokens, plan.config["batch_size"], plan.config["block_size"]))
print([round(m["loss"], 4) for m in trainer.steps(2)])
print(" ".join(sorted(m for m in sys.modules if m.startswith("graphgpt"))))
"""


def test_training_imports_nothing_of_the_compiler(tmp_path):
    env_args = dict(cwd=ROOT, capture_output=True, text=True, timeout=300)
    plan = tmp_path / "plan"
    assert subprocess.run([sys.executable, COMPILE, "model.py", "--out", str(plan), *sets(TINY)], **env_args).returncode == 0
    proc = subprocess.run([sys.executable, "-c", TRAIN, str(plan)], **env_args)
    assert proc.returncode == 0, proc.stderr
    losses, modules = proc.stdout.splitlines()
    assert len(eval(losses)) == 2
    loaded = modules.split()
    assert {"graphgpt.runtime.numpy_backend", "graphgpt.families.attention.reference"} <= set(loaded)
    assert not [m for m in loaded if m.startswith(COMPILE_HALF) or FAMILY_COMPILE_PARTS.fullmatch(m)], loaded


NARROW_FLOATS_UNUSED = """
import sys
from graphgpt.compile_cli import main
status = main(sys.argv[1:])
print(status, "ml_dtypes" in sys.modules)
"""


def test_a_float32_plan_compiles_and_trains_without_importing_ml_dtypes(tmp_path):
    """ml_dtypes gives NumPy bf16 and E4M3, and takes over a second to import on a slow machine;
    a plan without them compiles and trains without it, so the commands, and their one-line
    refusals of bad input, answer at once."""
    env_args = dict(cwd=ROOT, capture_output=True, text=True, timeout=300)
    plan = tmp_path / "plan"
    proc = subprocess.run([sys.executable, "-c", NARROW_FLOATS_UNUSED, "model.py", "--out", str(plan), *sets(TINY)], **env_args)
    assert proc.stdout.split()[-2:] == ["0", "False"], proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-c", TRAIN + 'print("ml_dtypes" in sys.modules)', str(plan)], **env_args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "False", proc.stdout
