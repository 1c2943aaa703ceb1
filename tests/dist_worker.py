"""One rank of a data-parallel run for tests/test_distributed.py (started by mpiexec).

usage: dist_worker.py PLAN_DIR TOKENS.npy STEPS OUT_PREFIX [numpy|cuda|cuda-nccl] — trains (NumPy: in
float64) and saves this rank's losses and final parameters to OUT_PREFIX.<rank>.npz. cuda-nccl runs
the gradient allreduce through NCCL even in a world of one rank.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graphgpt import plan as plan_io  # noqa: E402
from graphgpt.data import SequentialSampler  # noqa: E402
from graphgpt.runtime import make_backend  # noqa: E402
from graphgpt.runtime.dist import MpiWorld, current_world  # noqa: E402
from graphgpt.train import Trainer  # noqa: E402

plan_dir, tokens_path, steps, out, backend_name = (sys.argv[1:] + ["numpy"])[:5]
if backend_name == "cuda-nccl":
    world = MpiWorld()
    backend_name, world.force_collectives = "cuda", True
else:
    world = current_world()
plan = plan_io.load(plan_dir)
loader = SequentialSampler(np.load(tokens_path), plan.config["batch_size"], plan.config["block_size"], world.rank, world.size)
backend = make_backend(backend_name, plan, np.float64, world=world)
trainer = Trainer(plan, backend, loader, seed=7, world=world)
losses = [m["loss"] for m in trainer.steps(int(steps))]
np.savez(f"{out}.{world.rank}.npz", losses=np.array(losses),
         **{t["name"]: backend.get_tensor(t["name"]) for t in plan.params})
