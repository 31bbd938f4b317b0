"""`numformer bench`: how fast does a config train on this machine?

It trains the GPT of the given shape for a few iterations on random token ids (no corpus needed)
and reports the median time per iteration, tokens per second, the achieved model FLOP rate, this
machine's matrix-multiply ceiling, the matmul floor (the step's matrix products alone), which BLAS
made the linear maps' products and why (MKL's and NumPy's measured times, from
numformer.ops.fast.blas_choice), and which implementation each fast op ran
(numformer.ops.fast.dispatch's report).
numformer.perf has the measurements and says how FLOPs are counted.
"""

from __future__ import annotations

import json

from numformer.errors import UsageError
from numformer.model.config import GPTConfig, InvalidConfig
from numformer.ops.fast import dispatch
from numformer.parallel.process import blas_thread_count
from numformer.perf import blas_info, cpu_model, gemm_ceiling, matmul_floor, measure, peak_rss_bytes


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
    parser.add_argument("--no_floor", action="store_true",
                        help="skip the matmul floor: the time of the step's matrix products alone, with the same shapes and threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


# --------------------------------------------------------------------------------- shared measures

def _fmt_bytes(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def main(args) -> int:
    for name in ("iters", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.gemm_n < 0:
        raise UsageError("--warmup and --gemm_n must be >= 0")
    try:
        config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                           n_head=args.n_head, n_embd=args.n_embd, bias=args.bias == "true",
                           pos_encoding=args.pos_encoding)
    except InvalidConfig as e:
        raise UsageError(str(e)) from None
    if not args.json:
        print(f"numformer bench: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, "
              f"block {config.block_size}, batch {args.batch_size}, vocab {config.vocab_size}, "
              f"{config.pos_encoding} positions, {args.dtype}", flush=True)
    r = measure(config, batch_size=args.batch_size, dtype=args.dtype, iters=args.iters, warmup=args.warmup,
                seed=args.seed, threads=args.threads)
    r["rss_bytes"] = peak_rss_bytes()          # training's peak, before the floor's own arrays
    floor = None if args.no_floor else matmul_floor(config, batch_size=args.batch_size, dtype=args.dtype,
                                                    threads=args.threads, iters=min(args.iters, 10),
                                                    warmup=min(args.warmup, 2), seed=args.seed)
    r["floor_ms"] = floor["ms"] if floor else None
    r["floor_share"] = floor["ms"] / r["ms_per_iter"] if floor else None
    gemm = gemm_ceiling(args.gemm_n, args.dtype) if args.gemm_n else None
    r["ceiling_gflops"] = gemm["gflops"] if gemm else None
    r["share_of_ceiling"] = r["gflops"] / gemm["gflops"] if gemm else None
    machine = {"cpu": cpu_model(), **blas_info()}
    if machine["blas_threads"] is None:   # without threadpoolctl: ask the OpenBLAS NumPy loaded
        machine["blas_threads"] = blas_thread_count()
    if args.json:
        print(json.dumps({"config": config.to_dict(), "batch_size": args.batch_size, "dtype": args.dtype,
                          **r, "gemm": gemm, "machine": machine}))
        return 0
    gemm_name = "sgemm" if args.dtype == "float32" else "dgemm"
    rows = [
        ("machine", f"{machine['cpu']}; NumPy {machine['numpy']}, {machine['blas'] or 'BLAS library unknown'}, "
                    + (f"{machine['blas_threads']} BLAS threads" if machine["blas_threads"]
                       else "BLAS threads unknown")),
        ("threads / step", f"{r['threads']} (the batch and the AdamW update are split over them, as numformer train does)"),
        ("parameters", f"{r['params']:,} (N = {r['flops_params']:,} without position embeddings)"),
        ("time / iteration", f"{r['ms_per_iter']:,.1f} ms (median of {args.iters} after {args.warmup} warm-up; "
                             f"min {r['ms_min']:,.1f}, max {r['ms_max']:,.1f})"),
        ("tokens / s", f"{r['tokens_per_sec']:,.0f} ({args.batch_size} x {config.block_size} tokens per iteration)"),
        ("model GFLOP/s", f"{r['gflops']:,.1f} (6N + 12·L·T·C = {r['flops_per_token'] / 1e6:,.2f} MFLOP per token)"),
    ]
    if floor:
        rows.append(("matmul floor", f"{floor['ms']:,.1f} ms, {100 * r['floor_share']:.0f}% of the iteration: its matrix "
                                     f"products alone, the least numformer's present decomposition of the step could take on this BLAS"))
    if gemm:
        rows.append((f"{gemm_name} ceiling", f"{gemm['gflops']:,.1f} GFLOP/s (NumPy {gemm['n']}x{gemm['n']} matmul); "
                                             f"the model uses {100 * r['share_of_ceiling']:.0f}% of it"))
    rows.append(("peak memory", _fmt_bytes(r["rss_bytes"]) + " resident"))
    rows.append(("linear maps' BLAS", machine["linear_blas"]))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print("  which implementation each fast op ran (numformer.ops.fast.dispatch):")
    for line in dispatch.report_lines():
        print(f"    {line}")
    return 0
