"""Data-parallel training under MPI: `mpirun -n N numformer train` against the single process.

The expectations come from runs the test makes itself, never from numbers stored here:
- N ranks with global batch B must end where 1 rank with batch B ends (the gradient all-reduce
  sums per-rank gradients pre-scaled by each rank's share of the batch, so only float summation
  order differs). B = 7 on purpose: 2 ranks split it 4 + 3, 3 ranks 3 + 2 + 2.
- resuming a 2-rank run must be bit-identical to not stopping; resuming at another N must match
  to float rounding (the batch RNG draws the GLOBAL batch, whatever N is).
- a rank that raises, turns NaN or is killed must stop the whole job quickly, non-zero, with its
  message, and leave `out_dir/latest` a complete, loadable checkpoint.
Failures are injected by tests/parallel/mpi/driver.py (monkeypatching under mpirun); numformer has no hook.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from numformer.checkpoint import load_checkpoint
from numformer.training import TrainConfig, run

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "driver.py"
# bias=False: the attention KEY bias has an analytically zero gradient (softmax ignores a shift that
# is the same for every key), so its float32 gradient is pure rounding noise, which Adam turns into
# lr-sized steps that differ with the summation order (1e-4 relative in that tensor, harmless: it
# never changes an output). Without it, the weights agree to a few 1e-7.
SMALL = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=7, max_iters=20, eval_interval=4,
             eval_iters=2, warmup_iters=5, lr_decay_iters=40, learning_rate=3e-3, bias=False, sample_tokens=0)
TIMEOUT = 120  # a hung job fails the test instead of hanging CI


def mpirun_path() -> str:
    for cand in (Path(sys.executable).parent / "mpirun", Path(sys.executable).parent / "mpiexec"):
        if cand.exists():
            return str(cand)
    found = shutil.which("mpirun") or shutil.which("mpiexec")
    if not found:
        pytest.fail("mpirun not found: install numformer's mpi extra (pip install '.[mpi]')")
    return found


def flags(d: dict) -> list[str]:
    return [x for k, v in d.items() for x in (f"--{k}", str(v))]


class Lab:
    """One corpus and cache for the module; runs are memoised by name so tests can share them."""

    def __init__(self, root: Path):
        self.root = root
        self.corpus = root / "corpus.txt"
        rng = np.random.default_rng(0)
        words = ["the", "king", "queen", "shall", "not", "be", "my", "lord", "good", "night", "sweet", "prince"]
        lines = [["HAMLET", "OPHELIA", "KING"][i % 3] + ":\n" + " ".join(rng.choice(words, size=8)) + ".\n"
                 for i in range(600)]
        self.corpus.write_text("\n".join(lines), encoding="utf-8")
        self.cache = root / "cache"
        self.mpirun = mpirun_path()
        self.done = {}

    def env(self, **extra):
        e = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_"))}
        # one BLAS thread per rank: 2 ranks on 2 cores must not fight over 4 threads
        e.update(NUMFORMER_CACHE=str(self.cache), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        e.update(extra)
        return e

    def cfg(self, name, **kw) -> dict:
        small = SMALL if kw.get("arch", "gpt2") == "gpt2" else {k: v for k, v in SMALL.items() if k != "bias"}
        return dict(small, data=str(self.corpus), out_dir=str(self.root / name), **kw)

    def single(self, name, *, resume=False, **kw):
        """One process, in this pytest process (no MPI at all)."""
        if name not in self.done:
            run(TrainConfig.of(**self.cfg(name, **kw)), resume=resume, cache_dir=self.cache, plot=False,
                out=open(os.devnull, "w"))
            self.done[name] = self.root / name
        return self.done[name]

    def launch(self, n, args, *, driver=None, env=None, wait=True, **popen):
        cmd = [self.mpirun, "-n", str(n), sys.executable]
        cmd += [str(DRIVER), *driver, "--"] if driver else ["-m", "numformer"]
        cmd += ["train", *args]
        if not wait:
            return subprocess.Popen(cmd, cwd=self.root, env=self.env(**(env or {})), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, **popen)
        return subprocess.run(cmd, cwd=self.root, env=self.env(**(env or {})), capture_output=True, text=True,
                              timeout=TIMEOUT, **popen)

    def mpi(self, name, n, *, resume=False, **kw):
        """`mpirun -n N numformer train ...` that must succeed."""
        if name not in self.done:
            r = self.launch(n, flags(self.cfg(name, **kw)) + ["--no_plot"] + (["--resume"] if resume else []))
            assert r.returncode == 0, r.stderr[-3000:]
            self.done[name] = self.root / name
        return self.done[name]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return Lab(tmp_path_factory.mktemp("mpi"))


def state(out_dir) -> tuple[np.ndarray, dict]:
    """Weights and Adam moments of out_dir/latest as one float64 vector, and its training state."""
    ck = load_checkpoint(Path(out_dir) / "latest")
    parts = [ck.model[k] for k in sorted(ck.model)] + [ck.optimizer["m"], ck.optimizer["v"]]
    return np.concatenate([p.ravel().astype(np.float64) for p in parts]), ck.config["train"]


def rel(a, b) -> float:
    """Relative difference: ||a - b|| / ||b||."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def val_losses(out_dir):
    import json

    return np.array([json.loads(line)["val_loss"] for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()])


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------- N ranks == 1 rank


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-6), ("float64", 1e-12)])
def test_two_ranks_end_where_one_rank_ends(lab, dtype, tol):
    one = lab.single(f"one-{dtype}", dtype=dtype)
    two = lab.mpi(f"two-{dtype}", 2, dtype=dtype)
    init = lab.single(f"init-{dtype}", dtype=dtype, max_iters=0)
    a, sa = state(two)
    b, sb = state(one)
    p0, _ = state(init)
    assert sa["world_size"] == 2 and sb["world_size"] == 1 and sa["iter_num"] == sb["iter_num"] == 20
    assert rel(a, p0) > 1e-3            # the 20 steps moved the weights far more than the tolerance
    assert rel(a, b) < tol, rel(a, b)
    # eval loss is averaged over ranks with their shares (4 + 3 rows): same numbers as one process
    np.testing.assert_allclose(val_losses(two), val_losses(one), rtol=tol)


