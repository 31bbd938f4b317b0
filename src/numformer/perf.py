"""Measurements shared by `numformer bench` and benchmarks/: this machine (CPU, BLAS, the sgemm
ceiling, peak memory), a config's FLOPs, a training step's speed, and the matmul floors.

`numformer bench` (numformer.commands.bench) trains the GPT (or, with --arch llama, the Llama) of the given shape for a few
iterations on random token ids (no corpus needed)
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
  A Llama's N leaves out its token embedding when its LM head is a matrix of its own (lm_head,
  counted), and counts it once when tied.
- 12·L·T·C: attention's two matmuls, QKᵀ and AV, are 2·T·C FLOPs each per token and layer
  forward (over all query heads; shared key/value heads do not change it), times 3 for forward
  plus backward. Counted over the full T x T square
  (the causal mask's skipped half is not subtracted), as nanoGPT and PaLM count it.
- LayerNorm, GELU, softmax, AdamW and the rest are not counted: they cost memory traffic, not
  FLOPs, and a faster implementation should not look better by doing more of them.

The "matmul floor" is the time of the iteration's matrix products alone, with the same shapes and
the same split over threads (matmul_floor): what the step would take if LayerNorm, GELU,
softmax, the loss, AdamW and Python cost nothing. Its share of the iteration says how much of the
time is left to win outside the BLAS (`numformer bench --no_floor` skips it).

Decoding (`numformer bench --generate`, generate_speed): the time per token of batch-1 greedy
KV-cached decoding, the bytes of weights each token reads (decode_weight_bytes: every weight
once, as stored, so int8 and bf16 read fewer), and the decode floor, those bytes at this
machine's copy bandwidth (copy_bandwidth): a token cannot be read faster than its weights
stream from memory. (decode_floor, below, is another floor: the float32 products alone, timed.)

The "ceiling" is the FLOP rate of one large square matmul in NumPy (n = 2048, float32 unless
--dtype float64), which no model made of smaller matmuls can beat with the same BLAS; the share
of it says how much of the machine the model uses. The benchmarks in benchmarks/ use the same
functions, so their numbers and this command's agree.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict

import numpy as np

from numformer.model.decoders import build
from numformer.model.generate import generate_tokens
from numformer.model.params import EMBEDDING, GPT2, LLAMA, family_of
from numformer.ops.fast import dispatch
from numformer.ops.fast.attention import query_chunks, score_blocks
from numformer.ops.fast.linear import matmul as linear_matmul
from numformer.optim import AdamW
from numformer.optim.clip import clip_grad_norm
from numformer.parallel.process import blas_threads, cores, tune_malloc
from numformer.parallel.threads import loss_and_grad, parallel


def non_embedding_params(config) -> int:
    """N for the FLOP count: every parameter except the tables that are looked up, not multiplied:
    the GPT's learned position table wpe, and a Llama's token embedding when its LM head is its
    own (tied, the embedding is the head's matrix and counts once)."""
    lookups = {GPT2.name("wpe")} if config.family == "gpt2" else \
        set() if config.tie_embeddings else {LLAMA.name("model.embed_tokens")}
    return sum(math.prod(s) for name, s in family_of(config).shapes(config).items() if name not in lookups)


def block_maps(config) -> list[tuple[int, int]]:
    """(C_in, C_out) of each linear map of one block, in the order the block runs them: the GPT's
    qkv, attention output, MLP's two; a Llama's q, k, v, o, gate, up, down."""
    C = config.n_embd
    if config.family == "gpt2":
        return [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]
    kv, H = config.n_kv_head * config.head_size, config.n_hidden
    return [(C, C), (C, kv), (C, kv), (C, C), (C, H), (C, H), (H, C)]


def flops_per_token(config) -> int:
    """Training FLOPs per token, 6·N + 12·L·T·C (see the module docstring), with T = block_size."""
    return 6 * non_embedding_params(config) + 12 * config.n_layer * config.block_size * config.n_embd


def gemm_ceiling(n: int = 2048, dtype: str = "float32", reps: int = 5, warmup: int = 1) -> dict:
    """FLOP rate of an (n, n) x (n, n) NumPy matmul: the median and best of `reps` timed runs."""
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
    med = statistics.median(times)
    return {"n": n, "dtype": str(dtype), "reps": reps, "median_s": med,
            "gflops": flops / med / 1e9, "best_gflops": flops / times[0] / 1e9}


def peak_rss_bytes():
    """This process's peak resident set size in bytes, or None where unavailable.

    On Linux, VmHWM from /proc/self/status: the high-water mark of this program's own memory.
    Not ru_maxrss there: a process started by another inherits its parent's ru_maxrss through
    fork and exec, so a benchmark child of a 150 MiB parent would report at least 150 MiB
    (docs/performance.md has the measurement)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024             # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:   # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024   # macOS: bytes, Linux: KiB


def blas_info() -> dict:
    """NumPy's BLAS library and its thread count (via threadpoolctl when it is installed), and
    which implementation each fast op runs (numformer.ops.fast.dispatch): "dispatch" has its
    report, row by row; "kernels" and "linear_blas" sum it up in a line each (which compiled
    kernels, which BLAS for the linear maps' products)."""
    info = {"numpy": np.__version__, "blas": None, "blas_threads": None, "kernels": dispatch.kernels_line(),
            "linear_blas": dispatch.linear_line(), "dispatch": [asdict(c) for c in dispatch.report()]}
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{deps.get('name')} {deps.get('version')}"
    except Exception:  # older NumPy without mode="dicts": leave it unknown
        pass
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas" and p.get("internal_api") != "mkl"]
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
    """The CPU's model name (from /proc/cpuinfo on Linux), its widest vector instruction set and
    the number of usable cores: "AMD EPYC, AVX-512, 2 cores"."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and name is None:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = set(line.split(":", 1)[1].split())
                if name and flags:
                    break
    except OSError:
        pass
    isa = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                                           ("sse4_2", "SSE4.2"), ("asimd", "NEON"))
                if flag in flags), None)
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return f"{name}, {isa + ', ' if isa else ''}{cores} cores"


# --------------------------------------------------------------------------------- the measurement

def measure(config, *, batch_size: int, dtype: str = "float32", iters: int = 20, warmup: int = 3,
            seed: int = 0, threads: int = 0) -> dict:
    """Train `config` for warmup + iters steps on random tokens; per-iteration wall times and rates."""
    tune_malloc()
    threads = threads or cores()
    model = build(config, dtype=np.dtype(dtype), seed=seed)       # a GPT or a Llama
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
        loss = loss_and_grad(model, x, y, threads=threads)   # as Trainer.step does
        clip_grad_norm(model.grads.flat, 1.0)
        opt.step(model.grads.flat)
        dt = time.perf_counter() - t0
        losses.append(loss)
        if i >= warmup:
            times.append(dt)
    times.sort()
    med = statistics.median(times)
    tokens = batch_size * T
    fpt = flops_per_token(config)
    return {"params": model.num_params(), "flops_params": non_embedding_params(config),
            "flops_per_token": fpt, "iters": iters, "warmup": warmup, "ms_per_iter": 1000 * med,
            "ms_min": 1000 * times[0], "ms_max": 1000 * times[-1], "tokens_per_sec": tokens / med,
            "gflops": fpt * tokens / med / 1e9, "first_loss": losses[0], "last_loss": losses[-1],
            "threads": threads}


def matmul_floor(config, *, batch_size: int, dtype: str = "float32", threads: int = 0, iters: int = 10,
                 warmup: int = 2, seed: int = 0) -> dict:
    """The matrix products of one training step alone, timed: the least time numformer's current
    decomposition of the step (these products, these shapes, this split over threads) could take
    on this BLAS, with LayerNorm, GELU, softmax, the loss, AdamW and Python itself costing
    nothing. It is not a limit for every design: fewer or larger products, another BLAS, or
    another split of the work can go below it.

    It makes the products the model makes (GPT or Llama), with the same shapes, the same layouts and the same
    split of the batch over `threads` shards (each shard on one BLAS thread, forward products of
    all shards first, then backward ones, as numformer.parallel.threads.loss_and_grad runs them),
    made by the same BLAS (the linear maps' through numformer.ops.fast.linear.matmul); the inputs are random
    and preallocated, the outputs written in place. Per block: its linear maps (block_maps: the
    GPT's four, a Llama's seven), each forward (x Wᵀ) and backward (dy W and dyᵀ x); causal
    attention's four score products per query chunk (q kᵀ, P v; backward dy vᵀ, P̃ᵀ dy, dS k,
    dSᵀ q, the last two summed over chunks as the op does); and the tied LM head's three. (The
    GPT itself makes one more, q kᵀ again in backward, to recompute P instead of keeping it; an
    implementation could keep P, so the floor leaves it out.) Returns the median ms of `iters`
    timed runs after `warmup`, and the FLOPs the products make, counted on one more untimed run
    first."""
    threads = max(1, min(threads or cores(), batch_size))
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    C, T, H, V = config.n_embd, config.block_size, config.n_head, config.vocab_size
    hs = C // H
    per = len(block_maps(config))
    maps = block_maps(config) * config.n_layer + [(C, V)]   # (C_in, C_out)

    def rand(*shape):
        return rng.standard_normal(shape, dtype=np.float32).astype(dt, copy=False)

    weights = [rand(o, i) for i, o in maps]
    rows = query_chunks(T, T, True)

    def shard_arrays(b):
        M = b * T
        a = {"x": [rand(M, i) for i, _ in maps], "dy": [rand(M, o) for _, o in maps],
             "y": [np.empty((M, o), dt) for _, o in maps], "dx": [np.empty((M, i), dt) for i, _ in maps],
             "dw": [np.empty((o, i), dt) for i, o in maps]}
        shape = (b, H, T, hs)
        a["q"], a["k"], a["v"], a["do"] = rand(*shape), rand(*shape), rand(*shape), rand(*shape)
        a["o"], a["dq"] = np.empty(shape, dt), np.empty(shape, dt)
        a["dk"], a["dv"] = np.zeros(shape, dt), np.zeros(shape, dt)   # summed into with +=: no garbage (inf, NaN)
        a["p"] = [rand(b, H, hi - lo, e) for lo, hi, e in rows]
        a["blocks"] = score_blocks(shape, T)
        return a

    bounds = [(batch_size * r // threads, batch_size * (r + 1) // threads) for r in range(threads)]
    shards = [shard_arrays(hi - lo) for lo, hi in bounds]

    flops = [0] * threads          # counted on the first run: 2·m·k·n per product (per batch item)

    def mm(r, x, y, out=None, product=np.matmul):
        if count:
            flops[r] += 2 * math.prod(x.shape[:-1]) * x.shape[-1] * y.shape[-1]
        return product(x, y, out=out)

    def forward(r):
        a = shards[r]
        for layer in range(config.n_layer + 1):
            for j in range(per) if layer < config.n_layer else (0,):
                m = per * layer + j
                mm(r, a["x"][m], weights[m].T, out=a["y"][m], product=linear_matmul)
            if layer == config.n_layer:
                break
            for blk in a["blocks"]:
                for c, (lo, hi, e) in enumerate(rows):
                    mm(r, a["q"][blk][..., lo:hi, :], a["k"][blk][..., :e, :].swapaxes(-1, -2), out=a["p"][c][blk])
                    mm(r, a["p"][c][blk], a["v"][blk][..., :e, :], out=a["o"][blk][..., lo:hi, :])

    def backward(r):
        a = shards[r]
        for layer in range(config.n_layer, -1, -1):
            for j in (range(per - 1, -1, -1) if layer < config.n_layer else (0,)):
                m = per * layer + j
                mm(r, a["dy"][m], weights[m], out=a["dx"][m], product=linear_matmul)
                mm(r, a["dy"][m].T, a["x"][m], out=a["dw"][m], product=linear_matmul)
            if layer == config.n_layer:
                continue
            for blk in a["blocks"]:
                for c, (lo, hi, e) in enumerate(rows):
                    p, do = a["p"][c][blk], a["do"][blk][..., lo:hi, :]
                    k, v, q = a["k"][blk][..., :e, :], a["v"][blk][..., :e, :], a["q"][blk][..., lo:hi, :]
                    dp = mm(r, do, v.swapaxes(-1, -2))
                    a["dv"][blk][..., :e, :] += mm(r, p.swapaxes(-1, -2), do)
                    mm(r, dp, k, out=a["dq"][blk][..., lo:hi, :])
                    a["dk"][blk][..., :e, :] += mm(r, dp.swapaxes(-1, -2), q)

    count = True                   # one untimed run counts the FLOPs
    times = []
    with blas_threads(1) if threads > 1 else contextlib.nullcontext():
        for i in range(1 + warmup + iters):
            t0 = time.perf_counter()
            parallel(forward, list(range(threads)))
            parallel(backward, list(range(threads)))
            if i > warmup:
                times.append(time.perf_counter() - t0)
            count = False
    times.sort()
    med = statistics.median(times)
    return {"ms": 1000 * med, "ms_min": 1000 * times[0], "iters": iters, "threads": threads, "flops": sum(flops)}


def decode_floor(config, *, batch_size: int, prompt_len: int, new_tokens: int, dtype: str = "float32",
                 reps: int = 3, seed: int = 0) -> dict:
    """The matrix products of KV-cached generation alone, timed: the least time GPT.generate could
    take for `new_tokens` tokens after a `prompt_len`-token prompt, on this BLAS, with LayerNorm,
    GELU, softmax, sampling and Python itself costing nothing.

    The products are those of GPT.generate's calls: one forward_cached over the prompt (every
    linear map on batch_size·prompt_len rows, causal attention by query chunks), then one
    forward_cached per further token (each map on batch_size rows, q kᵀ and P v against the
    keys cached so far), layer by layer; inputs random and preallocated. With batch 1 these are
    matrix-vector products, whose speed is set by how fast the weights stream from memory.
    Returns the median seconds of `reps` runs (after one untimed run that also counts the
    FLOPs) and the FLOPs."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    C, H, V, L = config.n_embd, config.n_head, config.vocab_size, config.n_layer
    hs, B, P = C // H, batch_size, prompt_len
    total = P + max(new_tokens - 1, 0)
    if total > config.block_size:
        raise ValueError(f"{P} + {new_tokens} positions do not fit the block size {config.block_size}")
    maps = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]                                   # (C_in, C_out)

    def rand(*shape):
        return rng.standard_normal(shape, dtype=np.float32).astype(dt, copy=False)

    weights = [[rand(o, i) for i, o in maps] for _ in range(L)]
    head = rand(V, C)
    keys = [rand(B, H, total, hs) for _ in range(L)]
    values = [rand(B, H, total, hs) for _ in range(L)]
    wide = {n: [rand(n, i) for i, _ in maps] + [rand(n, C)] for n in {B * P, B}}   # inputs of B·P or B rows
    q_prompt, q_one = rand(B, H, P, hs), rand(B, H, 1, hs)
    rows = query_chunks(P, P, True)
    flops = [0]

    def mm(x, y):
        if count:
            flops[0] += 2 * math.prod(x.shape[:-1]) * x.shape[-1] * y.shape[-1]
        return np.matmul(x, y)

    def position_step(n, q, t):
        """One forward_cached: n rows through every map, its queries against the keys [0, t)."""
        xs = wide[n]
        for layer in range(L):
            w = weights[layer]
            mm(xs[0], w[0].T)                                       # qkv
            for a, b, e in (rows if q.shape[-2] > 1 else [(0, 1, t)]):
                s = mm(q[..., a:b, :], keys[layer][:, :, :e].swapaxes(-1, -2))
                mm(s, values[layer][:, :, :e])
            for j in (1, 2, 3):                                     # attention output, MLP
                mm(xs[j], w[j].T)
        mm(xs[4], head.T)                                           # LM head

    def run():
        position_step(B * P, q_prompt, P)
        for t in range(P, total):
            position_step(B, q_one, t + 1)

    count = True
    run()
    count = False
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "reps": reps, "flops": flops[0]}


