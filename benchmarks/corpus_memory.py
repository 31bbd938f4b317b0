"""Peak memory of `numformer train` as the corpus grows: first run (the corpus read, hashed and
tokenized into the token cache) and cached run (the ids read from the cache file, window by window).

For each size, a synthetic corpus of that many bytes (the built-in Shakespeare repeated, the last
copy cut at a line end) is written into a temporary folder, and `numformer train --max_iters 2`
runs on it twice in a child process of its own, with a fresh cache folder: once with the cache
empty, once from the cache. Each child's peak resident memory comes from the kernel's accounting
for that child alone (os.wait4, the rusage of resource.getrusage's RUSAGE_CHILDREN for one child).

    python benchmarks/corpus_memory.py                      # 1, 60 and 200 MB
    python benchmarks/corpus_memory.py --sizes 60,1000      # 1000 MB takes a few minutes per run

The model is the default baby GPT (its memory is the same for every size), so the rows differ
by what the corpus costs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the source tree on sys.path)

MB = 1_000_000


def write_corpus(path: Path, size: int) -> int:
    """Write `size` bytes (at most; cut at a line end) of repeated Shakespeare; returns the size."""
    from numformer.data.corpus import shakespeare

    block = shakespeare().encode("utf-8")
    written = 0
    with open(path, "wb") as f:
        while written + len(block) <= size:
            f.write(block)
            written += len(block)
        rest = block[:size - written]
        rest = rest[:rest.rfind(b"\n") + 1]
        f.write(rest)
        written += len(rest)
    return written


def train_once(corpus: Path, work: Path, extra: list[str]) -> dict:
    """One `numformer train` child: its exit status, wall time and peak RSS."""
    cmd = [sys.executable, "-m", "numformer", "train", "--data", str(corpus), "--max_iters", "2",
           "--eval_interval", "2", "--eval_iters", "1", "--sample_tokens", "0", "--no_plot", "--overwrite",
           "--out_dir", str(work / "out"), "--cache_dir", str(work / "cache"), *extra]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(common.REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    with open(work / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=work)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = {"exit": proc.returncode, "wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024}
    if proc.returncode:
        out["error"] = (work / "stderr.txt").read_text(errors="replace").strip().splitlines()[-1:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,60,200", help="corpus sizes in MB (10^6 bytes), comma-separated; "
                                                        "1000 (1 GB) takes a few minutes per run")
    ap.add_argument("--tokenizer", default="char", choices=("char", "bpe"))
    ap.add_argument("--tmp", default=None, help="folder for the corpora and caches (default: the system temp folder)")
    args = ap.parse_args()
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]

    info = common.machine_header(with_torch=False)
    print("\n".join(common.header_lines(info)))
    print(f"numformer train --max_iters 2 on repeated Shakespeare, --tokenizer {args.tokenizer}\n")
    rows, raw = [], []
    for mb in sizes:
        with tempfile.TemporaryDirectory(dir=args.tmp, prefix="numformer-corpus-memory-") as tmp:
            work = Path(tmp)
            corpus = work / "corpus.txt"
            size = write_corpus(corpus, int(mb * MB))
            extra = ["--tokenizer", args.tokenizer]
            first = train_once(corpus, work, extra)
            cached = train_once(corpus, work, extra)
            cache_bytes = sum(p.stat().st_size for p in (work / "cache").glob("tokens-*.bin"))
        result = {"corpus_bytes": size, "cache_bytes": cache_bytes, "first": first, "cached": cached}
        raw.append(result)
        row = [f"{size / MB:,.0f} MB", f"{cache_bytes / MB:,.0f} MB"]
        for run in (first, cached):
            if run["exit"]:
                row += ["failed: " + " ".join(run.get("error", [])), "", ""]
            else:
                peak = run["peak_rss_bytes"]
                row += [f"{peak / MB:,.0f} MB", f"{peak / size:.2f}×", f"{run['wall_s']:.1f} s"]
        rows.append(row)
        print("  ".join(row), flush=True)
    common.finish_header(info)
    md = "\n".join(["# corpus_memory", "", *[f"- {line}" for line in common.header_lines(info)], "",
                    common.md_table(HEADERS, rows)])
    print()
    print(common.text_table(HEADERS, rows))
    common.publish("corpus_memory", {"info": info, "tokenizer": args.tokenizer, "results": raw}, md, info)


HEADERS = ["corpus", "token cache", "first run: peak RSS", "× corpus", "time", "cached: peak RSS", "× corpus", "time"]

if __name__ == "__main__":
    main()
