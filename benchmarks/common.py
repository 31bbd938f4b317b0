"""Helpers shared by the benchmark scripts: configs, child processes, statistics, tables, results.

Every measured case runs in its own child process (the script re-runs itself with `--child SPEC`),
one after another, so that no case pays for another's imports, threads or memory, and each
reports its own peak RSS. The parent never imports torch. The child prints one line
`RESULT {json}` on stdout; anything else it prints is kept only to explain a failure.

Environment variables are passed to the children unchanged: OPENBLAS_CORETYPE, OMP_NUM_THREADS
and the like are respected, never set (generate_speed.py alone pins the thread counts of its
children, to its --threads, and its report says so). Torch uses its default thread count and NumPy's BLAS its
own; the header of every report prints both.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# Measure the tree these scripts sit in.
for _p in (str(REPO / "src"),):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# Training configs: nanoGPT's CPU "baby GPT" (its README's Shakespeare-char CPU run) and its
# "small" Shakespeare-char config (train_shakespeare_char.py, batch 8 instead of 64).
TRAIN_CONFIGS = {
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8, vocab_size=65),
    # not run by default; select with --configs
    "medium": dict(n_layer=8, n_head=8, n_embd=512, block_size=256, batch_size=8, vocab_size=65),
    "gpt2-char": dict(n_layer=12, n_head=12, n_embd=768, block_size=256, batch_size=4, vocab_size=65),
}
CONFIG_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")


def parse_configs(specs, presets=TRAIN_CONFIGS) -> dict[str, dict]:
    """Config names or inline specs -> {name: config dict}.

    A spec is a preset name (`baby`) or `NAME:key=value,...` starting from the baby config, e.g.
    `wide:n_embd=256,n_head=8`. Keys: n_layer, n_head, n_embd, block_size, batch_size, vocab_size.
    """
    out = {}
    for spec in specs:
        for part in [spec] if ":" in spec else spec.split(","):
            part = part.strip()
            if not part:
                continue
            if ":" not in part:
                if part not in presets:
                    raise SystemExit(f"unknown config {part!r}; presets: {', '.join(presets)}, "
                                     f"or NAME:key=value,... (keys: {', '.join(CONFIG_KEYS)})")
                out[part] = dict(presets[part])
                continue
            name, _, body = part.partition(":")
            base = dict(presets.get(name, next(iter(presets.values()))))
            for kv in filter(None, body.split(",")):
                k, _, v = kv.partition("=")
                if k not in base:
                    raise SystemExit(f"config {name}: unknown key {k!r} (keys: {', '.join(base)})")
                base[k] = int(v)
            out[name] = base
    return out


def describe(cfg: dict) -> str:
    return (f"{cfg['n_layer']}L {cfg['n_head']}H C{cfg['n_embd']} T{cfg['block_size']}"
            + (f" B{cfg['batch_size']}" if "batch_size" in cfg else "") + f" V{cfg['vocab_size']}")


# --------------------------------------------------------------------------------- child processes

def run_child(script: str, spec: dict, timeout: float | None = None, *, python: str | None = None,
              env: dict | None = None) -> dict:
    """Run `python script --child JSON` and return its RESULT dict, or {"error": ...} on failure.
    python: another interpreter (a peer's own virtual environment); env: variables to add to this
    process's environment for the child (a script that pins thread counts says so in its report)."""
    cmd = [python or sys.executable, str(script), "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})}, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            r["child_wall_s"] = wall
            return r
    tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-12:]
    return {"error": f"exit status {proc.returncode}: " + " | ".join(tail), "child_wall_s": wall}


def child_main(handlers: dict) -> bool:
    """If this process is a child (`--child SPEC`), run handlers[spec['impl']](spec), print the
    RESULT line with the peak RSS added, and return True. Otherwise return False."""
    if len(sys.argv) < 3 or sys.argv[1] != "--child":
        return False
    from numformer.perf import peak_rss_bytes

    spec = json.loads(sys.argv[2])
    result = handlers[spec["impl"]](spec)
    result.setdefault("rss_bytes", peak_rss_bytes())   # a child that measures more afterwards sets it first
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)
    return True


def torch_info() -> dict:
    """torch's version and thread counts, asked of a child so the parent never imports torch."""
    code = ("import json, torch; print(json.dumps({'torch': torch.__version__, "
            "'torch_threads': torch.get_num_threads(), 'torch_interop_threads': torch.get_num_interop_threads()}))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as e:  # torch missing or broken: say so in the header, let the cases fail
        return {"torch": f"unavailable ({type(e).__name__})", "torch_threads": None}


def machine_header(with_torch: bool = True) -> dict:
    from numformer.perf import blas_info, cpu_model

    info = {"cpu": cpu_model(), "python": sys.version.split()[0], **blas_info(),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                           if k in os.environ},
            "load_avg_start": _loadavg(), "date": _dt.datetime.now().isoformat(timespec="seconds")}
    if with_torch:
        info.update(torch_info())
    return info


