"""The default `numformer train` run, in numformer and in the PyTorch reference, side by side.

    python benchmarks/train_compare.py                         # baby GPT, 2000 iterations, both
    python benchmarks/train_compare.py --pos_encoding all      # + learned, the paper's and the article's sinusoidal forms
    python benchmarks/train_compare.py --max_iters 100 --eval_interval 50 --eval_iters 4   # quick check

The config is `numformer train`'s default (TrainConfig: 4 layers, 4 heads,
128 wide, block 64, batch 12, lr 1e-3 with 100 warm-up steps and cosine decay to 1e-4 at
lr_decay_iters, AdamW betas (0.9, 0.99), weight decay 0.1 on matrices and embeddings, clipping at
1.0, dropout 0, seed 1337) on the built-in Shakespeare corpus with the char tokenizer. Each run is
a child process, one after another:

- numformer: a real `numformer.training.Trainer`: `Trainer.step()` for every iteration and
  `Trainer.evaluate()` at every eval_interval and at the end (no checkpoints, plots or samples,
  which the reference does not do either);
- torch: numformer/reference/gpt.py's ReferenceGPT, eager, with the trainer's rules written out:
  the initial weights of numformer's GPT(cfg, seed=1337); batches from
  np.random.default_rng([seed, 0]) and numformer.data.batches.get_batch, in the same order; the
  same cosine_lr schedule; torch.optim.AdamW (configure_adamw) and clip_grad_norm_(1.0);
  evaluation by Trainer.evaluate's rule (eval_iters batches per split from
  np.random.default_rng([seed, 2, step]), mean loss) under torch.no_grad.
- compile (only with --impls ...,compile): the same under torch.compile.

So the two see the same weights and the same batches; float32 rounding makes their paths part
slowly, which is what the val-loss comparison measures (the target: within 0.03 of the
reference, in less wall time). Wall time is the time spent in training steps; evaluation time
and setup are reported beside it.

`--pos_encoding all` also measures the positional encodings on the built-in corpus, each with
both implementations: sinusoidal as numformer adds it (wte[idx] + P/√C, the default), learned,
the paper's form √C·wte[idx] + P, and the article's formula read literally, wte[idx] + P (the
GPTConfig.sinusoidal_form "paper" and "article"), to show why the scale matters. Results go to benchmarks/results/train_compare-*.{md,json}.
"""

from __future__ import annotations

import argparse
import time

import common

IMPLS = ("numformer", "torch", "compile")
LABEL = {"numformer": "numformer", "torch": "torch eager", "compile": "torch.compile"}
# name -> (pos_encoding, sinusoidal_form: how x0 adds the sinusoidal table P, see GPTConfig).
# "scaled": wte[idx] + P/√C (numformer's default); "paper": √C·wte[idx] + P (Vaswani et al.
# §3.4 with GPT-2's init); "article": wte[idx] + P, a straight reading of the article's formula 2.
VARIANTS = {
    "sinusoidal": ("sinusoidal", "scaled"),
    "learned": ("learned", "scaled"),
    "sinusoidal-paper": ("sinusoidal", "paper"),
    "sinusoidal-unscaled": ("sinusoidal", "article"),
}


# --------------------------------------------------------------------------------- children

def _train_config(spec):
    from numformer.training import TrainConfig

    pos_encoding, form = VARIANTS[spec["variant"]]
    return TrainConfig.of(pos_encoding=pos_encoding, sinusoidal_form=form, max_iters=spec["max_iters"],
                       lr_decay_iters=spec["lr_decay_iters"], eval_interval=spec["eval_interval"],
                       eval_iters=spec["eval_iters"], seed=spec["seed"], out_dir=spec["out_dir"], sample_tokens=0)


