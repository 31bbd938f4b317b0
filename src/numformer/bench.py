"""`numformer bench`: how fast does a config train on this machine?

It trains the GPT of the given shape for a few iterations on random token ids (no corpus needed)
and reports the median time per iteration, tokens per second, and the achieved model FLOP rate,
next to this machine's matrix-multiply ceiling measured on the spot. One iteration is what
`numformer train` does per step: forward, backward, gradient clipping at 1.0, one AdamW step
(weight decay 0.1 on matrices and embeddings) at a fixed learning rate.

How FLOPs are counted (the rule of the PaLM paper, appendix B, that nanoGPT's estimate_mfu uses):

    FLOPs per token = 6·N + 12·L·T·C

- 6·N: each of the N parameters takes part in one multiply-add (2 FLOPs) in the forward pass and
  two in the backward pass (the gradient of the input and the gradient of the weight). N counts
  every parameter except the learned position table wpe, which is a lookup, not a matmul (with
  sinusoidal positions there is no wpe, so N is every parameter). The token embedding wte is
  counted once: the tied LM head is a real (B·T, C) x (C, V) matmul; the input lookup is not.
- 12·L·T·C: attention's two matmuls, QKᵀ and AV, are 2·T·C FLOPs each per token and layer
  forward (over all heads), times 3 for forward plus backward. Counted over the full T x T square
  (the causal mask's skipped half is not subtracted), as nanoGPT and PaLM count it.
- LayerNorm, GELU, softmax, AdamW and the rest are not counted: they cost memory traffic, not
  FLOPs, and a faster implementation should not look better by doing more of them.

The "ceiling" is the FLOP rate of one large square matmul in NumPy (n = 2048, float32 unless
--dtype float64), which no model made of smaller matmuls can beat with the same BLAS; the share
of it says how much of the machine the model uses. The benchmarks in benchmarks/ use the same
functions, so their numbers and this command's agree.
"""

from __future__ import annotations

import os
import sys
import time


