"""Who is training: one process (`SingleProcess`), or one rank of a data-parallel MPI job
(`MPIWorld`, on mpi4py), and the training step split over the ranks (`DataParallel`).

`init_world()` returns an MPIWorld only when an MPI launcher started the process
(`mpirun -n N numformer train ...`), so a plain run never imports mpi4py. The session
(numformer.training.session) holds the world; the training step of a process alone never meets
it. Only an MPI rank's Trainer computes its gradients through DataParallel, which answers the
same calls as the single process's numformer.training.loop.ThisProcess and wraps one: each rank
computes its rows of the global batch (`shard`) with it, then the ranks sum.

Data-parallel training needs four collectives, all over COMM_WORLD:

    allreduce_sum(flat)      the gradient step: one in-place MPI_Allreduce(SUM) over the whole flat
                             gradient buffer (every parameter's gradient is a view into it). Each
                             rank has already scaled its loss gradient by its share of the global
                             batch, so the sum IS the global-batch mean.
    allreduce_scalar(x)      a float64 sum (losses); allreduce_any(flag): true if any rank's is
    bcast(obj)               rank 0's Python object on every rank (config, data, checkpoint)
    barrier()

Failures. A rank that stops while the others wait in a collective would hang the job, so the
command runs inside `world.guard("numformer train")`: an exception that escapes it prints ONE line
on stderr naming the rank (`numformer train: rank 1 of 2: error: ...`; a traceback first for a
programming error) and calls MPI_Abort, which makes the launcher kill every rank and exit with
the error's status at once. MPICH's MPI_Abort prints a line of its own ("Abort(2) on node 0 ...
application called MPI_Abort"); the failing rank points its stdout and stderr at /dev/null just
before the call, so the user sees numformer's line alone.

A rank that is killed (kill -9, the out-of-memory killer) cannot say anything itself. Inside the
guard each rank has a watcher: a small child process, in the rank's process group, that holds
the read end of a pipe from the rank. When the pipe closes without the rank having written that
it ended in order, the rank died abruptly, and the watcher prints the one line
`numformer train: rank R of N: error: the process was killed ...`. The watcher runs in its own
session, so it outlives its rank; the first one to report leaves a marker file (in the temporary
folder, named after the launcher's process on this host), and so does a rank that fails with an
error, so the watchers of the ranks the launcher then kills stay silent and only the rank that
died first is named. (Ranks on other hosts do not see the marker: their watchers may name
themselves too.) Errors that every rank hits together (a bad flag, a NaN in the all-reduced loss) would
print N copies, so a rank other than 0 waits `GRACE_S` before reporting: if rank 0 failed too, its
abort ends the job first and only rank 0's line is printed. The failing rank also pauses
`FORWARD_S` between printing and aborting: mpirun forwards output asynchronously and was seen to
drop a line still in flight when the abort arrived.

A hung rank. A rank that neither fails nor dies but stops answering (a deadlock, a stuck file
system, a sleep) would leave the others waiting in a collective forever. The collectives of the
training loop (allreduce_sum, allreduce_scalar, allreduce_any, barrier) are therefore started
non-blocking and waited for with a deadline: HANG_TIMEOUT_S seconds (300), or the number of
seconds in the environment variable NUMFORMER_MPI_TIMEOUT. Before each of them a rank sends every
other rank a note with the collective's number (on a communicator of their own), so a rank that
times out knows who never arrived. The lowest rank that did arrive reports it as its error,
`numformer train: rank 0 of 2: error: rank 1 of 2 stopped answering ...`, and aborts the job; the
others wait REPORT_WAIT_S first, so the line is printed once. Checkpoints are written whole or
not at all (numformer.checkpoint), so the last one stays whole. The setup's bcast (rank 0 reading
the corpus while the others wait) has no deadline: it can legitimately take minutes.

Ctrl-C. mpirun forwards SIGINT to every rank, but each rank would see it at a different point
(rank 0 possibly inside a blocking Allreduce that the others never join). Inside the guard the
first SIGINT only sets a flag; the trainer asks `stop_requested()` (a collective) after each step,
so all ranks stop after the same step and rank 0 saves a consistent checkpoint. A second SIGINT
to a rank aborts the job at once (mpirun too aborts the job on its own second Ctrl-C).

Cores. Unless OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS is set, each rank limits
NumPy's OpenBLAS to its share of the host's cores (cores // ranks on this host, at least 1): N
ranks each running one BLAS thread per core would oversubscribe the host N-fold.

Timing. `allreduce_seconds` / `allreduce_calls` / `allreduce_bytes` accumulate the time spent in the
gradient all-reduce (including waiting for slower ranks); benchmarks/mpi_scaling.py reads them.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings

import numpy as np

from numformer.errors import NonFiniteLoss, NumformerError, UsageError
from numformer.parallel.process import THREAD_VARS, cores, limit_blas_threads

GRACE_S = 1.5  # how long a rank other than 0 waits before reporting its failure (see above)
JOB_MARKER_S = 30  # how long a rank's failure silences the watchers of the other ranks on its host
FORWARD_S = 0.5  # pause between printing the failure and ending, so that mpirun forwards the line
HANG_TIMEOUT_S = 300.0  # a collective of the training loop not done after this long names the missing rank
TIMEOUT_VAR = "NUMFORMER_MPI_TIMEOUT"  # seconds, to set another deadline
SPIN_S = 2.0  # a collective is polled without pause this long (as a blocking one would), then every POLL_S
POLL_S = 0.005
REPORT_WAIT_S = 10.0  # a rank that saw a hang but is not the one to report it waits this long first
_NOTE_TAG = 7


def _mpi():
    import mpi4py

    # The trainer calls MPI from its main thread only; "funneled" avoids MPICH's per-call locking.
    # (No effect if mpi4py.MPI was already imported by someone else.)
    mpi4py.rc.thread_level = "funneled"
    from mpi4py import MPI

    return MPI


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

        @contextlib.contextmanager
        def guarded():
            def on_sigint(signum, frame):
                if self._interrupted:
                    raise KeyboardInterrupt
                self._interrupted = True
                print(f"\n{command}: stopping after this step (Ctrl-C again to quit without saving)",
                      file=sys.stderr, flush=True)

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
    keys = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID", "HYDRA_CONTROL_FD")
    return any(k in os.environ for k in keys)


def init_world():
    """SingleProcess, or an MPIWorld when an MPI launcher started us (needs the `mpi` extra)."""
    if launched_by_mpi():
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            if os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) == "1":
                return SingleProcess()
            # N copies of a single-process run would all write the same out_dir: refuse instead
            raise UsageError("started by an MPI launcher but mpi4py is not installed; "
                             "install it with: pip install '.[mpi]' (in a clone of numformer)") from None
        return MPIWorld()
    return SingleProcess()


def read_on_rank_0(world, read):
    """read() in a process alone (world None or of size 1); under MPI, read() on rank 0 only, its
    result sent to every rank (bcast): ranks never race on a cache, and other hosts need neither
    the corpus nor out_dir."""
    if world is None or world.size == 1:
        return read()
    return world.bcast(read() if world.is_main else None)


def shard(batch_size: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch that rank keeps: sizes differ by at most one when size
    does not divide batch_size (the first batch_size % size ranks get one more)."""
    base, extra = divmod(batch_size, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class DataParallel:
    """The loss and gradient of a global batch over the ranks of `world`: each rank computes its
    own rows with `here` (a numformer.training.loop.ThisProcess: its threads and micro-batches),
    its gradient scaled by its share of the batch, and one all-reduce over the flat gradient
    buffer sums the shares into the global-batch mean on every rank. The same two calls as
    `here`, so the training step reads the same with one process or many."""

    def __init__(self, world, here, *, seed: int, dropout: bool):
        self.world, self.here, self.seed, self.dropout = world, here, seed, dropout

    def loss_and_grad(self, model, x, y, *, step: int) -> float:
        """Mean loss of the global batch (x, y) (B, T) on every rank; the gradient of that mean
        summed into model.grads on every rank."""
        world, B = self.world, len(x)
        lo, hi = shard(B, world.rank, world.size)
        if self.dropout:
            # each rank its own dropout masks (one shared stream would repeat them across ranks),
            # a function of (seed, step, rank) so that a resumed run draws the same ones
            model.rng = np.random.default_rng([self.seed, 1, step, world.rank])
        loss = self.here.loss_and_grad(model, x[lo:hi], y[lo:hi], of=B) if hi > lo else 0.0
        if not math.isfinite(loss):             # name the rank before the sum hides it
            raise NonFiniteLoss(f"loss became {loss} at step {step} on rank {world.rank} of {world.size}")
        world.allreduce_sum(model.grads.flat)
        return world.allreduce_scalar(loss * ((hi - lo) / B))

    def mean_loss(self, model, batches) -> float:
        """The mean over `batches` (global batches) of each one's mean loss, every rank computing
        its rows, then one sum over the ranks."""
        total, n = 0.0, 0
        for x, y in batches:
            lo, hi = shard(len(x), self.world.rank, self.world.size)
            total += self.here.weighted_loss(model, x[lo:hi], y[lo:hi], of=len(x))
            n += 1
        return self.world.allreduce_scalar(total) / n


class HungRank(NumformerError):
    """A rank stopped answering: a collective did not complete before the deadline."""


def hang_timeout() -> float:
    """The deadline for a collective, in seconds: NUMFORMER_MPI_TIMEOUT, else HANG_TIMEOUT_S."""
    text = os.environ.get(TIMEOUT_VAR, "").strip()
    if not text:
        return HANG_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:               # float() refusing the variable's own text: the user's
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{TIMEOUT_VAR} must be a number of seconds > 0, got {text!r}")
    return value


class MPIWorld:
    """This process's place in COMM_WORLD: rank, size, and the collectives the trainer needs."""

    def __init__(self, comm=None):
        self.MPI = _mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.is_main = self.rank == 0
        self.allreduce_seconds = 0.0
        self.allreduce_calls = 0
        self.allreduce_bytes = 0
        self._interrupted = False
        self._command = "numformer"
        self.blas_threads = self._share_cores()
        self.hang_timeout = hang_timeout()
        self._notes = self.comm.Dup()          # "I have reached collective k" (see "A hung rank")
        self._seq = 0                          # collectives started so far
        self._seen = [0] * self.size           # the highest note from each rank
        self._sent = []                        # (request, buffer) of notes in flight
        self._note_in = np.zeros(1, dtype=np.int64)

    def _share_cores(self):
        """Give each rank on this host its share of the cores for BLAS (see limit_blas_threads)."""
        if any(os.environ.get(k) for k in THREAD_VARS):
            return None  # the user chose
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            per_host = local.Get_size()
        finally:
            local.Free()
        return limit_blas_threads(max(1, cores() // per_host))

    def __repr__(self):
        return f"MPIWorld(rank={self.rank}, size={self.size})"

    # -- collectives ---------------------------------------------------------------------------

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        """Sum `buf` over all ranks, in place (MPI.IN_PLACE: no second buffer). Returns buf."""
        if not (isinstance(buf, np.ndarray) and buf.flags.c_contiguous and buf.flags.writeable):
            raise ValueError("allreduce_sum needs a writeable C-contiguous ndarray (the flat gradient buffer)")
        t0 = time.perf_counter()
        self._collective(lambda: self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), "gradient all-reduce")
        self.allreduce_seconds += time.perf_counter() - t0
        self.allreduce_calls += 1
        self.allreduce_bytes += buf.nbytes
        return buf

    def allreduce_scalar(self, value: float) -> float:
        """The float64 sum of `value` over all ranks (NaN anywhere gives NaN everywhere)."""
        a = np.array([value], dtype=np.float64)
        self._collective(lambda: self.comm.Iallreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM), "sum of the losses")
        return float(a[0])

    def allreduce_any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank."""
        a = np.array([1 if flag else 0], dtype=np.int32)
        self._collective(lambda: self.comm.Iallreduce(self.MPI.IN_PLACE, a, op=self.MPI.MAX), "check for Ctrl-C")
        return bool(a[0])

    def bcast(self, obj, root: int = 0):
        """Rank `root`'s object on every rank (pickled; only ever between this job's own ranks)."""
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self._collective(self.comm.Ibarrier, "barrier after the checkpoint")

    # -- a hung rank (see the module docstring) -----------------------------------------------------

    def _collective(self, start, what: str) -> None:
        """Tell the other ranks this one has reached the next collective, start it (a non-blocking
        MPI call) and wait for it; HungRank if it is not done within hang_timeout seconds."""
        self._seq += 1
        note = np.array([self._seq], dtype=np.int64)
        self._sent = [(req, buf) for req, buf in self._sent if not req.Test()]
        for peer in range(self.size):
            if peer != self.rank:
                self._sent.append((self._notes.Isend(note, dest=peer, tag=_NOTE_TAG), note))
        req = start()
        t0 = time.monotonic()
        while not req.Test():
            waited = time.monotonic() - t0
            if waited > self.hang_timeout:
                self._report_hang(what, waited)
            if waited > SPIN_S:
                time.sleep(POLL_S)
        self._read_notes()

    def _read_notes(self) -> None:
        status = self.MPI.Status()
        while self._notes.Iprobe(source=self.MPI.ANY_SOURCE, tag=_NOTE_TAG, status=status):
            src = status.Get_source()
            self._notes.Recv(self._note_in, source=src, tag=_NOTE_TAG)
            self._seen[src] = max(self._seen[src], int(self._note_in[0]))

    def _report_hang(self, what: str, waited: float) -> None:
        self._read_notes()
        missing = [r for r in range(self.size) if r != self.rank and self._seen[r] < self._seq]
        arrived = [r for r in range(self.size) if r not in missing]
        if self.rank != min(arrived):
            time.sleep(REPORT_WAIT_S)    # the lowest rank that arrived reports, and its abort ends the job
        who = ", ".join(f"rank {r}" for r in missing) or "a rank"
        raise HungRank(f"{who} of {self.size} stopped answering: it did not reach the {what} of the others "
                       f"within {self.hang_timeout:g} s ({TIMEOUT_VAR}); the job was stopped")

    # -- stopping ------------------------------------------------------------------------------

    def stop_requested(self) -> bool:
        """Collective: has any rank seen Ctrl-C (SIGINT) since the guard was entered?"""
        return self.allreduce_any(self._interrupted)

    def abort(self, code: int = 1) -> None:
        """End the whole job now: every rank is killed and mpirun exits with `code`.

        MPI_Abort, with this process's stderr and stdout pointed at /dev/null first: everything
        numformer had to say is flushed by then, and MPICH would follow it with a line of its own
        ("Abort(2) on node 0 ... application called MPI_Abort ...")."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self._ended_in_order(failed=True)
        with contextlib.suppress(OSError):
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
        self.comm.Abort(code)
        # MPICH's MPI_Abort can return before the launcher's kill arrives: never run on after it
        time.sleep(5)
        os._exit(code)

    def fail(self, command: str, exc: BaseException) -> None:
        """Report `exc` as this rank's one-line error and abort the job (does not return)."""
        if isinstance(exc, NumformerError):
            what, code = str(exc), exc.exit_code
        elif isinstance(exc, KeyboardInterrupt):
            what, code = "interrupted", 130
        else:
            what, code = f"{type(exc).__name__}: {exc}", 1
        if not self.is_main:
            time.sleep(GRACE_S)  # if rank 0 fails as well, its abort ends the job and this line is not needed
        if not isinstance(exc, (NumformerError, KeyboardInterrupt)):
            traceback.print_exception(exc, file=sys.stderr)  # a bug: show where
        first = what.strip().splitlines()[0] if what.strip() else type(exc).__name__
        print(f"{command}: rank {self.rank} of {self.size}: error: {first}", file=sys.stderr, flush=True)
        # mpirun forwards each rank's output asynchronously and may drop what is still in flight
        # when the abort arrives: give it a moment to pass the message on first
        time.sleep(FORWARD_S)
        self.abort(code)

    @contextlib.contextmanager
    def guard(self, command: str):
        """Run a command so that no rank can leave the others hanging (see the module docstring).

        Inside: the first SIGINT sets the flag stop_requested() reports, ranks other than 0 do not
        print warnings, and an exception that escapes aborts the job with one line from this rank.
        SystemExit(0) passes through (a normal end).
        """
        self._command = command
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        self._start_watcher(command)
        try:
            with warnings.catch_warnings():
                if not self.is_main:
                    warnings.simplefilter("ignore")  # rank 0 shows the same ones
                yield self
        except SystemExit as e:
            if e.code not in (None, 0):
                self.fail(command, NumformerError(f"exited with status {e.code}",
                                                  exit_code=e.code if isinstance(e.code, int) else 1))
            raise
        except BaseException as e:
            self.fail(command, e)
        finally:
            self._ended_in_order()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    _watcher_pipe = None

    def _job_marker(self) -> str:
        """A file that says "a rank of this job has already been named": keyed by the launcher's
        process on this host (the ranks' common parent), fresh for JOB_MARKER_S seconds."""
        return os.path.join(tempfile.gettempdir(), f".numformer-mpi-ended-{os.getppid()}")

    def _start_watcher(self, command: str) -> None:
        """Start this rank's watcher (see the module docstring); nothing happens if it cannot start."""
        line = (f"{command}: rank {self.rank} of {self.size}: error: the process was killed (kill -9, or the "
                f"out-of-memory killer); the job was stopped")
        code = (
            "import os, signal, sys, time\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "if b'ended' in sys.stdin.buffer.read():\n"
            "    sys.exit(0)\n"
            f"marker = {self._job_marker()!r}\n"
            "try:\n"
            f"    if time.time() - os.stat(marker).st_mtime < {JOB_MARKER_S}:\n"
            "        sys.exit(0)\n"        # another rank was named first; the launcher killed this one
            "except OSError:\n"
            "    pass\n"
            "open(marker, 'w').close()\n"
            f"sys.stderr.write({line!r} + '\\n')\n"
            "sys.stderr.flush()\n")
        try:
            # its own session: the launcher kills each rank's process group, and this one must outlive its rank
            proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    close_fds=True, start_new_session=True)
        except OSError:
            return
        self._watcher_pipe = proc.stdin

    def _ended_in_order(self, failed: bool = False) -> None:
        """Tell the watcher that this rank is ending by its own hand (it then stays silent). A rank
        that failed also leaves the job's marker, so that the watchers of the ranks the launcher
        then kills stay silent too."""
        if failed:
            with contextlib.suppress(OSError):
                open(self._job_marker(), "w").close()
        pipe, self._watcher_pipe = self._watcher_pipe, None
        if pipe is None:
            return
        with contextlib.suppress(OSError):
            pipe.write(b"ended")
            pipe.close()

    def _on_sigint(self, signum, frame):
        if self._interrupted:  # the second Ctrl-C: stop the job now, without a checkpoint
            self.fail(self._command, KeyboardInterrupt())
        self._interrupted = True
