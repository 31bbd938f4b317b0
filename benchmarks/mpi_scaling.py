"""Data-parallel training under MPI: measured tokens/s at 1 and 2 ranks, and a model for N hosts.

    python benchmarks/mpi_scaling.py                 # baby GPT (numformer train's defaults), 20 timed steps
    python benchmarks/mpi_scaling.py --steps 40 --ranks 1,2,3

Each measurement is its own `mpirun -n N python benchmarks/mpi_scaling.py --worker` (each rank
limits OpenBLAS to its share of the cores, as `numformer train` does under MPI), plus a plain
single process (BLAS with its default threads, one per core) for reference. A worker builds a real
`numformer.training.Trainer` with TrainConfig's defaults (4 layers, 4 heads, 128 wide, block 64,
global batch 12, Shakespeare, char tokenizer) and times `Trainer.step()`:

- step: the wall time of one step (forward, backward, Allreduce, clip, AdamW);
- allreduce: time inside `MPIWorld.allreduce_sum` (the gradient all-reduce). On a rank that
  finished its backward early this includes WAITING for the slower rank; the smallest share over
  the ranks is the closest to the cost of the transfer itself;
- opt: clip + AdamW (over the whole buffer on every rank: it does not shrink with N);
- allreduce alone: the same buffer all-reduced right after a barrier (no waiting), median of 30.

The model (what a 2-core box cannot show). Step time on N hosts, one rank per host:

    T(N) = F(B) / N + U + A(N)
    F(B)  forward + backward of the global batch on one rank (measured at N = 1; assumed to
          scale with the rows a rank holds; B/N need not be whole, shard() gives ceil/floor)
    U     clip + AdamW over all P parameters (measured; every rank does it in full)
    A(N)  ring all-reduce of S = 4 bytes x P (float32 gradients):
          2 (N - 1) / N x S / bandwidth  +  2 (N - 1) x latency  +  the local summing cost
          (taken as the measured 2-rank shared-memory all-reduce time, an upper bound for it)

Assumptions: one rank per host, full-duplex links at the nominal rate (no other traffic, no
protocol overhead beyond the latency term; real TCP gets ~90% of line rate), latency 50 us per
message (TCP on an ordinary Ethernet switch), identical hosts as fast as this one, no overlap of
the all-reduce with the backward pass (numformer reduces once, after backward). Tokens/s counts
the global batch: B x block_size tokens per step. A second table keeps the batch PER HOST fixed
instead (global batch B x N: T(N) = F(B) + U + A(N)), the usual way to use more hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LATENCY_S = 50e-6
BANDWIDTHS = {"1 Gbit/s": 1e9 / 8, "10 Gbit/s": 10e9 / 8}


def worker(args) -> None:
    import tempfile

    import numpy as np

    from numformer.parallel.mpi import init_world
    from numformer.training import TrainConfig, Trainer

    world = init_world()
    cfg = TrainConfig.of(out_dir=tempfile.mkdtemp(prefix="mpi_scaling-"), batch_size=args.batch_size)
    tr = Trainer(cfg, world)
    opt_time = [0.0]
    real_opt_step = tr.opt.step

    def opt_step(*a, **kw):
        t0 = time.perf_counter()
        out = real_opt_step(*a, **kw)
        opt_time[0] += time.perf_counter() - t0
        return out

    tr.opt.step = opt_step
    for _ in range(args.warmup):
        tr.step()
    world.barrier()
    ar0 = getattr(world, "allreduce_seconds", 0.0)
    opt_time[0] = 0.0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        tr.step()
        times.append(time.perf_counter() - t0)
    ar = getattr(world, "allreduce_seconds", 0.0) - ar0
    total = float(np.sum(times))
    alone = []
    if world.size > 1:
        buf = tr.model.grads.flat.copy()
        for _ in range(30):
            world.barrier()
            t0 = time.perf_counter()
            world.allreduce_sum(buf)
            alone.append(time.perf_counter() - t0)
    mine = {"rank": world.rank, "step_s": total / args.steps, "allreduce_s": ar / args.steps,
            "opt_s": opt_time[0] / args.steps, "allreduce_alone_s": float(np.median(alone)) if alone else 0.0}
    everyone = world.comm.gather(mine, root=0) if world.size > 1 else [mine]
    if world.is_main:
        print(json.dumps({"ranks": world.size, "params": tr.model.num_params(),
                          "blas_threads": getattr(world, "blas_threads", None),
                          "buffer_bytes": int(tr.model.grads.flat.nbytes), "batch_size": cfg.batch_size,
                          "block_size": cfg.model.block_size, "per_rank": everyone}))


def launch(n: int | None, args, blas_threads: str | None) -> dict:
    here = Path(__file__).resolve()
    env = dict(os.environ)
    if blas_threads:
        env.update(OMP_NUM_THREADS=blas_threads, OPENBLAS_NUM_THREADS=blas_threads, MKL_NUM_THREADS=blas_threads)
    cmd = [sys.executable, str(here), "--worker", "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch_size", str(args.batch_size)]
    if n is not None:
        mpirun = Path(sys.executable).parent / "mpirun"
        cmd = [str(mpirun if mpirun.exists() else "mpirun"), "-n", str(n), *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        sys.exit(f"benchmark run failed ({' '.join(cmd)}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ring_allreduce_s(n: int, nbytes: int, bandwidth: float, local_s: float) -> float:
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * LATENCY_S + local_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch_size", type=int, default=12, help="global batch (TrainConfig's default: 12)")
    p.add_argument("--ranks", default="1,2", help="rank counts to measure on this machine")
    p.add_argument("--hosts", default="1,2,4,8", help="host counts for the model")
    args = p.parse_args()
    if args.worker:
        return worker(args)

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"# numformer data-parallel scaling ({os.cpu_count()} cores, load average {load:.1f} at start)\n")
    runs = {"plain": launch(None, args, None)}
    for n in (int(x) for x in args.ranks.split(",")):
        runs[n] = launch(n, args, None)
    base = runs[1]
    tokens = base["batch_size"] * base["block_size"]
    print(f"baby GPT: {base['params']:,} parameters, gradient buffer {base['buffer_bytes'] / 1e6:.2f} MB (float32), "
          f"global batch {base['batch_size']} x {base['block_size']} tokens\n")
    print("| run | ms/step | tokens/s | Allreduce share of step (min-max over ranks) | Allreduce alone |")
    print("|---|---:|---:|---:|---:|")
    for key, r in runs.items():
        pr = r["per_rank"]
        step = max(x["step_s"] for x in pr)
        shares = [x["allreduce_s"] / x["step_s"] for x in pr]
        label = ("1 process, no mpirun (BLAS: 1 thread per core)" if key == "plain"
                 else f"mpirun -n {key} (BLAS: {r['blas_threads'] or 'default'} thread(s) per rank)")
        alone = max(x["allreduce_alone_s"] for x in pr)
        print(f"| {label} | {1000 * step:.1f} | {tokens / step:,.0f} | "
              f"{100 * min(shares):.1f}% - {100 * max(shares):.1f}% | "
              + (f"{1000 * alone:.2f} ms |" if alone else "- |"))

    fb = base["per_rank"][0]["step_s"] - base["per_rank"][0]["opt_s"] - base["per_rank"][0]["allreduce_s"]
    upd = base["per_rank"][0]["opt_s"]
    local = max(x["allreduce_alone_s"] for x in runs[2]["per_rank"]) if 2 in runs else 0.0
    nbytes = base["buffer_bytes"]
    print(f"\nmodel inputs (measured at 1 rank): forward+backward F(B) = {1000 * fb:.1f} ms, "
          f"clip+AdamW U = {1000 * upd:.1f} ms; local summing cost {1000 * local:.2f} ms; "
          f"latency {LATENCY_S * 1e6:.0f} us per message\n")
    hosts = [int(x) for x in args.hosts.split(",")]
    header = "| hosts | " + " | ".join(f"{bw}: ms/step, tokens/s, speed-up, all-reduce share" for bw in BANDWIDTHS) + " |"
    print(header)
    print("|---:|" + "---:|" * len(BANDWIDTHS))
    for n in hosts:
        cells = []
        for bw in BANDWIDTHS.values():
            a = ring_allreduce_s(n, nbytes, bw, local)
            t = fb / n + upd + a
            t1 = fb + upd
            cells.append(f"{1000 * t:.1f} ms, {tokens / t:,.0f} tok/s, {t1 / t:.2f}x, {100 * a / t:.0f}%")
        print(f"| {n} | " + " | ".join(cells) + " |")
    print(f"\nthe same with {base['batch_size']} sequences PER HOST (global batch {base['batch_size']} x hosts; "
          "a different run: more tokens per step, same per-host work)\n")
    print(header.replace("speed-up", "tokens/s vs 1 host"))
    print("|---:|" + "---:|" * len(BANDWIDTHS))
    for n in hosts:
        cells = []
        for bw in BANDWIDTHS.values():
            a = ring_allreduce_s(n, nbytes, bw, local)
            t = fb + upd + a
            t1 = fb + upd
            cells.append(f"{1000 * t:.1f} ms, {n * tokens / t:,.0f} tok/s, {n * t1 / t:.2f}x, {100 * a / t:.0f}%")
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