# --------------------------------------------------------------------------------- decoding speed

def copy_bandwidth(nbytes: int = 1 << 27, threads: int = 0, reps: int = 5) -> dict:
    """This machine's memory bandwidth as a copy measures it: `nbytes` (far more than the CPU's
    caches) copied to another buffer, split between `threads` threads (default: one per core, as
    decoding uses them), the median of `reps` copies after one untimed. Bytes per second counts
    what is read and what is written (2·nbytes a copy), as STREAM's copy does: about the rate at
    which memory can be streamed in either direction."""
    threads = threads or cores()
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    parts = [(src.size * r // threads, src.size * (r + 1) // threads) for r in range(threads)]

    def copy(part):
        lo, hi = part
        np.copyto(dst[lo:hi], src[lo:hi])

    times = []
    for i in range(1 + reps):
        t0 = time.perf_counter()
        parallel(copy, parts)
        if i:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"bytes": int(src.nbytes), "threads": threads, "reps": reps, "bytes_per_sec": 2 * src.nbytes / med}


def decode_weight_bytes(model) -> int:
    """The bytes of weights one decoding step reads: every parameter as stored (quantized ones at
    their size: int8 1.125 bytes a weight, bf16 2, float32 4), except that of a table decoding only
    looks up (a learned position table, an untied token embedding) it reads one row; a token
    embedding that is also the LM head is read whole, and one row more for the lookup."""
    total = model.weight_bytes()
    for name in [p.name for p in family_of(model.config).params(model.config) if p.kind == EMBEDDING]:
        table = model.tensor(name)
        row = table.nbytes // table.shape[0]
        total += row if name == model.head_weight else row - table.nbytes
    return int(total)


def generate_speed(model, *, batch_size: int = 1, prompt_tokens: int, new_tokens: int, runs: int = 3,
                   warmup: int = 1, seed: int = 0) -> dict:
    """Time greedy KV-cached decoding (numformer.model.generate) of `new_tokens` tokens after a
    random `prompt_tokens`-token prompt, `runs` times after `warmup` untimed runs. Per run: the
    prompt's time (its forward pass and the first token) and each later token's; ms_per_token is
    the median over the runs of (time after the first token) / (new_tokens − 1)."""
    if new_tokens < 2:
        raise ValueError("generate_speed needs new_tokens >= 2 (the first token comes with the prompt)")
    rng = np.random.default_rng([seed, 5])
    prompt = rng.integers(0, model.config.vocab_size, size=(batch_size, prompt_tokens))
    per_token, first = [], []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        tokens = generate_tokens(model, prompt, new_tokens, temperature=0)
        next(tokens)
        t1 = time.perf_counter()
        for _ in tokens:
            pass
        t2 = time.perf_counter()
        if i >= warmup:
            first.append(t1 - t0)
            per_token.append((t2 - t1) / (new_tokens - 1))
    ms = 1000 * statistics.median(per_token)
    return {"ms_per_token": ms, "ms_per_token_min": 1000 * min(per_token), "ms_per_token_max": 1000 * max(per_token),
            "tokens_per_sec": batch_size * 1000 / ms, "prompt_ms": 1000 * statistics.median(first),
            "runs": runs, "warmup": warmup}
