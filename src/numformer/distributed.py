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

    def allreduce_any(self, flag: bool) -> bool:
        return bool(flag)

    def bcast(self, obj):
        return obj

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)

    _interrupted = False

    def stop_requested(self) -> bool:
        """Has Ctrl-C been pressed inside guard()? The trainer asks after each step, so that it
        stops between steps and saves a consistent checkpoint."""
        return self._interrupted

    def guard(self, command: str):
        """Inside: the first SIGINT only sets the flag stop_requested() reports; a second one
        raises KeyboardInterrupt at once. Errors propagate as usual (the CLI prints them)."""
        import contextlib
        import signal
        import threading

        @contextlib.contextmanager
        def guarded():
            def on_sigint(signum, frame):
                if self._interrupted:
                    raise KeyboardInterrupt
                self._interrupted = True
                print(f"\n{command}: stopping after this step (Ctrl-C again to quit without saving)",
                      file=sys.stderr, flush=True)

            import sys

            previous = None
            if threading.current_thread() is threading.main_thread():
                previous = signal.signal(signal.SIGINT, on_sigint)
            try:
                yield self
            finally:
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)

        return guarded()


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (checked from the environment only)."""
    import os

    keys = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID", "HYDRA_CONTROL_FD")
    return any(k in os.environ for k in keys)


def init_world():
    """SingleProcess, or an MPIWorld when an MPI launcher started us (needs the `mpi` extra)."""
    import os

    if launched_by_mpi():
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            if os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) == "1":
                return SingleProcess()
            # N copies of a single-process run would all write the same out_dir: refuse instead
            from numformer.errors import UsageError

            raise UsageError("started by an MPI launcher but mpi4py is not installed; "
                             "install it with: pip install 'numformer[mpi]'") from None
        from numformer.mpi import MPIWorld

        return MPIWorld()
    return SingleProcess()