def _loop(cfg, step, evaluate):
    """nanoGPT's loop as numformer.training.loop.train has it: evaluate at 0, every eval_interval, and at the end."""
    curve, t_train, t_eval, losses = [], 0.0, 0.0, []
    it = 0
    while True:
        at_end = it >= cfg.max_iters
        if it % cfg.eval_interval == 0 or at_end:
            t0 = time.perf_counter()
            ev = evaluate(it)
            t_eval += time.perf_counter() - t0
            curve.append({"step": it, "train": ev["train"], "val": ev["val"]})
        if at_end:
            break
        t0 = time.perf_counter()
        losses.append(step(it))
        t_train += time.perf_counter() - t0
        it += 1
    tokens = cfg.max_iters * cfg.batch_size * cfg.model.block_size
    return {"curve": curve, "val_loss": curve[-1]["val"], "train_loss": curve[-1]["train"], "train_s": t_train,
            "eval_s": t_eval, "ms_per_iter": 1000 * t_train / max(cfg.max_iters, 1),
            "tokens_per_sec": tokens / t_train if t_train else None, "first_loss": losses[0] if losses else None,
            "last_step_loss": losses[-1] if losses else None}


def child_numformer(spec):
    from numformer.training import Trainer

    t0 = time.perf_counter()
    cfg = _train_config(spec)
    tr = Trainer(cfg, cache_dir=spec["cache_dir"])
    setup = time.perf_counter() - t0

    def step(it):
        assert tr.iter_num == it
        return tr.step()

    def evaluate(it):
        assert tr.iter_num == it
        return tr.evaluate()

    r = _loop(cfg, step, evaluate)
    r.update(setup_s=setup, params=tr.model.num_params(), vocab_size=tr.tokenizer.vocab_size,
             embed_scale=tr.model.embed_scale)
    return r


def child_torch(spec):
    import numpy as np
    import torch

    from numformer.data import batches
    from numformer.data.corpus import load_text

    t0 = time.perf_counter()
    cfg = _train_config(spec)
    text, _ = load_text(None if cfg.data == "shakespeare" else cfg.data)
    train_ids, val_ids, tok = batches.prepare(text, tokenizer=cfg.tokenizer, cache_dir=spec["cache_dir"])
    model, fwd, opt, n_params = common.torch_reference(cfg, tok.vocab_size, spec["impl"])
    batch_rng = np.random.default_rng([cfg.seed, 0])                # Trainer.batch_rng
    setup = time.perf_counter() - t0

    def step(it):
        return common.torch_train_step(model, fwd, opt, cfg, train_ids, batch_rng, it)

    def evaluate(it):                                               # Trainer.evaluate's rule
        model.eval()
        out = {}
        with torch.no_grad():
            for split, ids in (("train", train_ids), ("val", val_ids)):
                rng = np.random.default_rng([cfg.seed, 2, it])
                total = 0.0
                for _ in range(cfg.eval_iters):
                    x, y = batches.get_batch(ids, cfg.model.block_size, cfg.batch_size, rng)
                    total += fwd(torch.from_numpy(x), torch.from_numpy(y))[1].item()
                out[split] = total / cfg.eval_iters
        model.train()
        return out

    r = _loop(cfg, step, evaluate)
    r.update(setup_s=setup, params=n_params, vocab_size=tok.vocab_size, embed_scale=model.scale,
             torch_threads=torch.get_num_threads())
    return r


