"""Generation speed, batch 1: numformer (float32, bf16, int8) against llama.cpp (F32, Q8_0) and
Hugging Face `generate`, on the same weights and the same prompt tokens.

    python benchmarks/generate_speed.py                   # gpt2 and small shapes, 1 thread, one round
    python benchmarks/generate_speed.py --repeat 3        # three interleaved rounds: medians and spread
    python benchmarks/generate_speed.py --threads 1,2     # also with two threads each
    python benchmarks/generate_speed.py --configs small --impls numformer,numformer-int8,llama.cpp-q8_0
    python benchmarks/generate_speed.py --configs baby512 --impls numformer,hf,reference --batch_sizes 1,8

From a 64-token prompt (--prompt_len), 128 new tokens (--new_tokens) are generated greedily (the
most likely token each step), one position at a time through a KV cache, each case in its own
child process, one after another:

- numformer, numformer-bf16, numformer-int8: `numformer.model.generate.generate_tokens` with
  temperature 0 on `GPT(cfg, seed)`, after `model.quantize("none" | "bf16" | "int8")` (weight-only:
  bf16, or int8 in blocks of 32 with a float32 scale each; activations stay float32);
- llama.cpp-f32, llama.cpp-q8_0: llama-cpp-python's `Llama(model_path=..., n_threads=T,
  n_threads_batch=T)`, `eval(prompt)` then `eval([token])` per step, the token the argmax of
  the last logits (`get_logits`), run by the Python of --llama_python (default: $LLAMA_PYTHON,
  else /work/peers/llama-venv's). Without it, one line says how to build it and the two cases
  are skipped;
- hf: `transformers.GPT2LMHeadModel.generate(..., do_sample=False, use_cache=True)` on the same
  weights (numformer.interop.gpt2's exporter, the Conv1D transposes), float32;
- reference (not run by default): numformer/reference/gpt.py's ReferenceGPT without a cache, a
  full forward pass over the whole sequence for every new token.

The llama.cpp model is numformer's own export: the float32 GPT saved as a checkpoint with a
byte-level BPE tokenizer trained on the first 200,000 characters of the built-in corpus (512
tokens; the rows above them are only ever fed as ids), `numformer convert --to_hf`'s exporter
(numformer.interop.gpt2.export_hf_gpt2), `n_ctx` added to its config.json (transformers 5 no
longer writes it, llama.cpp's converter wants it), then `convert_hf_to_gguf.py` from the
llama-cpp-python source archive (--llama_src; its vendor/llama.cpp converter and gguf-py are
extracted next to the models) with `--outtype f32` and `--outtype q8_0`, run by --convert_python
(this Python: it needs torch, transformers and numpy). The converter names a byte-level BPE's
pre-tokenizer by the hash of how it splits a test text and refuses one it does not know; a
tokenizer trained here has no known hash, so the converter is run through a small wrapper that
declares it GPT-2's ("gpt-2", the regex it was trained with): the converter's files are not
edited. Prompts are token ids, so the tokenizer never takes part in the timing. The files are
made once per config and seed, in --cache_dir.

Timing: each child runs one untimed generation of 16 tokens, then --reps timed generations
(median). Per generation: the prompt's time (its forward pass and the first token) and the
decoding time of the other new tokens; decode tokens/s = batch x (new tokens - 1) / decoding
seconds, the figure the targets are about. Hugging Face's generate and the reference have no hook
between the prompt and the rest: each timed run there is a 1-token generation and a full one,
the difference the decoding time. --repeat N runs every child N times, interleaved, and reports
each case's median over the rounds (a whole process on a shared machine can run 25 % slow). The
report also gives each case's fastest timed run, and names any case whose median is over twice
it: another process slowed most of its runs (llama.cpp's threads spin at every operation, so on
two threads one busy core stalls both), and ratios with it mean little.

Threads (--threads, default 1; "1,2" measures both): every child gets OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS, MKL_NUM_THREADS and NUMBA_NUM_THREADS = T, numformer also
`limit_blas_threads(T)`, torch `set_num_threads(T)` and llama.cpp n_threads = n_threads_batch = T.

Same model: every child returns the prompt's last-position logits and its greedy tokens; the
report gives each one's largest logit difference from numformer float32 and how many greedy
tokens agree (the first disagreement; random weights give near-ties, and llama.cpp rounds the
activations of a Q8_0 product to 8 bits, so sequences can part without a fault). numformer's
children also give the decode floor: the bytes of weights a token reads
(numformer.perf.decode_weight_bytes) at this machine's copy bandwidth on T threads.
--matmul_floor adds the older matmul floor (numformer.perf.decode_floor: the same generation's
matrix products alone, float32) to the numformer child. Results go to
benchmarks/results/generate_speed-*.{md,json}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import common

IMPLS = ("numformer", "numformer-bf16", "numformer-int8", "llama.cpp-f32", "llama.cpp-q8_0", "hf", "reference")
DEFAULT_IMPLS = IMPLS[:-1]
QUANT = {"numformer": "none", "numformer-bf16": "bf16", "numformer-int8": "int8"}
GGUF_TYPE = {"llama.cpp-f32": "f32", "llama.cpp-q8_0": "q8_0"}
LABEL = {"numformer": "numformer float32", "numformer-bf16": "numformer bf16", "numformer-int8": "numformer int8",
         "llama.cpp-f32": "llama.cpp F32", "llama.cpp-q8_0": "llama.cpp Q8_0", "hf": "HF generate (float32)",
         "reference": "reference (no cache)"}
GEN_CONFIGS = {
    # GPT-2 124M's shape: 12 layers, 12 heads, 768 wide, GPT-2's vocabulary, learned positions, block 1024
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    # the small config's width and depth with the same vocabulary (a byte-level BPE needs more than 256 tokens)
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=1024, vocab_size=50257),
    # the character-level presets of the first measurements (no llama.cpp model: too few tokens for a BPE)
    "baby512": dict(n_layer=4, n_head=4, n_embd=128, block_size=512, vocab_size=65),
    "small512": dict(n_layer=6, n_head=6, n_embd=384, block_size=512, vocab_size=65),
}
DEFAULT_CONFIGS = ("gpt2", "small")
DEFAULT_LLAMA_PYTHON = "/work/peers/llama-venv/bin/python"
DEFAULT_LLAMA_SRC = "/work/peers/src/llama_cpp_python-0.3.36.tar.gz"
BUILD_HINT = ("build it once into a virtual environment (about 10 minutes on 2 cores): python -m venv VENV && "
              "VENV/bin/pip install llama-cpp-python==0.3.36, then pass --llama_python VENV/bin/python")
BPE_VOCAB, BPE_CHARS = 512, 200_000


# --------------------------------------------------------------------------------- children

def _numpy_model(spec):
    import numpy as np

    from numformer.model.config import GPTConfig
    from numformer.model.gpt import GPT

    c = spec["config"]
    cfg = GPTConfig(vocab_size=c["vocab_size"], block_size=c["block_size"], n_layer=c["n_layer"], n_head=c["n_head"],
                    n_embd=c["n_embd"], pos_encoding=spec["pos_encoding"])
    return GPT(cfg, dtype=np.float32, seed=spec["seed"]).eval()


def prompt_ids(seed, vocab_size, batch, length) -> list[list[int]]:
    """The prompt every case gets: token ids drawn with a fixed seed (plain lists: the llama.cpp
    child's Python need not have numformer)."""
    import random

    rng = random.Random(f"{seed}/{batch}/{length}")
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(batch)]


