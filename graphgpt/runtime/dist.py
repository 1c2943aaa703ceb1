"""Data-parallel processes: who we are, and the few collectives the trainer needs.

A run started by `mpiexec -n N` (MPICH or Open MPI) gets an `MpiWorld`; a plain run gets the
`SingleWorld`, which does nothing, without importing MPI at all. GPU gradients travel over NCCL,
which the CUDA backend bootstraps from this world's communicator.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..errors import UserError

# Variables the common MPI launchers set in every process they start.
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
ABORT_GRACE_S = 0.5  # for the launcher to forward a failing rank's last words

# Set by launchers that start several processes without an MPI world (torchrun, accelerate).
_OTHER_LAUNCHER_SIZE = "WORLD_SIZE"


class SingleWorld:
    rank, size = 0, 1
    force_collectives = False

    def bcast(self, array: np.ndarray) -> None:
        pass

    def allreduce_mean(self, array: np.ndarray) -> None:
        pass

    def mean(self, value: float) -> float:
        return value

    def bcast_object(self, value):
        return value

    def gather(self, value) -> list:
        return [value]

    def abort(self, code: int) -> None:
        raise SystemExit(code)


class MpiWorld:
    # True runs the collectives even in a world of one: the only way a single GPU can exercise the
    # NCCL path (NCCL refuses two ranks on one device). Tests set it.
    force_collectives = False

    def __init__(self):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def bcast(self, array: np.ndarray) -> None:
        """Rank 0's contents into every rank's `array`, in place."""
        self.comm.Bcast(array, root=0)

    def allreduce_mean(self, array: np.ndarray) -> None:
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        array *= 1.0 / self.size

    def mean(self, value: float) -> float:
        return self.comm.allreduce(value, op=self.MPI.SUM) / self.size

    def bcast_object(self, value):
        """Rank 0's `value` (any picklable object) on every rank."""
        return self.comm.bcast(value, root=0)

    def gather(self, value) -> list:
        return self.comm.allgather(value)

    def abort(self, code: int) -> None:
        """End every rank: one failing rank must not leave the others waiting in a collective.

        The launcher forwards each rank's output asynchronously, and an abort can end the ranks
        before it has read the last line of this one (the error that explains the abort), so
        the launcher is given a moment first."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)


def current_world():
    size = next((int(os.environ[v]) for v in _SIZE_VARIABLES if v in os.environ), None)
    if size is None:
        # Each process would train alone and write the same files as the others.
        others = os.environ.get(_OTHER_LAUNCHER_SIZE, "1")
        if others.strip() not in ("", "0", "1"):
            raise UserError(f"{_OTHER_LAUNCHER_SIZE}={others} says this is one of several processes, but "
                            "there is no MPI world: graphgpt runs data-parallel under MPI "
                            "(mpiexec -n N python -m mpi4py -m graphgpt.run ...)")
        return SingleWorld()
    if size <= 1:
        return SingleWorld()
    try:
        return MpiWorld()
    except ImportError:
        raise UserError("started by an MPI launcher but mpi4py is missing: pip install -e '.[mpi]'") from None


def check_same_plan(world, digest: str) -> None:
    digests = world.gather(digest)
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise UserError(f"ranks {', '.join(map(str, odd))} loaded a different plan than rank 0")
