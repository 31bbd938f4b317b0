"""`numformer bench`: how fast does a config train, or decode, on this machine?

It trains the GPT (or, with --arch llama, the Llama) of the given shape for a few iterations on
random token ids (no corpus needed)
and reports the median time per iteration, tokens per second, the achieved model FLOP rate, this
machine's matrix-multiply ceiling, the matmul floor (the step's matrix products alone), which BLAS
made the linear maps' products and why (MKL's and NumPy's measured times, from
numformer.ops.fast.blas_choice), and which implementation each fast op ran
(numformer.ops.fast.dispatch's report).
numformer.perf has the measurements and says how FLOPs are counted.

`numformer bench --generate [--quantize Q] [--prompt_tokens P] [--new_tokens N]` times greedy
KV-cached decoding instead (batch 1 unless --batch_size says otherwise), of a GPT of the config's
shape with random weights, stored as --quantize says: milliseconds per token after the first,
tokens per second, the bytes of weights each token reads and the decode floor, those bytes at
this machine's copy bandwidth (numformer.perf.generate_speed, decode_weight_bytes,
copy_bandwidth).
"""

from __future__ import annotations

import json

from numformer.commands.sample import add_quantize_argument
from numformer.errors import UsageError
from numformer.model.config import ARCHS, CONFIGS, InvalidConfig, describe
from numformer.model.decoders import build
from numformer.ops.fast import dispatch, quantized
from numformer.parallel.process import blas_thread_count
from numformer.perf import (blas_info, copy_bandwidth, cpu_model, decode_weight_bytes, gemm_ceiling, generate_speed,
                            matmul_floor, measure, peak_rss_bytes)