def _time_runs(run, prompt, spec):
    """run(prompt, n) -> (prompt seconds, decoding seconds, tokens (B lists of n)). One untimed
    16-token run, then up to --reps timed runs; returns the medians and run 1's tokens."""
    run(prompt, 16)
    pre, dec, first = [], [], None
    t_start = time.perf_counter()
    while len(dec) < spec["reps"]:
        p, d, tokens = run(prompt, spec["new_tokens"])
        pre.append(p)
        dec.append(d)
        if first is None:
            first = tokens
        if time.perf_counter() - t_start > spec["max_seconds"]:
            break
    return _median(pre), _median(dec), min(dec), len(dec), first


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _batch_result(spec, B, prefill, decode, decode_min, runs, tokens, logits):
    n = spec["new_tokens"]
    return {"prefill_seconds": prefill, "decode_seconds": decode, "decode_seconds_min": decode_min, "runs": runs,
            "decode_tokens_per_sec": B * (n - 1) / decode, "ms_per_token": 1000 * decode / (n - 1),
            "seconds": prefill + decode, "tokens": tokens, "logits": [list(map(float, row)) for row in logits]}


def _child(spec, build, batch_sizes=None):
    """build() -> (run(prompt, n) -> (prefill s, decode s, tokens), last_logits(prompt) -> (B, V))."""
    run, last_logits = build()
    out = {"batches": {}}
    for B in batch_sizes or spec["batch_sizes"]:
        prompt = prompt_ids(spec["seed"], spec["config"]["vocab_size"], B, spec["prompt_len"])
        prefill, decode, decode_min, runs, tokens = _time_runs(run, prompt, spec)
        out["batches"][str(B)] = _batch_result(spec, B, prefill, decode, decode_min, runs, tokens, last_logits(prompt))
    return out


