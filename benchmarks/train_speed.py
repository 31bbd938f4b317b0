"""Training speed, side by side: numformer vs the PyTorch reference GPT, eager and torch.compile.

    python benchmarks/train_speed.py                      # baby, small and t1024, once
    python benchmarks/train_speed.py --repeat 3           # three rounds: the spread of every ratio
    python benchmarks/train_speed.py --configs baby --no_compile --iters 10 --warmup 2   # quick look

For each config, three child processes run one after another:

- numformer: the real `numformer train` step, `Trainer.step()` (cosine lr, get_batch, forward,
  backward, clip_grad_norm 1.0, AdamW with weight decay 0.1 on matrices and embeddings), float32;
- torch: numformer/reference/gpt.py's ReferenceGPT in eager mode, with the same sequence of
  calls (torch.optim.AdamW from configure_adamw, clip_grad_norm_);
- compile: the same module wrapped in torch.compile (default mode; the optimizer stays eager,
  as in nanoGPT). Its first iterations compile; they are warm-up and not timed.

All three build the same architecture (the trainer's default positional encoding unless
--pos_encoding says otherwise) with the same initial weights (numformer's GPT(cfg, seed) state dict,
loaded into the reference with load_numpy) and train on the same batches: a corpus of random
characters over a V-letter alphabet, written once by the parent; each child tokenizes it with
numformer's char tokenizer and draws batches with the trainer's rule
(np.random.default_rng([seed, 0]) + numformer.data.batches.get_batch). The loss of the first
iteration is reported for every case: equal weights and batches give equal first losses, which
the report checks.

The NumPy sgemm ceiling (n = 2048) is measured in a child of each round. Reported per case:
median ms/iter over --iters iterations after --warmup, tokens/s, the speed ratio to torch eager
and to torch.compile (tokens/s over theirs: > 1 means faster), achieved model GFLOP/s (6N +
12·L·T·C per token, N = parameters without position embeddings; see numformer/bench.py) and its
share of the ceiling, and the child's peak RSS (VmHWM; numformer.perf.peak_rss_bytes), as measured and minus the idle process
(the child's peak after its imports, before any model exists: PyTorch's import alone is about
200 MiB, numformer's about 30). The numformer child then times the
matmul floor (numformer.perf.matmul_floor): the step's matrix products alone, with the same
shapes and threads; the reference's time over it is the best ratio numformer's current
decomposition of the step could reach on this BLAS (not a limit for every design: fewer or larger
products, or another split, can go below it), and the report prints it next to each target. Results
go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import time

import common

IMPLS = ("numformer", "torch", "compile")

# The configs: common's presets plus a long-context case, 4,096 tokens a step at T 1024
# (4 layers, 256 wide, batch 4), where the reference GPT's attention is PyTorch's fused
# scaled_dot_product_attention, as in nanoGPT.
CONFIGS = {**common.TRAIN_CONFIGS,
           "t1024": dict(n_layer=4, n_head=4, n_embd=256, block_size=1024, batch_size=4, vocab_size=65)}
DEFAULT_CONFIGS = ["baby", "small", "t1024"]
LABEL = {"numformer": "numformer", "torch": "torch eager", "compile": "torch.compile"}


# --------------------------------------------------------------------------------- children

def _train_config(spec):
    from numformer.training import TrainConfig

    c = spec["config"]
    return TrainConfig.of(data=spec["corpus"], n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"],
                       block_size=c["block_size"], batch_size=c["batch_size"],
                       max_iters=spec["warmup"] + spec["iters"], seed=spec["seed"], out_dir=spec["out_dir"],
                       sample_tokens=0, dtype="float32",
                       **({"pos_encoding": spec["pos_encoding"]} if spec.get("pos_encoding") else {}))


def _summarise(times, losses, warmup, spec, extra=None):
    import numpy as np

    from numformer.perf import flops_per_token
    from numformer.model.config import GPTConfig

    c = spec["config"]
    timed = times[warmup:]
    ms = 1000 * float(np.median(timed))
    tokens = c["batch_size"] * c["block_size"]
    mcfg = GPTConfig(vocab_size=c["vocab_size"], block_size=c["block_size"], n_layer=c["n_layer"],
                     n_head=c["n_head"], n_embd=c["n_embd"], pos_encoding=spec["pos_encoding_used"])
    fpt = flops_per_token(mcfg)
    r = {"ms_per_iter": ms, "ms_min": 1000 * min(timed), "ms_max": 1000 * max(timed),
         "ms_p25": 1000 * float(np.percentile(timed, 25)), "ms_p75": 1000 * float(np.percentile(timed, 75)),
         "tokens_per_sec": tokens / (ms / 1000), "gflops": fpt * tokens / (ms / 1000) / 1e9,
         "flops_per_token": fpt, "iters": len(timed), "warmup_s": sum(times[:warmup]),
         "first_loss": losses[0], "last_loss": losses[-1]}
    r.update(extra or {})
    return r


def child_numformer(spec):
    from numformer.perf import peak_rss_bytes
    from numformer.training import Trainer

    idle = peak_rss_bytes()                            # the process with its imports, no model yet
    cfg = _train_config(spec)
    tr = Trainer(cfg, cache_dir=spec["cache_dir"])
    if tr.tokenizer.vocab_size != spec["config"]["vocab_size"]:
        raise SystemExit(f"corpus has {tr.tokenizer.vocab_size} symbols, config wants {spec['config']['vocab_size']}")
    spec["pos_encoding_used"] = cfg.model.pos_encoding
    times, losses = [], []
    for _ in range(spec["warmup"] + spec["iters"]):
        t0 = time.perf_counter()
        loss = tr.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss)
    extra = {"params": tr.model.num_params(), "threads": tr.threads, "idle_rss_bytes": idle}
    if spec.get("floor", True):
        from numformer.perf import matmul_floor, peak_rss_bytes

        extra["rss_bytes"] = peak_rss_bytes()          # training's peak, before the floor's own arrays

        c = spec["config"]
        extra["floor_ms"] = matmul_floor(tr.model.config, batch_size=c["batch_size"], threads=tr.threads,
                                         iters=max(3, min(10, spec["iters"])), seed=spec["seed"])["ms"]
    return _summarise(times, losses, spec["warmup"], spec, extra)


def child_torch(spec):
    import numpy as np
    import torch

    from numformer.data import batches
    from numformer.data.corpus import load_text
    from numformer.perf import peak_rss_bytes

    idle = peak_rss_bytes()                            # the process with its imports, no model yet
    cfg = _train_config(spec)
    text, _ = load_text(cfg.data)
    train_ids, _, tok = batches.prepare(text, tokenizer="char", cache_dir=spec["cache_dir"])
    spec["pos_encoding_used"] = cfg.model.pos_encoding
    model, fwd, opt, n_params = common.torch_reference(cfg, tok.vocab_size, spec["impl"])
    rng = np.random.default_rng([cfg.seed, 0])                            # the trainer's batch stream
    times, losses = [], []
    for it in range(spec["warmup"] + spec["iters"]):
        t0 = time.perf_counter()
        losses.append(common.torch_train_step(model, fwd, opt, cfg, train_ids, rng, it))
        times.append(time.perf_counter() - t0)
    extra = {"params": n_params, "torch_threads": torch.get_num_threads(), "idle_rss_bytes": idle}
    if spec["impl"] == "compile":
        extra["first_iter_s"] = times[0]
    return _summarise(times, losses, spec["warmup"], spec, extra)


def child_sgemm(spec):
    from numformer.perf import gemm_ceiling

    return gemm_ceiling(spec["n"], "float32", reps=spec["reps"], warmup=2)


# --------------------------------------------------------------------------------- parent

def write_corpus(path, vocab_size: int, n_chars: int, seed: int) -> None:
    """Random text over a vocab_size-letter alphabet (every letter appears: it starts with all)."""
    import numpy as np

    alphabet = [chr(c) for c in range(33, 127)] + [chr(0x4E00 + i) for i in range(max(0, vocab_size - 94))]
    alphabet = alphabet[:vocab_size]
    rng = np.random.default_rng([seed, 7])
    body = "".join(np.array(alphabet)[rng.integers(0, vocab_size, size=n_chars)])
    path.write_text("".join(alphabet) + body, encoding="utf-8")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                    help="preset names (%s) or NAME:key=value,... (default: %s)"
                    % (", ".join(CONFIGS), " ".join(DEFAULT_CONFIGS)))
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of numformer,torch,compile")
    ap.add_argument("--no_compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--iters", type=int, default=30, help="timed iterations per case (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default 5; compile happens here)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of everything; > 1 reports min/median/max of each ratio")
    ap.add_argument("--pos_encoding", choices=("sinusoidal", "learned"), default=None,
                    help="positional encoding of all three (default: the trainer's default)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--gemm_n", type=int, default=2048, help="size of the sgemm that measures the ceiling")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per child process")
    args = ap.parse_args(argv)

    import tempfile
    from pathlib import Path

    configs = common.parse_configs(args.configs, CONFIGS)
    impls = [i for i in args.impls.split(",") if i]
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        ap.error(f"unknown impl {bad[0]!r}")
    if args.no_compile and "compile" in impls:
        impls.remove("compile")
    info = common.machine_header(with_torch=any(i != "numformer" for i in impls))
    print("numformer train_speed")
    for line in common.header_lines(info):
        print("  " + line)
    if args.iters < 30:
        print(f"  note: {args.iters} timed iterations (< 30): a quick check, not a measurement")
    print(flush=True)

    script = Path(__file__).resolve()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="numformer-bench-") as tmp:
        tmp = Path(tmp)
        corpora = {}
        for V in sorted({c["vocab_size"] for c in configs.values()}):
            corpora[V] = tmp / f"random-{V}.txt"
            write_corpus(corpora[V], V, 400_000, args.seed)
        for rnd in range(args.repeat):
            tag = f"[round {rnd + 1}/{args.repeat}] " if args.repeat > 1 else ""
            g = common.run_child(script, {"impl": "sgemm", "n": args.gemm_n, "reps": 10}, args.timeout)
            print(f"{tag}sgemm ceiling n={args.gemm_n}: "
                  + (f"{g['gflops']:.1f} GFLOP/s (best {g['best_gflops']:.1f})" if "gflops" in g else g["error"]),
                  flush=True)
            rnd_res = {"sgemm": g, "cases": {}}
            for name, cfg in configs.items():
                for impl in impls:
                    spec = {"impl": impl, "config": cfg, "iters": args.iters, "warmup": args.warmup,
                            "seed": args.seed, "corpus": str(corpora[cfg["vocab_size"]]), "cache_dir": str(tmp / "cache"),
                            "out_dir": str(tmp / "out"), "pos_encoding": args.pos_encoding}
                    r = common.run_child(script, spec, args.timeout)
                    rnd_res["cases"][f"{name}/{impl}"] = r
                    msg = (f"{r['ms_per_iter']:,.1f} ms/iter, {r['tokens_per_sec']:,.0f} tok/s, "
                           f"first loss {r['first_loss']:.5f}, peak RSS {common.fmt_mib(r['rss_bytes'])}"
                           f" ({common.fmt_mib(r['rss_bytes'] - r['idle_rss_bytes'])} over the idle process)"
                           + (f", first iteration (compiling) {r['first_iter_s']:.1f} s" if "first_iter_s" in r else "")
                           if "error" not in r else "FAILED: " + r["error"])
                    print(f"{tag}{name:<8} {LABEL[impl]:<14} {msg}", flush=True)
            rounds.append(rnd_res)
    common.finish_header(info)
    report(args, configs, impls, info, rounds)
    return 0


def _ratio(a, b):
    return a / b if a and b else None


def report(args, configs, impls, info, rounds):
    headers = ["config", "impl", "ms/iter", "tokens/s", "vs eager", "vs compile", "GFLOP/s", "of ceiling",
               "peak RSS", "RSS - idle", "first loss"]
    rows, summary = [], {}
    ceil = common.median([r["sgemm"].get("gflops") for r in rounds])
    for name, cfg in configs.items():
        per_impl = {}
        for impl in impls:
            rs = [r["cases"][f"{name}/{impl}"] for r in rounds]
            ok = [r for r in rs if "error" not in r]
            per_impl[impl] = {
                "ms_per_iter": common.median([r["ms_per_iter"] for r in ok]),
                "tokens_per_sec": common.median([r["tokens_per_sec"] for r in ok]),
                "gflops": common.median([r["gflops"] for r in ok]),
                "rss_bytes": max((r["rss_bytes"] for r in ok if r.get("rss_bytes")), default=None),
                "rss_over_idle": max((r["rss_bytes"] - r["idle_rss_bytes"] for r in ok
                                      if r.get("rss_bytes") and r.get("idle_rss_bytes")), default=None),
                "first_loss": ok[0]["first_loss"] if ok else None,
                "last_loss": ok[0]["last_loss"] if ok else None,
                "errors": [r["error"] for r in rs if "error" in r],
                "floor_ms": common.median([r["floor_ms"] for r in ok if r.get("floor_ms")]),
            }
        # ratios per round, then their spread over the rounds
        ratios = {}
        for impl in impls:
            for ref in ("torch", "compile"):
                if ref in impls and impl != ref:
                    xs = []
                    for r in rounds:
                        a, b = r["cases"][f"{name}/{impl}"], r["cases"][f"{name}/{ref}"]
                        xs.append(_ratio(a.get("tokens_per_sec"), b.get("tokens_per_sec")))
                    ratios[f"{impl}/{ref}"] = common.spread(xs)
            xs = [_ratio(r["cases"][f"{name}/{impl}"].get("gflops"), r["sgemm"].get("gflops")) for r in rounds]
            ratios[f"{impl}/ceiling"] = common.spread(xs)
        if "numformer" in impls:
            # the matmul floor: the reference's time over the step's matrix products alone, the
            # best ratio any implementation on NumPy's BLAS could reach (see bench.matmul_floor)
            for ref in ("torch", "compile"):
                if ref in impls:
                    xs = []
                    for r in rounds:
                        a, b = r["cases"][f"{name}/numformer"], r["cases"][f"{name}/{ref}"]
                        xs.append(_ratio(b.get("ms_per_iter"), a.get("floor_ms")))
                    ratios[f"floor/{ref}"] = common.spread(xs)
        if "numformer" in impls and "torch" in impls:
            a, b = per_impl["numformer"]["rss_bytes"], per_impl["torch"]["rss_bytes"]
            ratios["numformer/torch rss"] = common.spread([_ratio(a, b)])
            a, b = per_impl["numformer"]["rss_over_idle"], per_impl["torch"]["rss_over_idle"]
            ratios["numformer/torch rss over idle"] = common.spread([_ratio(a, b)])
        if "numformer" in impls:
            xs = [_ratio(r["cases"][f"{name}/numformer"].get("ms_per_iter"), r["cases"][f"{name}/numformer"].get("floor_ms"))
                  for r in rounds]
            ratios["numformer/floor"] = common.spread(xs)
        summary[name] = {"config": cfg, "impls": per_impl, "ratios": ratios}
        for impl in impls:
            p = per_impl[impl]
            if p["ms_per_iter"] is None:
                rows.append([name, LABEL[impl], "failed"] + [""] * (len(headers) - 3))
                continue
            rows.append([
                name, LABEL[impl], f"{p['ms_per_iter']:,.1f}", f"{p['tokens_per_sec']:,.0f}",
                "-" if impl == "torch" or "torch" not in impls else common.fmt_spread(ratios.get(f"{impl}/torch")),
                "-" if impl == "compile" or "compile" not in impls else common.fmt_spread(ratios.get(f"{impl}/compile")),
                f"{p['gflops']:,.1f}", common.fmt_spread(ratios[f"{impl}/ceiling"], "{:.0%}"),
                common.fmt_mib(p["rss_bytes"]), common.fmt_mib(p["rss_over_idle"]), f"{p['first_loss']:.5f}"])

    lines = []
    lines.append(f"sgemm ceiling (NumPy float32, n={args.gemm_n}): "
                 + (f"{ceil:.1f} GFLOP/s" if ceil else "n/a")
                 + (f" (median of {len(rounds)} rounds: "
                    + ", ".join(f"{r['sgemm'].get('gflops', 0):.1f}" for r in rounds) + ")" if len(rounds) > 1 else ""))
    if args.iters < 30:
        lines.append(f"only {args.iters} timed iterations (< 30): a quick check, not a measurement")
    lines.append(f"median ms/iter over {args.iters} iterations after {args.warmup} warm-up"
                 + (f"; each number is the median over {len(rounds)} rounds, ratios show median (min-max)"
                    if len(rounds) > 1 else "")
                 + "; ratios are tokens/s over the reference's (> 1: numformer faster)")
    table_txt = common.text_table(headers, rows)
    table_md = common.md_table(headers, rows)

    checks = []
    for name, s in summary.items():
        firsts = {i: s["impls"][i]["first_loss"] for i in impls if s["impls"][i]["first_loss"] is not None}
        if len(firsts) > 1:
            d = max(firsts.values()) - min(firsts.values())
            checks.append(f"{name}: first-iteration losses agree to {d:.1e} "
                          + ("(same weights, same batches)" if d < 1e-3 else "(MISMATCH: not the same model or batches?)"))
            lasts = [s["impls"][i]["last_loss"] for i in firsts]
            checks.append(f"{name}: losses after {args.warmup + args.iters} iterations agree to "
                          f"{max(lasts) - min(lasts):.1e} (float32 rounding grows with each step)")
        nf = s["impls"].get("numformer", {})
        if nf.get("floor_ms") and nf.get("ms_per_iter"):
            best = [f"{s['ratios'][f'floor/{ref}']['median']:.2f}x {LABEL[ref]}"
                    for ref in ("torch", "compile") if s["ratios"].get(f"floor/{ref}")]
            checks.append(f"{name}: matmul floor {nf['floor_ms']:,.1f} ms/iter, {nf['floor_ms'] / nf['ms_per_iter']:.0%} "
                          f"of numformer's step (the step's matrix products alone, same shapes and threads; "
                          f"everything else free)" + (": numformer's current decomposition cannot beat "
                                                      + " or ".join(best) if best else ""))
        errs = [f"{name}/{i}: {e}" for i in impls for e in s["impls"][i]["errors"]]
        checks += errs
    targets = target_lines(summary, impls)

    print()
    print("\n".join(lines))
    print(table_txt)
    for c in checks:
        print(c)
    if targets:
        print("\ntargets (median ratio over rounds):")
        print("\n".join("  " + t for t in targets))

    md = ["# numformer training speed", "", *("- " + l for l in common.header_lines(info)), "",
          *lines, "", table_md, "", *("- " + c for c in checks)]
    if targets:
        md += ["", "Targets:", "", *("- " + t for t in targets)]
    payload = {"machine": info, "args": vars(args), "configs": configs, "rounds": rounds, "summary": summary,
               "ceiling_gflops": ceil}
    common.publish("train_speed", payload, "\n".join(md), info)


TARGETS = {  # config -> [(ratio key, bound, "min" or "max", description)]
    "baby": [("numformer/torch", 1.0, "min", "tokens/s vs torch eager"),
             ("numformer/compile", 1.0, "min", "tokens/s vs torch.compile"),
             ("numformer/floor", 1.3, "max", "step time over numformer's matmul floor")],
    "small": [("numformer/torch", 1.0, "min", "tokens/s vs torch eager"),
              ("numformer/compile", 1.0, "min", "tokens/s vs torch.compile"),
              ("numformer/floor", 1.15, "max", "step time over numformer's matmul floor"),
              ("numformer/torch rss over idle", 0.5, "max", "peak RSS minus the idle process, numformer / torch eager")],
    "t1024": [("numformer/torch", 1.0, "min", "tokens/s vs torch eager (fused attention)")],
}


def target_lines(summary, impls):
    out = []
    for name, items in TARGETS.items():
        if name not in summary:
            continue
        for key, want, kind, what in items:
            s = summary[name]["ratios"].get(key)
            if not s or s.get("median") is None:
                continue
            got = s["median"]
            met = got >= want if kind == "min" else got <= want
            bound = summary[name]["ratios"].get(key.replace("numformer/", "floor/"))
            out.append(f"{name} {what}: {got:.2f} (target {'>=' if kind == 'min' else '<='} {want:.2f}) "
                       + ("met" if met else f"missed by {abs(want - got):.2f}")
                       + (f"; numformer's matmul floor allows at most {bound['median']:.2f}" if bound else ""))
    return out


if __name__ == "__main__":
    import sys

    if not common.child_main({"numformer": child_numformer, "torch": child_torch, "compile": child_torch,
                              "sgemm": child_sgemm}):
        sys.exit(main())