LLAMA = dict(arch="llama", n_kv_head=1, n_hidden=48)


def test_llama_two_ranks_end_where_one_rank_ends_and_resume_is_bit_identical(lab):
    """--arch llama (2 heads sharing 1 key/value head) under MPI: 2 ranks end where 1 process
    ends (float64), and a 2-rank run stopped at step 8 and resumed ends bit for bit where the
    unstopped one does."""
    a, sa = state(lab.mpi("llama-two", 2, **LLAMA, dtype="float64"))
    b, _ = state(lab.single("llama-one", **LLAMA, dtype="float64"))
    assert sa["world_size"] == 2 and sa["config"]["arch"] == "llama"
    assert rel(a, b) < 1e-12, rel(a, b)
    full, _ = state(lab.mpi("llama-full", 2, **LLAMA))
    part = lab.mpi("llama-part8", 2, **LLAMA, max_iters=8)
    copy_run(part, lab.root / "llama-8-to-20")
    lab.mpi("llama-8-to-20", 2, resume=True, **LLAMA)
    got, st = state(lab.root / "llama-8-to-20")
    assert st["iter_num"] == 20 and np.array_equal(got, full), rel(got, full)


# ------------------------------------------------------------------------------- resume


def test_two_rank_run_stopped_and_resumed_is_bit_identical(lab):
    full, _ = state(lab.mpi("two-float32", 2, dtype="float32"))
    part = lab.mpi("part8", 2, max_iters=8)
    assert state(part)[1]["iter_num"] == 8
    resumed = copy_run(part, lab.root / "part8-to-20")
    lab.done.pop("part8-to-20", None)
    lab.mpi("part8-to-20", 2, resume=True)
    got, st = state(resumed)
    assert st["iter_num"] == 20 and st["world_size"] == 2
    assert np.array_equal(got, full), rel(got, full)
    np.testing.assert_array_equal(val_losses(resumed), val_losses(lab.root / "two-float32"))


def test_resume_at_another_number_of_ranks_continues_the_same_batches(lab):
    full, _ = state(lab.mpi("two-float32", 2, dtype="float32"))
    part = lab.mpi("part8", 2, max_iters=8)
    # 2 ranks -> 3 ranks (B = 7 split 3 + 2 + 2) and 2 ranks -> 1 process
    copy_run(part, lab.root / "2to3")
    lab.mpi("2to3", 3, resume=True)
    copy_run(part, lab.root / "2to1")
    lab.single("2to1", resume=True)
    # 1 process -> 2 ranks
    lab.single("one8", max_iters=8)
    copy_run(lab.root / "one8", lab.root / "1to2")
    lab.mpi("1to2", 2, resume=True)
    for name, n in (("2to3", 3), ("2to1", 1), ("1to2", 2)):
        got, st = state(lab.root / name)
        assert st["iter_num"] == 20 and st["world_size"] == n
        assert rel(got, full) < 1e-6, (name, rel(got, full))