def add_arguments(parser) -> None:
    parser.add_argument("--n_layer", type=int, default=4, help="number of Transformer blocks (default: 4)")
    parser.add_argument("--n_head", type=int, default=4, help="attention heads per block (default: 4)")
    parser.add_argument("--n_embd", type=int, default=128, help="embedding width C (default: 128)")
    parser.add_argument("--block_size", type=int, default=64, help="context length T (default: 64)")
    parser.add_argument("--batch_size", type=int, default=12, help="sequences per step B (default: 12)")
    parser.add_argument("--vocab_size", type=int, default=65, help="vocabulary size V (default: 65, a char corpus)")
    parser.add_argument("--pos_encoding", default="sinusoidal", choices=("sinusoidal", "learned"),
                        help="positional encoding (default: sinusoidal)")
    parser.add_argument("--bias", default="true", choices=("true", "false"),
                        help="biases in Linear and LayerNorm layers (default: true)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="(default: float32)")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default: 3)")
    parser.add_argument("--gemm_n", type=int, default=2048,
                        help="size of the square matmul that measures the ceiling (default: 2048; 0 skips it)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the token ids (default: 0)")
    parser.add_argument("--threads", type=int, default=0, help="threads per step, as numformer train uses (default: 0, one per core)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


# --------------------------------------------------------------------------------- shared measures

def non_embedding_params(config) -> int:
    """N for the FLOP count: every parameter except the learned position table wpe."""
    import math

    from numformer.model.params import gpt_param_shapes

    return sum(math.prod(s) for name, s in gpt_param_shapes(config).items() if name != "transformer.wpe.weight")


def flops_per_token(config) -> int:
    """Training FLOPs per token, 6·N + 12·L·T·C (see the module docstring), with T = block_size."""
    return 6 * non_embedding_params(config) + 12 * config.n_layer * config.block_size * config.n_embd


def gemm_ceiling(n: int = 2048, dtype: str = "float32", reps: int = 5, warmup: int = 1) -> dict:
    """FLOP rate of an (n, n) x (n, n) NumPy matmul: the median and best of `reps` timed runs."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    for _ in range(warmup):
        np.matmul(a, b, out=out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n**3
    times.sort()
    med = times[len(times) // 2] if len(times) % 2 else 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2])
    return {"n": n, "dtype": str(dtype), "reps": reps, "median_s": med,
            "gflops": flops / med / 1e9, "best_gflops": flops / times[0] / 1e9}


def peak_rss_bytes():
    """This process's peak resident set size in bytes (ru_maxrss), or None where unavailable."""
    try:
        import resource
    except ImportError:   # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024   # macOS: bytes, Linux: KiB


def blas_info() -> dict:
    """NumPy's BLAS library and its thread count (via threadpoolctl when it is installed)."""
    import numpy as np

    info = {"numpy": np.__version__, "blas": None, "blas_threads": None}
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{deps.get('name')} {deps.get('version')}"
    except Exception:  # older NumPy without mode="dicts": leave it unknown
        pass
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            info["blas_threads"] = pools[0].get("num_threads")
            info["blas_arch"] = pools[0].get("architecture")
    except ImportError:
        pass
    if info["blas_threads"] is None:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            if os.environ.get(var):
                info["blas_threads"] = f"{os.environ[var]} ({var})"
                break
    return info


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux) and the number of usable cores."""
    import platform

    name = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return f"{name}, {cores} cores"


# --------------------------------------------------------------------------------- the measurement

def measure(config, *, batch_size: int, dtype: str = "float32", iters: int = 20, warmup: int = 3,
            seed: int = 0, threads: int = 0) -> dict:
    """Train `config` for warmup + iters steps on random tokens; per-iteration wall times and rates."""
    import numpy as np

    from numformer.model.gpt import GPT
    from numformer.optim import AdamW
    from numformer.optim.clip import clip_grad_norm
    from numformer.runtime import cores, tune_malloc

    tune_malloc()
    threads = threads or cores()
    model = GPT(config, dtype=np.dtype(dtype), seed=seed)
    opt = AdamW(model.params.flat, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1,
                decay_mask=model.decay_mask(), threads=threads)
    rng = np.random.default_rng([seed, 0])
    T, V = config.block_size, config.vocab_size
    times, losses = [], []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        ids = rng.integers(0, V, size=(batch_size, T + 1))      # (B, T+1) random tokens
        x, y = ids[:, :-1], ids[:, 1:]
        model.zero_grad()
        loss = model.loss_and_grad(x, y, threads=threads)   # as Trainer.step does
        clip_grad_norm(model.grads.flat, 1.0)
        opt.step(model.grads.flat)
        dt = time.perf_counter() - t0
        losses.append(loss)
        if i >= warmup:
            times.append(dt)
    times.sort()
    n = len(times)
    med = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    tokens = batch_size * T
    fpt = flops_per_token(config)
    return {"params": model.num_params(), "flops_params": non_embedding_params(config),
            "flops_per_token": fpt, "iters": iters, "warmup": warmup, "ms_per_iter": 1000 * med,
            "ms_min": 1000 * times[0], "ms_max": 1000 * times[-1], "tokens_per_sec": tokens / med,
            "gflops": fpt * tokens / med / 1e9, "first_loss": losses[0], "last_loss": losses[-1],
            "threads": threads}


def _fmt_bytes(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def main(args) -> int:
    from numformer.errors import UsageError
    from numformer.model.config import GPTConfig

    for name in ("iters", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.gemm_n < 0:
        raise UsageError("--warmup and --gemm_n must be >= 0")
    config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, bias=args.bias == "true",
                       pos_encoding=args.pos_encoding)
    if not args.json:
        print(f"numformer bench: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, "
              f"block {config.block_size}, batch {args.batch_size}, vocab {config.vocab_size}, "
              f"{config.pos_encoding} positions, {args.dtype}", flush=True)
    r = measure(config, batch_size=args.batch_size, dtype=args.dtype, iters=args.iters, warmup=args.warmup,
                seed=args.seed, threads=args.threads)
    gemm = gemm_ceiling(args.gemm_n, args.dtype) if args.gemm_n else None
    r["rss_bytes"] = peak_rss_bytes()
    r["ceiling_gflops"] = gemm["gflops"] if gemm else None
    r["share_of_ceiling"] = r["gflops"] / gemm["gflops"] if gemm else None
    machine = {"cpu": cpu_model(), **blas_info()}
    if args.json:
        import json

        print(json.dumps({"config": config.to_dict(), "batch_size": args.batch_size, "dtype": args.dtype,
                          **r, "gemm": gemm, "machine": machine}))
        return 0
    gemm_name = "sgemm" if args.dtype == "float32" else "dgemm"
    rows = [
        ("machine", f"{machine['cpu']}; NumPy {machine['numpy']}, {machine['blas'] or 'BLAS ?'}, "
                    f"{machine['blas_threads'] or '?'} BLAS threads"),
        ("threads / step", f"{r['threads']} (the batch and the AdamW update are split over them, as numformer train does)"),
        ("parameters", f"{r['params']:,} (N = {r['flops_params']:,} without position embeddings)"),
        ("time / iteration", f"{r['ms_per_iter']:,.1f} ms (median of {args.iters} after {args.warmup} warm-up; "
                             f"min {r['ms_min']:,.1f}, max {r['ms_max']:,.1f})"),
        ("tokens / s", f"{r['tokens_per_sec']:,.0f} ({args.batch_size} x {config.block_size} tokens per iteration)"),
        ("model GFLOP/s", f"{r['gflops']:,.1f} (6N + 12·L·T·C = {r['flops_per_token'] / 1e6:,.2f} MFLOP per token)"),
    ]
    if gemm:
        rows.append((f"{gemm_name} ceiling", f"{gemm['gflops']:,.1f} GFLOP/s (NumPy {gemm['n']}x{gemm['n']} matmul); "
                                             f"the model uses {100 * r['share_of_ceiling']:.0f}% of it"))
    rows.append(("peak memory", _fmt_bytes(r["rss_bytes"]) + " resident"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0