def header_lines(info: dict) -> list[str]:
    from numformer.ops.fast import dispatch

    lines = [f"machine: {info['cpu']}; Python {info['python']}",
             f"NumPy {info['numpy']} with {info.get('blas') or 'unknown BLAS'}"
             + (f" ({info['blas_arch']} kernels)" if info.get("blas_arch") else "")
             + f", BLAS threads: {info.get('blas_threads') or 'unknown'}",
             f"numformer's kernels: {info.get('kernels') or 'unknown'}",
             f"numformer's linear products: {info.get('linear_blas') or 'unknown'}"]
    if info.get("dispatch"):
        lines.append("which implementation each of numformer's fast ops runs (numformer.ops.fast.dispatch):")
        lines += ["  " + line for line in dispatch.report_lines(info["dispatch"])]
    if "torch" in info:
        lines.append(f"torch {info['torch']}, torch threads: {info.get('torch_threads')} "
                     f"(interop {info.get('torch_interop_threads')})")
    env = dict(info.get("thread_env") or {})
    if info.get("OPENBLAS_CORETYPE"):
        env["OPENBLAS_CORETYPE"] = info["OPENBLAS_CORETYPE"]
    lines.append("environment: " + (", ".join(f"{k}={v}" for k, v in env.items()) or "no thread or BLAS overrides"))
    if info.get("load_avg_start") is not None:
        lines.append(f"load average at start: {info['load_avg_start']:.2f} (1 min)"
                     + (f", at end: {info['load_avg_end']:.2f}" if info.get("load_avg_end") is not None else ""))
    warning = load_warning(info)
    if warning:
        lines.append(warning)
    return lines


def load_warning(info: dict) -> str | None:
    """A warning when other processes were busy as the run started (load average above half the
    cores): then every timing and ratio of the run is suspect."""
    load = info.get("load_avg_start")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if load is not None and load > 0.5 * cores:
        return (f"WARNING: load average {load:.1f} on {cores} cores when the run started: other processes "
                "were competing for the CPU, so these timings and ratios are not reliable; rerun on a quiet machine")
    return None


def _loadavg():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def finish_header(info: dict) -> None:
    info["load_avg_end"] = _loadavg()


# --------------------------------------------------------------------------------- statistics

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs) -> dict | None:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


def fmt_spread(s, fmt="{:.2f}") -> str:
    if not s:
        return "n/a"
    if s["n"] == 1:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


# --------------------------------------------------------------------------------- tables and files

def text_table(headers, rows) -> str:
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def md_table(headers, rows) -> str:
    out = ["| " + " | ".join(str(h) for h in headers) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join("" if c is None else str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_results(name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write results/NAME-<time>.{json,md} and copies as results/NAME-latest.{json,md}."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    paths = []
    for suffix, text in (("json", json.dumps(payload, indent=1, default=str) + "\n"), ("md", markdown + "\n")):
        p = RESULTS / f"{name}-{stamp}.{suffix}"
        p.write_text(text, encoding="utf-8")
        (RESULTS / f"{name}-latest.{suffix}").write_text(text, encoding="utf-8")
        paths.append(p)
    return paths[0], paths[1]


def publish(name: str, payload: dict, markdown: str, info: dict) -> None:
    """Write the results (write_results), then print the busy-machine warning, if any, and where
    the files went: the end of every benchmark script."""
    pj, pm = write_results(name, payload, markdown)
    warning = load_warning(info)
    if warning:
        print("\n" + warning)
    print(f"\nwrote {pm.relative_to(REPO)} and {pj.relative_to(REPO)}")


def torch_reference(cfg, vocab_size: int, impl: str):
    """The PyTorch side of a side-by-side run: numformer.reference.gpt.ReferenceGPT with the
    initial weights numformer's trainer starts from (GPT(cfg.model, seed=cfg.seed)), in train
    mode, with AdamW as the trainer configures it. impl "compile" wraps it in torch.compile.
    Returns (model, forward function, optimizer, number of parameters)."""
    import dataclasses
    import gc

    import numpy as np
    import torch

    from numformer.model.gpt import GPT
    from numformer.reference.gpt import ReferenceGPT

    mcfg = dataclasses.replace(cfg.model, vocab_size=vocab_size)
    np_model = GPT(mcfg, dtype=np.float32, seed=cfg.seed)          # the trainer's initial weights
    model = ReferenceGPT.from_config(mcfg).load_numpy(np_model.state_dict())
    n_params = np_model.num_params()
    del np_model
    gc.collect()
    model.train()
    opt = model.configure_adamw(cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2), eps=1e-8)
    fwd = torch.compile(model) if impl == "compile" else model
    return model, fwd, opt, n_params


def torch_train_step(model, fwd, opt, cfg, train_ids, rng, it: int) -> float:
    """One step of the PyTorch reference as numformer's Trainer.step takes it: the cosine
    learning rate, the trainer's batch draw, forward, backward, clipping and AdamW."""
    import torch

    from numformer.data import batches
    from numformer.optim.schedule import cosine_lr

    lr = cosine_lr(it, cfg.learning_rate, cfg.warmup_iters, cfg.lr_decay_iters, cfg.min_lr)
    for group in opt.param_groups:
        group["lr"] = lr
    x, y = batches.get_batch(train_ids, cfg.model.block_size, cfg.batch_size, rng)
    opt.zero_grad(set_to_none=True)
    _, loss = fwd(torch.from_numpy(x), torch.from_numpy(y))
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return loss.item()


def fmt_mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def fmt_num(x, fmt="{:,.0f}") -> str:
    return "n/a" if x is None else fmt.format(x)