def test_ctrl_c_stops_every_rank_after_the_same_step_and_resume_continues(lab):
    """SIGINT to mpirun (what Ctrl-C does): it forwards it to every rank; all stop after one common
    step, rank 0 saves, exit status 130. Resuming then ends where an uninterrupted run ends."""
    name = "ctrl-c"
    out = lab.root / name
    p = lab.launch(2, flags(lab.cfg(name, max_iters=40)) + ["--no_plot"], driver=["slow", "0", "40"], wait=False)
    try:
        t0 = time.time()
        while not (out / "latest" / "config.json").exists():
            assert p.poll() is None and time.time() - t0 < TIMEOUT, p.communicate()[1][-3000:]
            time.sleep(0.05)
        time.sleep(0.3)
        t_int = time.time()
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=TIMEOUT)
        elapsed = time.time() - t_int
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, stderr[-3000:]
    assert elapsed < 10, elapsed
    st = state(out)[1]
    k = st["iter_num"]
    assert 0 < k < 40, k
    assert f"interrupted at step {k}: checkpoint saved" in stdout
    lab.mpi(name, 2, resume=True, max_iters=40)
    got, st = state(out)
    ref, _ = state(lab.single("one-40", max_iters=40))
    assert st["iter_num"] == 40
    assert rel(got, ref) < 1e-6, rel(got, ref)


# ------------------------------------------------------------------------------- failures


def failing_run(lab, name, driver, max_iters=20):
    mark = lab.root / f"{name}.mark"
    t0 = time.time()
    r = lab.launch(2, flags(lab.cfg(name, max_iters=max_iters)) + ["--no_plot"], driver=driver,
                   env={"NUMFORMER_TEST_MARK": str(mark)})
    t1 = time.time()
    assert mark.exists(), f"the failure was not injected:\n{r.stderr[-3000:]}"
    since_failure = t1 - float(mark.read_text())
    return r, since_failure, t1 - t0


def assert_latest_is_complete(out_dir, step):
    ck = load_checkpoint(Path(out_dir) / "latest")
    assert ck.config["train"]["iter_num"] == step
    assert all(np.isfinite(t).all() for t in ck.model.values())


def test_a_rank_that_raises_stops_the_job_within_seconds(lab):
    r, since, _ = failing_run(lab, "raise", ["raise", "1", "6"])
    assert r.returncode != 0
    assert since < 10, since                  # MPI_Abort: no rank waits in a collective forever
    assert "numformer train: rank 1 of 2: error: RuntimeError: injected failure at step 6" in r.stderr, r.stderr[-3000:]
    assert "rank 0 of 2" not in r.stderr      # rank 0 did nothing wrong and says nothing
    # only rank 0 writes the log: one header, evaluations at steps 0 and 4
    assert r.stdout.count("numformer train:") == 1, r.stdout
    assert "step 4:" in r.stdout and "step 8:" not in r.stdout
    assert_latest_is_complete(lab.root / "raise", 4)


def test_nan_on_one_rank_is_reported_by_that_rank(lab):
    r, since, _ = failing_run(lab, "nan", ["nan", "1", "6"])
    assert r.returncode != 0
    assert since < 10, since
    assert "numformer train: rank 1 of 2: error: loss became nan at step 6 on rank 1 of 2" in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr        # a NumformerError: one line, no traceback
    assert_latest_is_complete(lab.root / "nan", 4)


def test_rank_0_killed_while_writing_a_checkpoint_leaves_the_previous_one_whole(lab):
    """SIGKILL in the middle of the step-4 save (one file of the temporary folder written)."""
    out = lab.root / "killed"
    r, since, _ = failing_run(lab, "killed", ["kill-save", "0", "4"])
    assert r.returncode != 0
    assert since < 10, since
    assert_latest_is_complete(out, 0)
    leftovers = [p for p in out.iterdir() if ".numformer-tmp-" in p.name]
    assert leftovers, sorted(p.name for p in out.iterdir())     # the half-written save ...
    assert not (leftovers[0] / "config.json").exists()           # ... never became `latest`
    lab.mpi("killed", 2, resume=True, max_iters=8)
    assert not [p for p in out.iterdir() if ".numformer-" in p.name]   # the next save cleans up
    got, _ = state(out)
    want, _ = state(lab.mpi("part8", 2, max_iters=8))
    assert np.array_equal(got, want)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_killed_rank_is_named_in_one_line(lab, rank):
    """kill -9 (or the OOM killer) leaves a rank no time to speak: its watcher names it, once."""
    r, since, _ = failing_run(lab, f"kill{rank}", ["kill", str(rank), "6"])
    assert r.returncode != 0
    assert since < 10, since
    lines = [line for line in r.stderr.replace("\r", "\n").splitlines() if "numformer train: rank" in line]
    assert len(lines) == 1, r.stderr[-3000:]
    assert f"numformer train: rank {rank} of 2: error: the process was killed" in lines[0], lines[0]
    assert_latest_is_complete(lab.root / f"kill{rank}", 4)


