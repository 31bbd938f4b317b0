"""Who is training: one process, or one rank of an MPI job.

The trainer talks to a `World` and never to MPI directly. `init_world()` returns the single-process
world unless the program was started by mpirun/mpiexec, so a plain `numformer train` never imports
mpi4py.
"""

from __future__ import annotations

import numpy as np


class SingleProcess:
    """The world of one process: rank 0 of 1; every collective is the identity."""

    rank = 0
    size = 1
    is_main = True

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        return buf

    def allreduce_scalar(self, value: float) -> float:
        return value

    def bcast(self, obj):
        return obj

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (checked from the environment only)."""
    import os

    keys = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID", "HYDRA_CONTROL_FD")
    return any(k in os.environ for k in keys)


def init_world():
    if launched_by_mpi():
        try:
            from numformer.mpi import MPIWorld
        except ImportError:
            return SingleProcess()
        return MPIWorld()
    return SingleProcess()