def _difference_runner(generate):
    """For a generate(prompt, n) -> (B, T + n) ids with no hook after the prompt: the prompt's time
    is a 1-token generation's, the decoding time a full one's minus it."""
    def run(prompt, n):
        t0 = time.perf_counter()
        generate(prompt, 1)
        t1 = time.perf_counter()
        out = generate(prompt, n)
        t2 = time.perf_counter()
        return t1 - t0, (t2 - t1) - (t1 - t0), [list(map(int, row[-n:])) for row in out]
    return run


def child_numformer(spec):
    import numpy as np

    from numformer.model.generate import generate_tokens
    from numformer.parallel.process import limit_blas_threads
    from numformer.perf import copy_bandwidth, decode_weight_bytes, peak_rss_bytes

    limit_blas_threads(spec["threads"])
    model = _numpy_model(spec).quantize(QUANT[spec["impl"]])
    model.eval()

    def build():
        def run(prompt, n):
            tokens = generate_tokens(model, np.array(prompt, dtype=np.int64), n, temperature=0)
            t0 = time.perf_counter()
            out = [next(tokens)]
            t1 = time.perf_counter()
            out += list(tokens)
            t2 = time.perf_counter()
            return t1 - t0, t2 - t1, np.stack(out, axis=1).tolist()

        def last_logits(prompt):
            return model.forward(np.array(prompt, dtype=np.int64))[:, -1]

        return run, last_logits

    r = _child(spec, build)
    r["rss_bytes"] = peak_rss_bytes()                 # generation's peak, before the floors' own arrays
    r["weight_bytes_per_token"] = decode_weight_bytes(model)
    r["copy_bytes_per_sec"] = copy_bandwidth(threads=spec["threads"])["bytes_per_sec"]
    if spec.get("matmul_floor") and spec["impl"] == "numformer":
        from numformer.perf import decode_floor

        for B in spec["batch_sizes"]:
            f = decode_floor(model.config, batch_size=B, prompt_len=spec["prompt_len"], new_tokens=spec["new_tokens"],
                             reps=spec["reps"], seed=spec["seed"])
            r["batches"][str(B)]["matmul_floor_seconds"] = f["seconds"]
    return r