# --------------------------------------------------------------------------------- parent

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max_iters", type=int, default=2000, help="training iterations (default 2000, the trainer's)")
    ap.add_argument("--lr_decay_iters", type=int, default=None, help="end of the cosine decay (default: max_iters)")
    ap.add_argument("--eval_interval", type=int, default=250, help="evaluate every this many steps (default 250)")
    ap.add_argument("--eval_iters", type=int, default=20, help="batches per split and evaluation (default 20)")
    ap.add_argument("--pos_encoding", choices=("sinusoidal", "learned", "all"), default="sinusoidal",
                    help="positional encoding (default: sinusoidal, the trainer's); 'all' runs sinusoidal, "
                         "learned, the paper's √C·wte + P and the seed's wte + P")
    ap.add_argument("--impls", default="numformer,torch", help="comma-separated subset of numformer,torch,compile")
    ap.add_argument("--seeds", default="1337", help="comma-separated seeds; each runs separately (default 1337)")
    ap.add_argument("--cache_dir", default=None, help="numformer token cache (default: numformer's default)")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds allowed per child process")
    args = ap.parse_args(argv)

    import tempfile
    from pathlib import Path

    impls = [i for i in args.impls.split(",") if i]
    if any(i not in IMPLS for i in impls):
        ap.error(f"--impls: choose from {', '.join(IMPLS)}")
    variants = list(VARIANTS) if args.pos_encoding == "all" else [args.pos_encoding]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    info = common.machine_header(with_torch=any(i != "numformer" for i in impls))
    print("numformer train_compare")
    for line in common.header_lines(info):
        print("  " + line)
    print(f"  numformer train defaults on the built-in corpus; {args.max_iters} iterations, "
          f"eval every {args.eval_interval} x {args.eval_iters} batches; variants {variants}; seeds {seeds}\n",
          flush=True)

    script = Path(__file__).resolve()
    results = {}
    with tempfile.TemporaryDirectory(prefix="numformer-compare-") as tmp:
        for seed in seeds:
            for variant in variants:
                for impl in impls:
                    spec = {"impl": impl, "variant": variant, "seed": seed, "max_iters": args.max_iters,
                            "lr_decay_iters": args.lr_decay_iters if args.lr_decay_iters is not None else args.max_iters,
                            "eval_interval": args.eval_interval, "eval_iters": args.eval_iters,
                            "cache_dir": args.cache_dir, "out_dir": str(Path(tmp) / "out")}
                    r = common.run_child(script, spec, args.timeout)
                    results[f"{variant}/{impl}/{seed}"] = r
                    msg = (f"val loss {r['val_loss']:.4f}, train loss {r['train_loss']:.4f}, {r['train_s']:.1f} s "
                           f"training ({r['ms_per_iter']:.1f} ms/iter, {r['tokens_per_sec']:,.0f} tok/s) "
                           f"+ {r['eval_s']:.1f} s eval, peak RSS {common.fmt_mib(r['rss_bytes'])}"
                           if "error" not in r else "FAILED: " + r["error"])
                    print(f"seed {seed} {variant:<20} {LABEL[impl]:<13} {msg}", flush=True)
    common.finish_header(info)
    report(args, impls, variants, seeds, info, results)
    return 0


def report(args, impls, variants, seeds, info, results):
    headers = ["positions", "impl", "val loss", "train loss", "train wall s", "ms/iter", "tokens/s", "speed vs torch",
               "eval s", "peak RSS"]
    rows, summary = [], {}
    f4 = "{:.4f}"
    for variant in variants:
        for impl in impls:
            rs = [results[f"{variant}/{impl}/{s}"] for s in seeds]
            ok = [r for r in rs if "error" not in r]
            if not ok:
                rows.append([variant, LABEL[impl], "failed"] + [""] * (len(headers) - 3))
                continue
            speed = None
            if impl != "torch" and "torch" in impls:
                speed = common.spread([r["tokens_per_sec"] / t["tokens_per_sec"]
                                       for r, t in zip(rs, (results[f"{variant}/torch/{s}"] for s in seeds))
                                       if "error" not in r and "error" not in t])
            s = {"val_loss": common.spread([r["val_loss"] for r in ok]),
                 "train_loss": common.spread([r["train_loss"] for r in ok]),
                 "train_s": common.spread([r["train_s"] for r in ok]),
                 "ms_per_iter": common.spread([r["ms_per_iter"] for r in ok]),
                 "tokens_per_sec": common.spread([r["tokens_per_sec"] for r in ok]),
                 "eval_s": common.spread([r["eval_s"] for r in ok]), "speed_vs_torch": speed,
                 "rss_bytes": max((r["rss_bytes"] or 0) for r in ok)}
            summary[f"{variant}/{impl}"] = s
            rows.append([variant, LABEL[impl], common.fmt_spread(s["val_loss"], f4),
                         common.fmt_spread(s["train_loss"], f4), common.fmt_spread(s["train_s"], "{:.1f}"),
                         common.fmt_spread(s["ms_per_iter"], "{:.1f}"), common.fmt_spread(s["tokens_per_sec"], "{:,.0f}"),
                         "-" if speed is None else common.fmt_spread(speed), common.fmt_spread(s["eval_s"], "{:.1f}"),
                         common.fmt_mib(s["rss_bytes"])])

    checks = []
    for variant in variants:
        a, b = summary.get(f"{variant}/numformer"), summary.get(f"{variant}/torch")
        if a and b:
            d = a["val_loss"]["median"] - b["val_loss"]["median"]
            faster = a["train_s"]["median"] < b["train_s"]["median"]
            checks.append(f"{variant}: val loss numformer - torch = {d:+.4f} (target |Δ| <= 0.03: "
                          f"{'met' if abs(d) <= 0.03 else 'missed'}); training wall time "
                          f"{a['train_s']['median']:.1f} s vs {b['train_s']['median']:.1f} s "
                          f"({'less' if faster else 'NOT less'})")
        for impl in impls:
            for s in seeds:
                r = results[f"{variant}/{impl}/{s}"]
                if "error" in r:
                    checks.append(f"{variant}/{impl}/seed {s} failed: {r['error']}")
        if len(impls) > 1:
            firsts = [results[f"{variant}/{i}/{seeds[0]}"].get("first_loss") for i in impls]
            firsts = [f for f in firsts if f is not None]
            if len(firsts) > 1:
                checks.append(f"{variant}: first training-step losses agree to {max(firsts) - min(firsts):.1e} "
                              "(same weights, same first batch)")
    study = []
    if len(variants) > 1:
        base = {i: summary.get(f"sinusoidal/{i}") for i in impls}
        for variant in variants[1:]:
            for impl in impls:
                s = summary.get(f"{variant}/{impl}")
                if s and base.get(impl):
                    study.append(f"{LABEL[impl]}: {variant} val loss {s['val_loss']['median']:.4f} vs sinusoidal "
                                 f"(wte + P/√C) {base[impl]['val_loss']['median']:.4f}: "
                                 f"{s['val_loss']['median'] - base[impl]['val_loss']['median']:+.4f}")

    curve_headers = ["step"] + [f"{v} {LABEL[i]}" for v in variants for i in impls]
    curve_rows = []
    first = next((results[k] for k in results if "curve" in results[k]), None)
    for j, pt in enumerate(first["curve"] if first else []):
        row = [pt["step"]]
        for v in variants:
            for i in impls:
                r = results.get(f"{v}/{i}/{seeds[0]}", {})
                row.append(f"{r['curve'][j]['val']:.4f}" if "curve" in r and j < len(r["curve"]) else "")
        curve_rows.append(row)

    lines = [f"{args.max_iters} iterations of numformer train's default config; val loss at the end "
             f"({args.eval_iters} batches per split); train wall s = time in training steps only"
             + (f"; median (min-max) over seeds {seeds}" if len(seeds) > 1 else f"; seed {seeds[0]}")]
    print()
    print("\n".join(lines))
    print(common.text_table(headers, rows))
    for c in checks:
        print(c)
    if study:
        print("\npositional encodings (val loss, lower is better):")
        for s in study:
            print("  " + s)
    print(f"\nval loss curve (seed {seeds[0]}):")
    print(common.text_table(curve_headers, curve_rows))
    md = ["# numformer train vs the PyTorch reference", "", *("- " + l for l in common.header_lines(info)), "",
          *lines, "", common.md_table(headers, rows), "", *("- " + c for c in checks)]
    if study:
        md += ["", "Positional encodings (val loss, lower is better):", "", *("- " + s for s in study)]
    md += ["", f"Val loss curve (seed {seeds[0]}):", "", common.md_table(curve_headers, curve_rows)]
    payload = {"machine": info, "args": vars(args), "results": results, "summary": summary}
    common.publish("train_compare", payload, "\n".join(md), info)


if __name__ == "__main__":
    import sys

    if not common.child_main({"numformer": child_numformer, "torch": child_torch, "compile": child_torch}):
        sys.exit(main())