def add_arguments(parser) -> None:
    parser.add_argument("--arch", default="gpt2", choices=ARCHS,
                        help="the model: gpt2 (numformer's GPT) or llama (RMSNorm, RoPE, grouped-query attention, "
                             "SwiGLU), as numformer train --arch (default: gpt2)")
    parser.add_argument("--n_layer", type=int, default=4, help="number of Transformer blocks (default: 4)")
    parser.add_argument("--n_head", type=int, default=4, help="attention heads per block (default: 4)")
    parser.add_argument("--n_embd", type=int, default=128, help="embedding width C (default: 128)")
    parser.add_argument("--block_size", type=int, default=None,
                        help="context length T (default: 64; with --generate, at least prompt_tokens + new_tokens)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="sequences per step B (default: 12; with --generate, 1)")
    parser.add_argument("--vocab_size", type=int, default=65, help="vocabulary size V (default: 65, a char corpus)")
    parser.add_argument("--pos_encoding", default=None, choices=("sinusoidal", "learned"),
                        help="--arch gpt2: positional encoding (default: sinusoidal)")
    parser.add_argument("--bias", default=None, choices=("true", "false"),
                        help="--arch gpt2: biases in Linear and LayerNorm layers (default: true)")
    parser.add_argument("--n_kv_head", type=int, default=None, help="--arch llama: key/value heads (default: n_head)")
    parser.add_argument("--n_hidden", type=int, default=None,
                        help="--arch llama: SwiGLU width (default: 2/3 of 4*n_embd rounded up to a multiple of 256)")
    parser.add_argument("--rope_theta", type=float, default=None, help="--arch llama: RoPE's theta (default: 10000)")
    parser.add_argument("--tie_embeddings", default=None, choices=("true", "false"),
                        help="--arch llama: the token embedding as the LM head (default: false)")
    parser.add_argument("--attention_bias", default=None, choices=("true", "false"),
                        help="--arch llama: biases on q, k and v, as Qwen2 (default: false)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="(default: float32)")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed iterations (default: 20; with --generate, timed generations: 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed iterations first (default: 3; with --generate, 1 generation)")
    parser.add_argument("--gemm_n", type=int, default=2048,
                        help="size of the square matmul that measures the ceiling (default: 2048; 0 skips it)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the token ids (default: 0)")
    parser.add_argument("--threads", type=int, default=0, help="threads per step, as numformer train uses (default: 0, one per core)")
    parser.add_argument("--no_floor", action="store_true",
                        help="skip the matmul floor: the time of the step's matrix products alone, with the same shapes and threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--generate", action="store_true",
                        help="time greedy KV-cached decoding instead of training: ms per token, tokens/s, the weight "
                             "bytes each token reads and the decode floor (those bytes at the measured copy bandwidth)")
    parser.add_argument("--prompt_tokens", type=int, default=64, help="with --generate: prompt length (default: 64)")
    parser.add_argument("--new_tokens", type=int, default=128,
                        help="with --generate: tokens generated per run, timed after the first (default: 128)")
    add_quantize_argument(parser)


ARCH_FLAGS = {"gpt2": ("pos_encoding", "bias"),
              "llama": ("n_kv_head", "n_hidden", "rope_theta", "tie_embeddings", "attention_bias")}


def _config(args):
    """The GPTConfig or LlamaConfig the flags describe; UsageError for a flag of the other arch or
    a bad value."""
    own = {k: getattr(args, k) for k in ARCH_FLAGS[args.arch] if getattr(args, k) is not None}
    for arch, names in ARCH_FLAGS.items():
        given = [k for k in names if arch != args.arch and getattr(args, k) is not None]
        if given:
            raise UsageError(f"--{given[0]} applies to --arch {arch}; this bench's --arch is {args.arch}")
    own.update({k: v == "true" for k, v in own.items() if v in ("true", "false")})
    try:
        return CONFIGS[args.arch](vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                                  n_head=args.n_head, n_embd=args.n_embd, **own)
    except InvalidConfig as e:
        raise UsageError(str(e)) from None


def _lookups(config) -> str:
    """What N leaves out (numformer.perf.non_embedding_params), in words."""
    if config.family == "gpt2":
        return "without position embeddings"
    return "with the token embedding once, as the tied LM head" if config.tie_embeddings else \
        "without the token embedding, a lookup"


# --------------------------------------------------------------------------------- shared measures

def _fmt_bytes(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def main(args) -> int:
    generating = args.generate
    defaults = {"iters": 3 if generating else 20, "warmup": 1 if generating else 3,
                "batch_size": 1 if generating else 12}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("iters", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.gemm_n < 0:
        raise UsageError("--warmup and --gemm_n must be >= 0")
    if not generating:
        for flag, default in (("prompt_tokens", 64), ("new_tokens", 128), ("quantize", "none")):
            if getattr(args, flag) != default:
                raise UsageError(f"--{flag} times decoding: give it with --generate")
    else:
        if args.prompt_tokens < 1 or args.new_tokens < 2:
            raise UsageError(f"--prompt_tokens must be >= 1 and --new_tokens >= 2 (the first token comes with the "
                             f"prompt), got {args.prompt_tokens} and {args.new_tokens}")
        if args.dtype != "float32":
            raise UsageError("--generate decodes in float32; leave out --dtype")
        needed = args.prompt_tokens + args.new_tokens - 1
        if args.block_size is None:
            args.block_size = max(64, needed)
        elif args.block_size < needed:
            raise UsageError(f"--block_size {args.block_size} is shorter than the {needed} positions decoding "
                             f"needs (--prompt_tokens {args.prompt_tokens} + --new_tokens {args.new_tokens} - 1)")
    if args.block_size is None:
        args.block_size = 64
    config = _config(args)
    if generating:
        return bench_generate(args, config)
    if not args.json:
        print(f"numformer bench: {describe(config)}, batch {args.batch_size}, vocab {config.vocab_size}, {args.dtype}",
              flush=True)
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
        print(json.dumps({"arch": args.arch, "config": config.to_dict(), "batch_size": args.batch_size, "dtype": args.dtype,
                          **r, "gemm": gemm, "machine": machine}))
        return 0
    gemm_name = "sgemm" if args.dtype == "float32" else "dgemm"
    rows = [
        ("machine", f"{machine['cpu']}; NumPy {machine['numpy']}, {machine['blas'] or 'BLAS library unknown'}, "
                    + (f"{machine['blas_threads']} BLAS threads" if machine["blas_threads"]
                       else "BLAS threads unknown")),
        ("threads / step", f"{r['threads']} (the batch and the AdamW update are split over them, as numformer train does)"),
        ("parameters", f"{r['params']:,} (N = {r['flops_params']:,} {_lookups(config)})"),
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


def bench_generate(args, config) -> int:
    """`numformer bench --generate`: decoding speed, bytes per token and the decode floor."""
    fmt = args.quantize
    if not args.json:
        print(f"numformer bench --generate: {describe(config)}, vocab {config.vocab_size}; "
              f"weights {fmt if fmt != 'none' else 'float32'}; batch {args.batch_size}, "
              f"{args.new_tokens} new tokens after {args.prompt_tokens}", flush=True)
    model = build(config, seed=args.seed).quantize(fmt)
    model.eval()
    r = generate_speed(model, batch_size=args.batch_size, prompt_tokens=args.prompt_tokens,
                       new_tokens=args.new_tokens, runs=args.iters, warmup=args.warmup, seed=args.seed)
    r["rss_bytes"] = peak_rss_bytes()
    r["weight_bytes"] = model.weight_bytes()
    r["weight_bytes_per_token"] = decode_weight_bytes(model)
    copy = copy_bandwidth()
    r["copy_bytes_per_sec"] = copy["bytes_per_sec"]
    r["floor_ms_per_token"] = 1000 * r["weight_bytes_per_token"] / copy["bytes_per_sec"]
    r["floor_share"] = r["floor_ms_per_token"] / r["ms_per_token"]
    r["params"] = model.num_params()
    machine = {"cpu": cpu_model(), **blas_info(), "quantized_threads": quantized.threads_line()}
    if machine["blas_threads"] is None:
        machine["blas_threads"] = blas_thread_count()
    if args.json:
        print(json.dumps({"mode": "generate", "config": config.to_dict(), "quantize": fmt,
                          "batch_size": args.batch_size, "prompt_tokens": args.prompt_tokens,
                          "new_tokens": args.new_tokens, **r, "machine": machine}))
        return 0
    rows = [
        ("machine", f"{machine['cpu']}; NumPy {machine['numpy']}, {machine['blas'] or 'BLAS library unknown'}, "
                    + (f"{machine['blas_threads']} BLAS threads" if machine["blas_threads"] else "BLAS threads unknown")),
        ("parameters", f"{r['params']:,}, {_fmt_bytes(r['weight_bytes'])} of weights"
                       + (f" ({fmt}: {quantized.threads_line()})" if fmt != "none" else " (float32)")),
        ("time / token", f"{r['ms_per_token']:,.2f} ms (median of {r['runs']} runs of the {args.new_tokens - 1} tokens "
                         f"after the first; min {r['ms_per_token_min']:,.2f}, max {r['ms_per_token_max']:,.2f})"),
        ("tokens / s", f"{r['tokens_per_sec']:,.1f} (batch {args.batch_size})"),
        ("prompt", f"{r['prompt_ms']:,.1f} ms for {args.prompt_tokens} tokens and the first new one"),
        ("bytes / token", f"{r['weight_bytes_per_token'] / 1e6:,.1f} MB of weights read per token"),
        ("decode floor", f"{r['floor_ms_per_token']:,.2f} ms: those bytes at the copy bandwidth of "
                         f"{r['copy_bytes_per_sec'] / 1e9:,.1f} GB/s ({copy['threads']} threads); the token takes "
                         f"{1 / r['floor_share']:,.2f}x the floor"),
        ("peak memory", _fmt_bytes(r["rss_bytes"]) + " resident"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print("  which implementation each fast op ran (numformer.ops.fast.dispatch):")
    for line in dispatch.report_lines():
        print(f"    {line}")
    return 0