def child_llamacpp(spec):
    """Runs under --llama_python, which has llama-cpp-python and numpy, and need not have numformer."""
    import resource

    import numpy as np
    from llama_cpp import Llama

    T = spec["threads"]
    llm = Llama(model_path=spec["gguf"], n_ctx=spec["config"]["block_size"], n_batch=512, n_threads=T,
                n_threads_batch=T, verbose=False, seed=0)
    n_vocab = llm.n_vocab()

    def logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    def build():
        def run(prompt, n):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt[0])
            out = [int(logits().argmax())]
            t1 = time.perf_counter()
            for _ in range(n - 1):
                llm.eval([out[-1]])
                out.append(int(logits().argmax()))
            return t1 - t0, time.perf_counter() - t1, [out]

        def last_logits(prompt):
            llm.reset()
            llm.eval(prompt[0])
            return logits().copy()[None]

        return run, last_logits

    r = _child(spec, build, batch_sizes=[1])
    r["rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r["gguf_bytes"] = os.path.getsize(spec["gguf"])
    return r


def _hf_model(model):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from numformer.interop.gpt2 import gpt_config_to_hf, tensors_to_hf

    d = {k: v for k, v in gpt_config_to_hf(model.config).items() if k not in ("architectures", "torch_dtype")}
    hf = GPT2LMHeadModel(GPT2Config(**d))
    tensors, _ = tensors_to_hf(model)
    missing, unexpected = hf.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise SystemExit(f"HF GPT-2 state dict mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr(), "LM head is not tied"
    return hf.eval()


def child_hf(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    hf = _hf_model(_numpy_model(spec))

    def build():
        def generate(prompt, n):
            ids = torch.tensor(prompt)
            with torch.inference_mode():
                out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0)
            return out.numpy()

        def last_logits(prompt):
            with torch.inference_mode():
                return hf(torch.tensor(prompt)).logits[:, -1].numpy()

        return _difference_runner(generate), last_logits

    r = _child(spec, build)
    r["torch_threads"] = torch.get_num_threads()
    return r


def child_reference(spec):
    import torch

    from numformer.reference.gpt import ReferenceGPT

    torch.set_num_threads(spec["threads"])
    model = _numpy_model(spec)
    ref = ReferenceGPT.from_config(model.config).load_numpy(model.state_dict()).eval()

    def build():
        def generate(prompt, n):
            seq = torch.tensor(prompt)
            with torch.inference_mode():
                for _ in range(n):
                    logits, _ = ref(seq)                                  # (B, T, V), all positions again
                    seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            return seq.numpy()

        def last_logits(prompt):
            with torch.inference_mode():
                return ref(torch.tensor(prompt))[0][:, -1].numpy()

        return _difference_runner(generate), last_logits

    r = _child(spec, build)
    r["torch_threads"] = torch.get_num_threads()
    return r


# --------------------------------------------------------------------------------- the llama.cpp models

CONVERT_WRAPPER = '''"""Run llama.cpp's convert_hf_to_gguf.py with a locally trained byte-level BPE declared as GPT-2's
pre-tokenizer (its hash is unknown to the converter). Written by numformer's benchmarks/generate_speed.py."""
import sys

vendor = sys.argv.pop(1)
sys.path[:0] = [vendor, vendor + "/gguf-py"]
from conversion import base  # noqa: E402

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
import convert_hf_to_gguf  # noqa: E402

sys.argv[0] = "convert_hf_to_gguf.py"
convert_hf_to_gguf.main()
'''


def extract_converter(src: Path, cache: Path) -> Path:
    """vendor/llama.cpp's convert_hf_to_gguf.py, conversion/ and gguf-py/ from the sdist, once."""
    root = cache / src.name.removesuffix(".tar.gz")
    vendor = root / "vendor" / "llama.cpp"
    if (vendor / "convert_hf_to_gguf.py").is_file():
        return vendor
    wanted = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/")
    with tarfile.open(src) as tar:
        members = [m for m in tar.getmembers()
                   if (m.isfile() or m.isdir()) and any(m.name.partition("/")[2].startswith(w) for w in wanted)]
        tar.extractall(cache, members=members, filter="data")
    if not (vendor / "convert_hf_to_gguf.py").is_file():
        raise RuntimeError(f"{src} has no vendor/llama.cpp/convert_hf_to_gguf.py")
    return vendor


def make_ggufs(name, cfg, args) -> dict:
    """{"f32": path, "q8_0": path} of the config's model, made once (module docstring), or {"error": why}."""
    if cfg["vocab_size"] < BPE_VOCAB:
        return {"error": f"vocab {cfg['vocab_size']} is too small for the byte-level BPE a GGUF export needs "
                         f"({BPE_VOCAB} tokens)"}
    src = Path(args.llama_src)
    if not src.is_file():
        return {"error": f"no llama-cpp-python source archive at {src} (--llama_src): its convert_hf_to_gguf.py "
                         "makes the model"}
    key = hashlib.sha256(json.dumps([cfg, args.seed, args.pos_encoding, BPE_VOCAB, BPE_CHARS],
                                    sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(args.cache_dir).expanduser()
    folder = cache / f"{name}-{key}"
    out = {t: folder / f"model-{t}.gguf" for t in GGUF_TYPE.values()}
    if all(p.is_file() for p in out.values()):
        return {t: str(p) for t, p in out.items()}
    folder.mkdir(parents=True, exist_ok=True)
    vendor = extract_converter(src, cache)
    hf_dir = folder / "hf"
    if not (hf_dir / "config.json").is_file():
        print(f"  making {name}'s llama.cpp model in {folder}: checkpoint, --to_hf export, convert_hf_to_gguf.py",
              flush=True)
        from numformer.data.corpus import shakespeare
        from numformer.data.tokenizer import BPETokenizer
        from numformer.interop.gpt2 import export_hf_gpt2

        spec = {"config": cfg, "pos_encoding": args.pos_encoding, "seed": args.seed}
        tok = BPETokenizer.train(shakespeare()[:BPE_CHARS], BPE_VOCAB)
        _numpy_model(spec).save(folder / "ckpt", tokenizer=tok.to_json())
        export_hf_gpt2(folder / "ckpt", hf_dir, overwrite=True)
        conf = json.loads((hf_dir / "config.json").read_text())
        conf.setdefault("n_ctx", conf["n_positions"])                 # llama.cpp's GPT-2 converter reads n_ctx
        (hf_dir / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    wrapper = cache / "convert_gpt2_bpe.py"
    wrapper.write_text(CONVERT_WRAPPER)
    for t, path in out.items():
        if path.is_file():
            continue
        tmp = path.with_suffix(".part")
        proc = subprocess.run([args.convert_python, str(wrapper), str(vendor), str(hf_dir), "--outtype", t,
                               "--outfile", str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0 or not tmp.is_file():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-3:]
            return {"error": f"convert_hf_to_gguf.py --outtype {t} failed: " + " | ".join(tail)}
        tmp.rename(path)
    return {t: str(p) for t, p in out.items()}


# --------------------------------------------------------------------------------- parent

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                    help="preset names (%s) or NAME:key=value,... (default: %s)"
                         % (", ".join(GEN_CONFIGS), " ".join(DEFAULT_CONFIGS)))
    ap.add_argument("--impls", default=",".join(DEFAULT_IMPLS),
                    help=f"comma-separated subset of {','.join(IMPLS)} (default: all but reference)")
    ap.add_argument("--batch_sizes", default="1", help="comma-separated batch sizes (default 1; llama.cpp: 1 only)")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts, each case run with each "
                                                   "(default 1)")
    ap.add_argument("--prompt_len", type=int, default=64)
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3, help="timed runs per case, median (default 3)")
    ap.add_argument("--max_seconds", type=float, default=60,
                    help="stop repeating a case once its timed runs took this long (at least one run; default 60)")
    ap.add_argument("--pos_encoding", choices=("learned", "sinusoidal"), default="learned")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per child process")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of all children, interleaved; > 1 reports each case's median over the rounds "
                         "and the ratios as median (min-max) of the rounds' ratios")
    ap.add_argument("--llama_python", default=os.environ.get("LLAMA_PYTHON", DEFAULT_LLAMA_PYTHON),
                    help="a Python with llama-cpp-python (default: $LLAMA_PYTHON, else %s)" % DEFAULT_LLAMA_PYTHON)
    ap.add_argument("--llama_src", default=os.environ.get("LLAMA_SRC", DEFAULT_LLAMA_SRC),
                    help="llama-cpp-python's source archive, for its convert_hf_to_gguf.py (default: $LLAMA_SRC, "
                         "else %s)" % DEFAULT_LLAMA_SRC)
    ap.add_argument("--convert_python", default=sys.executable,
                    help="the Python that runs convert_hf_to_gguf.py: needs torch, transformers, numpy "
                         "(default: this one)")
    ap.add_argument("--cache_dir", default="~/.cache/numformer/generate_speed",
                    help="where the exported and converted models are kept (default: %(default)s)")
    ap.add_argument("--matmul_floor", action="store_true",
                    help="also time the float32 generation's matrix products alone (numformer.perf.decode_floor)")
    args = ap.parse_args(argv)

    configs = common.parse_configs(args.configs, GEN_CONFIGS)
    impls = [i for i in args.impls.split(",") if i]
    if any(i not in IMPLS for i in impls):
        ap.error(f"--impls: choose from {', '.join(IMPLS)}")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
        threads = [int(t) for t in args.threads.split(",") if t]
    except ValueError:
        ap.error("--batch_sizes and --threads take comma-separated whole numbers")
    if not threads or min(threads) < 1 or not batch_sizes or min(batch_sizes) < 1:
        ap.error("--batch_sizes and --threads need whole numbers of at least 1")
    if args.new_tokens < 2:
        ap.error("--new_tokens must be at least 2 (the first comes with the prompt)")
    for name, c in configs.items():
        if c["block_size"] < args.prompt_len + args.new_tokens:
            ap.error(f"config {name}: block_size {c['block_size']} < prompt {args.prompt_len} + {args.new_tokens} new tokens")

    llama_impls = [i for i in impls if i in GGUF_TYPE]
    if llama_impls and not Path(args.llama_python).is_file():
        print(f"llama.cpp peer skipped: no Python at {args.llama_python} (--llama_python); {BUILD_HINT}")
        impls = [i for i in impls if i not in GGUF_TYPE]
        llama_impls = []

    info = common.machine_header(with_torch=any(i in ("hf", "reference") for i in impls))
    print("numformer generate_speed")
    for line in common.header_lines(info):
        print("  " + line)
    print(f"  {args.new_tokens} new tokens from a {args.prompt_len}-token prompt, greedy; batch sizes {batch_sizes}; "
          f"threads {threads}; {args.pos_encoding} positions\n", flush=True)

    ggufs = {name: make_ggufs(name, cfg, args) for name, cfg in configs.items()} if llama_impls else {}
    for name, g in ggufs.items():
        if "error" in g:
            print(f"{name}: llama.cpp cases skipped: {g['error']}", flush=True)

    script = Path(__file__).resolve()
    rounds = []
    for rnd in range(args.repeat):
        tag = f"[round {rnd + 1}/{args.repeat}] " if args.repeat > 1 else ""
        results = {}
        for T in threads:
            env = {k: str(T) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
            for name, cfg in configs.items():
                for impl in impls:
                    key = f"{name}/{T}/{impl}"
                    spec = {"impl": impl, "config": cfg, "pos_encoding": args.pos_encoding, "seed": args.seed,
                            "batch_sizes": batch_sizes, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                            "reps": args.reps, "max_seconds": args.max_seconds, "threads": T,
                            "matmul_floor": args.matmul_floor}
                    if impl in GGUF_TYPE:
                        g = ggufs[name]
                        if "error" in g:
                            results[key] = {"error": g["error"]}
                            continue
                        spec["gguf"] = g[GGUF_TYPE[impl]]
                    r = common.run_child(script, spec, args.timeout, env=env,
                                         python=args.llama_python if impl in GGUF_TYPE else None)
                    results[key] = r
                    if "error" in r:
                        print(f"{tag}{name:<7} T{T} {LABEL[impl]:<22} FAILED: {r['error']}", flush=True)
                        continue
                    for B, b in r["batches"].items():
                        print(f"{tag}{name:<7} T{T} {LABEL[impl]:<22} batch {B}: {b['decode_tokens_per_sec']:,.1f} "
                              f"tok/s ({b['ms_per_token']:.2f} ms/token, median of {b['runs']}), prompt "
                              f"{1000 * b['prefill_seconds']:,.0f} ms, peak RSS {common.fmt_mib(r.get('rss_bytes'))}",
                              flush=True)
        rounds.append(results)
    common.finish_header(info)
    report(args, configs, impls, batch_sizes, threads, info, merge_rounds(rounds), rounds)
    return 0


def merge_rounds(rounds):
    """One results dict of the rounds' medians: per case and batch the median prompt and decoding
    seconds (and matmul floor), with tokens/s from them; tokens and logits from the first round
    that has them."""
    merged = {}
    for key in rounds[0]:
        ok = [r[key] for r in rounds if "error" not in r[key]]
        if not ok:
            merged[key] = rounds[0][key]
            continue
        m = {k: v for k, v in ok[0].items() if k != "batches"}
        m["rss_bytes"] = max((r.get("rss_bytes") or 0 for r in ok), default=None) or None
        if "copy_bytes_per_sec" in ok[0]:
            m["copy_bytes_per_sec"] = common.median([r["copy_bytes_per_sec"] for r in ok])
        m["batches"] = {}
        for B, first in ok[0]["batches"].items():
            bs = [r["batches"][B] for r in ok]
            b = dict(first)
            for k in ("prefill_seconds", "decode_seconds", "seconds", "matmul_floor_seconds"):
                if k in first:
                    b[k] = common.median([x.get(k) for x in bs])
            b["decode_tokens_per_sec"] = first["decode_tokens_per_sec"] * first["decode_seconds"] / b["decode_seconds"]
            b["ms_per_token"] = first["ms_per_token"] * b["decode_seconds"] / first["decode_seconds"]
            b["runs"] = sum(x["runs"] for x in bs)
            if all("decode_seconds_min" in x for x in bs):
                b["decode_seconds_min"] = min(x["decode_seconds_min"] for x in bs)
            m["batches"][B] = b
        merged[key] = m
    return merged


def _agree(a, b):
    """Greedy tokens of two cases: how many leading tokens agree (of the first row)."""
    a, b = a[0], b[0]
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _ratio_rounds(rounds, key_a, key_b, B):
    """Per round, decode tokens/s of a over b (= b's decoding seconds over a's), as a spread."""
    xs = []
    for r in rounds:
        a, b = r.get(key_a, {}), r.get(key_b, {})
        if "error" in a or "error" in b or not a or not b:
            continue
        ba, bb = a["batches"].get(str(B)), b["batches"].get(str(B))
        if ba and bb:
            xs.append(ba["decode_tokens_per_sec"] / bb["decode_tokens_per_sec"])
    return common.spread(xs)


TARGETS = [  # (case, peer, factor): case's decode tokens/s >= factor x peer's (issue: "Targets")
    ("numformer-int8", "numformer", 2.0), ("numformer-int8", "llama.cpp-q8_0", 1.0),
    ("numformer", "llama.cpp-f32", 1.0), ("numformer-bf16", "numformer", 1.4),
]


def report(args, configs, impls, batch_sizes, threads, info, results, rounds):
    import numpy as np

    headers = ["config", "threads", "batch", "impl", "decode tok/s", "ms/token", "best ms/token", "prompt ms",
               "vs numformer f32",
               "decode floor ms", "peak RSS", "max |Δlogit| vs f32", "greedy tokens = f32"]
    rows, summary, targets = [], {}, []
    for name, cfg in configs.items():
        for T in threads:
            for B in batch_sizes:
                got = {i: results[f"{name}/{T}/{i}"].get("batches", {}).get(str(B)) for i in impls}
                base = got.get("numformer")
                for impl in impls:
                    r, b = results[f"{name}/{T}/{impl}"], got[impl]
                    if b is None:
                        if B == 1 or impl not in GGUF_TYPE:
                            why = r.get("error", "no result")
                            rows.append([name, T, B, LABEL[impl], "failed: " + why[:90]] + [""] * (len(headers) - 5))
                        continue
                    vs = b["decode_tokens_per_sec"] / base["decode_tokens_per_sec"] if base else None
                    dlogit = agree = None
                    if base is not None:
                        dlogit = float(np.max(np.abs(np.array(b["logits"]) - np.array(base["logits"]))))
                        agree = _agree(b["tokens"], base["tokens"])
                    floor_ms = None
                    if r.get("weight_bytes_per_token") and r.get("copy_bytes_per_sec"):
                        floor_ms = 1000 * r["weight_bytes_per_token"] / r["copy_bytes_per_sec"]
                    summary[f"{name}/{T}/{B}/{impl}"] = {
                        "decode_tokens_per_sec": b["decode_tokens_per_sec"], "ms_per_token": b["ms_per_token"],
                        "best_ms_per_token": (1000 * b["decode_seconds_min"] / (args.new_tokens - 1)
                                              if "decode_seconds_min" in b else None),
                        "prefill_ms": 1000 * b["prefill_seconds"], "vs_numformer_f32": vs, "floor_ms": floor_ms,
                        "weight_bytes_per_token": r.get("weight_bytes_per_token"), "gguf_bytes": r.get("gguf_bytes"),
                        "max_abs_logit_diff": dlogit, "agree_tokens": agree, "rss_bytes": r.get("rss_bytes")}
                    best = (1000 * b["decode_seconds_min"] / (args.new_tokens - 1)) if "decode_seconds_min" in b else None
                    rows.append([name, T, B, LABEL[impl], f"{b['decode_tokens_per_sec']:,.1f}", f"{b['ms_per_token']:,.2f}",
                                 "-" if best is None else f"{best:,.2f}",
                                 f"{1000 * b['prefill_seconds']:,.0f}",
                                 "-" if impl == "numformer" or vs is None else f"{vs:.2f}",
                                 "-" if floor_ms is None else f"{floor_ms:.2f}", common.fmt_mib(r.get("rss_bytes")),
                                 "-" if impl == "numformer" or dlogit is None else f"{dlogit:.1e}",
                                 "-" if impl == "numformer" or agree is None else f"first {agree} of {len(b['tokens'][0])}"])
                if B != 1:
                    continue
                for case, peer, factor in TARGETS:
                    if got.get(case) is None or got.get(peer) is None:
                        continue
                    sp = _ratio_rounds(rounds, f"{name}/{T}/{case}", f"{name}/{T}/{peer}", B)
                    val = sp["median"] if sp else None
                    if val is None:
                        continue
                    summary[f"target/{name}/{T}/{case}/{peer}"] = {"ratio": val, "spread": sp, "target": factor}
                    targets.append(f"{name}, {T} thread{'s' if T > 1 else ''}: {LABEL[case]} vs {LABEL[peer]}: "
                                   f"{common.fmt_spread(sp)}x (target >= {factor:.2f}x) "
                                   + ("met" if val >= factor else f"missed by {100 * (1 - val / factor):.0f} %"))
    notes = [f"decode tok/s = batch x {args.new_tokens - 1} / the seconds after the first new token (the prompt's "
             "forward pass and the first token are 'prompt ms'); best ms/token: the fastest timed run of all rounds "
             "(other processes only ever add time, so on a busy machine it is the closer to the case's own speed); "
             "vs numformer f32: decode tokens/s over numformer float32's (> 1: faster)",
             "decode floor: the bytes of weights one token reads (numformer.perf.decode_weight_bytes: int8 1.125 "
             "bytes a weight, bf16 2, float32 4; the tied embedding read whole as the LM head) at the copy bandwidth "
             "on the same threads; llama.cpp reads its GGUF file's tensors: "
             + ", ".join(f"{n} {t} {os.path.getsize(p) / 1e6:,.0f} MB" for n, g in ggufs_of(results).items()
                         for t, p in g.items()),
             "max |Δlogit|: the prompt's last-position logits against numformer float32's; greedy tokens: how many "
             "leading greedy tokens equal numformer float32's (random weights give near-ties, and llama.cpp's Q8_0 "
             "products round the activations to 8 bits, so the sequences may part without a fault)",
             "threads: every child had OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS = T; llama.cpp n_threads = n_threads_batch "
             "= T; torch set_num_threads(T)"]
    unsteady = [f"{k.split('/')[0]} T{k.split('/')[1]} {LABEL[k.split('/')[3]]} ({v['ms_per_token']:.1f} against "
                f"{v['best_ms_per_token']:.1f})" for k, v in summary.items()
                if v.get("best_ms_per_token") and v["ms_per_token"] > 2 * v["best_ms_per_token"]]
    if unsteady:
        notes.append("median ms/token over twice the fastest run, so another process slowed most runs and the "
                     "ratios with these cases mean little: " + "; ".join(unsteady))
    if len(rounds) > 1:
        notes.insert(0, f"each number is the median over {len(rounds)} rounds (one child per case and round, "
                        "interleaved); target ratios are median (min-max) of the rounds' ratios")
    for name in configs:
        for T in threads:
            b = results.get(f"{name}/{T}/numformer", {}).get("batches", {}).get("1", {})
            if b.get("matmul_floor_seconds"):
                notes.append(f"{name}, {T} thread(s): matmul floor {1000 * b['matmul_floor_seconds'] / args.new_tokens:.2f} "
                             "ms/step (the float32 generation's matrix products alone)")
    table = common.text_table(headers, rows)
    print()
    print(table)
    for n in notes:
        print("  " + n)
    if targets:
        print("\ntargets (decode tokens/s, batch 1):\n" + "\n".join("  " + t for t in targets))
    md = ["# numformer generation speed", "", *("- " + l for l in common.header_lines(info)),
          f"- {args.new_tokens} new tokens from a {args.prompt_len}-token prompt, greedy, {args.pos_encoding} positions",
          "", common.md_table(headers, rows), "", *("- " + n for n in notes)]
    if targets:
        md += ["", "Targets (decode tokens/s, batch 1):", "", *("- " + t for t in targets)]
    payload = {"machine": info, "args": vars(args), "configs": configs, "results": results, "rounds": rounds,
               "summary": summary}
    common.publish("generate_speed", payload, "\n".join(md), info)


def ggufs_of(results) -> dict:
    """{config: {type: path}} of the GGUF files the llama.cpp children ran."""
    out = {}
    for key, r in results.items():
        name, _, impl = key.split("/", 2)
        if impl in GGUF_TYPE and r.get("gguf"):
            out.setdefault(name, {})[GGUF_TYPE[impl]] = r["gguf"]
    return out


def _llama_child_main() -> bool:
    """The llama.cpp child runs under another Python, without numformer: handled before common's."""
    if len(sys.argv) < 3 or sys.argv[1] != "--child":
        return False
    spec = json.loads(sys.argv[2])
    if spec["impl"] not in GGUF_TYPE:
        return False
    result = child_llamacpp(spec)
    result["gguf"] = spec["gguf"]
    print("RESULT " + json.dumps(result), flush=True)
    return True


if __name__ == "__main__":
    if not _llama_child_main() and not common.child_main(
            {"numformer": child_numformer, "numformer-bf16": child_numformer, "numformer-int8": child_numformer,
             "hf": child_hf, "reference": child_reference}):
        sys.exit(main())
