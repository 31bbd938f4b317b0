"""Fine-tuning with LoRA against fine-tuning every weight, on the same GPT-2-shaped model: step time,
the memory of what training keeps besides the weights (gradients and Adam's two moments), and
each run's resident memory while it trains (VmRSS after the timed steps) and at its peak.

    python benchmarks/finetune_lora.py [--n_layer 4 --n_embd 256 --vocab_size 2048 --block 128
                                        --batch 8 --steps 10 --ranks 4,16 --repeat 2]

A random GPT-2 folder is made with numformer.reference.gpt2_folder (needs torch and transformers), the
tokenizer trained on the built-in Shakespeare corpus. Each configuration runs in a child process
of its own (so that peak RSS is its own): `numformer train --init_from` set up through the
Python API, two warm-up steps, then --steps timed steps; the rounds are interleaved and the
median step time is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def child(a) -> None:
    import resource
    import time

    from numformer.training import Trainer
    from numformer.training.config import resolve

    given = dict(data=a.text, init_from=a.folder, out_dir=a.out, batch_size=a.batch, max_iters=10 ** 6,
                 eval_interval=10 ** 6, threads=1, learning_rate=1e-3, warmup_iters=0)
    if a.rank:
        given.update(lora_rank=a.rank, lora_alpha=2.0 * a.rank)
    cfg, _ = resolve(given)
    tr = Trainer(cfg, cache_dir=a.cache)
    for _ in range(2):
        tr.step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        tr.step()
        times.append(time.perf_counter() - t0)
    state = tr.model.grads.flat.nbytes + tr.opt.m.nbytes + tr.opt.v.nbytes
    status = Path("/proc/self/status").read_text()
    rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024
    print(json.dumps({"ms_per_step": 1000 * statistics.median(times), "trainable": int(tr.model.trainable.size),
                      "params": int(tr.model.num_params()), "state_bytes": state,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "rss_training": rss}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=256)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--vocab_size", type=int, default=2048)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--ranks", default="4,16")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    for hidden in ("text", "folder", "out", "cache"):
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a)
        return

    from numformer.reference.gpt2_folder import make_gpt2_folder

    from numformer.data.corpus import shakespeare

    tmp = Path(tempfile.mkdtemp(prefix="numformer-lora-bench-"))
    text = shakespeare()[:1_000_000]
    (tmp / "train.txt").write_text(text, encoding="utf-8")
    make_gpt2_folder(tmp / "gpt2", text, vocab_size=a.vocab_size, n_layer=a.n_layer, n_head=a.n_head,
                     n_embd=a.n_embd, n_positions=a.block)
    modes = [0] + [int(r) for r in a.ranks.split(",")]
    results = {m: [] for m in modes}
    for _ in range(a.repeat):
        for m in modes:
            cmd = [sys.executable, __file__, "--child", "--rank", str(m), "--text", str(tmp / "train.txt"),
                   "--folder", str(tmp / "gpt2"), "--out", str(tmp / f"out{m}"), "--cache", str(tmp / "cache"),
                   "--batch", str(a.batch), "--steps", str(a.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[m].append(json.loads(out))
    print(f"model: {a.n_layer} layers, {a.n_embd} wide, vocab {a.vocab_size}, block {a.block}; batch {a.batch}, "
          f"one thread, median of {a.steps} steps x {a.repeat} rounds")
    print(f"{'':>12} {'trainable':>10} {'grads+m+v':>10} {'RSS training':>12} {'peak RSS':>9} {'ms/step':>8}")
    for m in modes:
        r = results[m]
        name = "full" if m == 0 else f"LoRA r={m}"
        print(f"{name:>12} {r[0]['trainable']:>10,} {r[0]['state_bytes'] / 2**20:>8.2f}MB "
              f"{statistics.median(x['rss_training'] for x in r) / 2**20:>10.0f}MB "
              f"{statistics.median(x['peak_rss'] for x in r) / 2**20:>7.0f}MB "
              f"{statistics.median(x['ms_per_step'] for x in r):>8.1f}")


if __name__ == "__main__":
    main()