@pytest.mark.parametrize("rank", [1, 0])
def test_a_hung_rank_is_named_after_the_timeout_and_the_checkpoint_stays_whole(lab, rank):
    """A rank that sleeps (neither fails nor exits): after NUMFORMER_MPI_TIMEOUT seconds the lowest
    rank that is still answering names it in one line and the job ends."""
    name = f"hang{rank}"
    mark = lab.root / f"{name}.mark"
    r = lab.launch(2, flags(lab.cfg(name, max_iters=20)) + ["--no_plot"], driver=["hang", str(rank), "6"],
                   env={"NUMFORMER_TEST_MARK": str(mark), "NUMFORMER_MPI_TIMEOUT": "4"})
    since = time.time() - float(mark.read_text())
    assert r.returncode != 0
    assert 4 <= since < 4 + 15, since         # the deadline, then the report (a non-zero rank's grace)
    lines = [line for line in r.stderr.replace("\r", "\n").splitlines() if "numformer train: rank" in line]
    assert len(lines) == 1, r.stderr[-3000:]
    reporter = 1 - rank
    # (rank 0's progress bar may still be on that line: the hang left it unfinished)
    assert f"numformer train: rank {reporter} of 2: error: rank {rank} of 2 stopped answering" in lines[0], lines[0]
    assert "NUMFORMER_MPI_TIMEOUT" in lines[0]
    assert_latest_is_complete(lab.root / name, 4)


def test_a_bad_mpi_timeout_is_refused(lab):
    r = lab.launch(2, flags(lab.cfg("badtimeout")), env={"NUMFORMER_MPI_TIMEOUT": "soon"})
    assert r.returncode == 2 and "NUMFORMER_MPI_TIMEOUT must be a number of seconds" in r.stderr, r.stderr[-2000:]


def test_bad_input_under_mpi_is_one_line_from_rank_0(lab):
    r = lab.launch(2, flags(lab.cfg("nobatch", batch_size=1)))
    assert r.returncode == 2, r.stderr[-3000:]
    assert "batch_size 1 is smaller than the number of ranks (2)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr     # no MPI_Abort line after ours
    assert "MPI_Abort" not in r.stderr + r.stdout
    # only rank 0 reads the corpus, so a missing one is reported exactly once
    r = lab.launch(2, flags(dict(lab.cfg("nodata"), data=str(lab.root / "missing.txt"))))
    assert r.returncode == 1, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("numformer train:")]
    assert len(lines) == 1 and "rank 0 of 2: error:" in lines[0] and "missing.txt" in lines[0], (r.stderr, r.stdout)


def test_a_plain_run_never_imports_mpi4py(lab):
    code = ("import sys; from numformer import cli; "
            f"rc = cli.main(['train', *{flags(lab.cfg('plain', max_iters=2))!r}, '--no_plot']); "
            "print('mpi4py' in sys.modules, rc)")
    r = subprocess.run([sys.executable, "-c", code], cwd=lab.root, env=lab.env(), capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.stdout.strip().splitlines()[-1] == "False 0", (r.stdout, r.stderr[-2000:])


def test_ranks_on_one_host_share_its_cores_for_blas(lab):
    """N ranks must not each start one OpenBLAS thread per core (N-fold oversubscription)."""
    code = (
        "import ctypes, os, numpy\n"
        "from numformer.parallel.mpi import init_world\n"
        "w = init_world()\n"
        "libs = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'openblas' in l.lower() and '/' in l})\n"
        "got = None\n"
        "for p in libs:\n"
        "    lib = ctypes.CDLL(p)\n"
        "    for name in ('openblas_get_num_threads', 'scipy_openblas_get_num_threads64_', 'openblas_get_num_threads64_'):\n"
        "        if hasattr(lib, name):\n"
        "            got = getattr(lib, name)()\n"
        "row = f'{w.rank} {len(os.sched_getaffinity(0))} {w.blas_threads} {got} {bool(libs)}'\n"
        "open(f'blas-{w.rank}.txt', 'w').write(row)\n")
    env = {k: "" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    r = subprocess.run([lab.mpirun, "-n", "2", sys.executable, "-c", code], cwd=lab.root, capture_output=True,
                       text=True, timeout=TIMEOUT, env={**lab.env(), **env})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [(lab.root / f"blas-{rank}.txt").read_text() for rank in (0, 1)]
    for row in rows:
        rank, cores, set_to, got, found = row.split()
        want = max(1, int(cores) // 2)
        if found == "True":
            assert set_to == str(want) and got == str(want), row
        else:
            assert set_to == "None", row
