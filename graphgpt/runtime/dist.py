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
    variable, size = next(((v, n) for v in _SIZE_VARIABLES if (n := _process_count(v)) is not None), (None, None))
    if size is None:
        # Each process would train alone and write the same files as the others.
        others = _process_count(_OTHER_LAUNCHER_SIZE)
        if others is not None and others > 1:
            raise UserError(f"{_OTHER_LAUNCHER_SIZE}={others} says this is one of several processes, but "
                            "there is no MPI world: graphgpt runs data-parallel under MPI "
                            "(mpiexec -n N python -m mpi4py -m graphgpt.run ...)")
        return SingleWorld()
    if size == 1:
        return SingleWorld()
    try:
        world = MpiWorld()
    except ImportError:
        raise UserError("started by an MPI launcher but mpi4py is missing: pip install -e '.[mpi]'") from None
    if world.size == 1:  # a variable left behind, not a launcher: the other processes do not exist
        raise UserError(f"{variable}={size} says this is one of several processes, but the MPI world has only "
                        "this one; unset it, or start the run with mpiexec -n N")
    return world


def _process_count(variable: str) -> int | None:
    """A launcher's process count from the environment; None where the variable is unset or empty.
    Anything but a whole number >= 1 is refused: guessing one would train alone, or wait forever
    for processes that do not exist."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise UserError(f"{variable}={os.environ[variable]!r} is not a process count (a whole number >= 1); "
                        "launchers set it, so unset it or start the run with its launcher")
    return int(text)


class EveryRankError(UserError):
    """Bad input that every rank finds at once (the ranks' settings differ, and each sees all of
    them; or a setting they share is out of range): rank 0 alone says so, and all of them exit."""


def check_same_run(world, settings: dict) -> None:
    """Refuse a world whose ranks would train differently (another plan, other data, a different
    --steps ...): they would otherwise wait for one another in a collective forever. Names the first
    setting in which a rank differs from rank 0."""
    everyone = world.gather(settings)
    for rank, theirs in enumerate(everyone[1:], start=1):
        for key, ours in everyone[0].items():
            if repr(theirs.get(key)) != repr(ours):  # by repr: nan, a bad value, equals itself
                raise EveryRankError(f"the ranks disagree: rank {rank} has {_shown(key, theirs.get(key))}, rank 0 "
                                    f"{_shown(key, ours)}; every rank of a run needs the same plan, data and settings")


def _shown(key: str, value) -> str:
    return f"{key} {'(not given)' if value is None else value}"
