"""`numformer convert`: checkpoints to and from Hugging Face format, and GGUF files in.

    numformer convert --from_hf HF_FOLDER --out CHECKPOINT     Hugging Face -> numformer
    numformer convert --to_hf CHECKPOINT --out HF_FOLDER       numformer -> Hugging Face
    numformer convert --from_gguf FILE.gguf --out CHECKPOINT   a GGUF file (llama.cpp's) -> numformer

A Hugging Face folder holds GPT-2 (GPT2LMHeadModel), Llama (LlamaForCausalLM), Mistral
(MistralForCausalLM, without a sliding window) or Qwen2 (Qwen2ForCausalLM): its config.json's
model_type says which. A numformer GPT checkpoint exports as GPT-2, a Llama checkpoint as a Llama
(or a Qwen2, when it has q/k/v biases). An existing --out is replaced only with --overwrite, and
only if numformer wrote it.

The mapping of names, layouts and config keys is in numformer.interop.gpt2 and
numformer.interop.llama (numformer.interop.hf picks one), and numformer.interop.gguf. A GGUF
file's quantized weights are dequantized (numformer.ops.quant): the checkpoint holds them in
float32 (or float64), 4 bytes a parameter, and its tokenizer carries the chat template.
"""

from pathlib import Path

import numpy as np

from numformer.checkpoint import lock_folder
from numformer.errors import CheckpointError, UsageError, hub_hint, looks_like_hub_name
from numformer.interop import hf
from numformer.interop.gguf import describe, read_gguf
from numformer.interop.hf_folder import check_import_target
from numformer.model.llama import Llama


def add_arguments(parser) -> None:
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from_hf", metavar="HF_FOLDER",
                           help="a Hugging Face GPT-2, Llama, Mistral or Qwen2 folder (config.json + "
                                "model.safetensors) to import")
    direction.add_argument("--to_hf", metavar="CHECKPOINT",
                           help="a numformer checkpoint folder to export (a GPT as GPT-2, a Llama as a Llama or Qwen2)")
    direction.add_argument("--from_gguf", metavar="FILE",
                           help="a GGUF file (llama.cpp's format; Llama-family models) to import: weights "
                                "dequantized, tokenizer and chat template carried")
    parser.add_argument("--out", required=True, metavar="FOLDER",
                        help="where to write the converted checkpoint: a new or empty folder (an earlier "
                             "output of the same kind only with --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a numformer checkpoint (--from_hf, --from_gguf) or an earlier export "
                             "(--to_hf) at --out; anything else there is never replaced")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None,
                        help="dtype of the imported weights (--from_hf and --from_gguf; default float32)")


def main(args) -> int:
    for flag, value in (("--from_hf", args.from_hf), ("--to_hf", args.to_hf), ("--from_gguf", args.from_gguf),
                        ("--out", args.out)):
        if value is not None and not value.strip():
            raise UsageError(f"{flag} is empty; give a folder")
    if args.from_hf is not None and looks_like_hub_name(args.from_hf):
        raise CheckpointError(hub_hint("--from_hf", args.from_hf, "causal"))
    if args.to_hf is not None and args.dtype is not None:
        raise UsageError("--dtype applies to --from_hf and --from_gguf only; --to_hf keeps the checkpoint's dtype")
    # a `numformer train` writing into the same folder (--out out/latest) holds its lock
    with lock_folder(Path(args.out).parent, "numformer convert", create=False):
        if args.from_gguf is not None:
            notes, done = [], import_gguf(args.from_gguf, args.out, dtype=args.dtype or "float32",
                                          overwrite=args.overwrite)
        elif args.from_hf is not None:
            notes, done = hf.import_hf(args.from_hf, args.out, dtype=args.dtype or "float32", overwrite=args.overwrite)
        else:
            notes, done = hf.export_hf(args.to_hf, args.out, overwrite=args.overwrite)
    for note in notes:
        print(f"note: {note}")
    print(done)
    return 0


def import_gguf(file, out, *, dtype="float32", overwrite=False) -> str:
    """`convert --from_gguf FILE --out OUT`: a numformer Llama checkpoint of the GGUF file; returns
    the line that says what was written."""
    check_import_target(Path(out), overwrite)
    gguf = read_gguf(file)
    model = Llama.from_gguf(gguf, dtype=np.dtype(dtype))
    model.save(out, tokenizer=model.tokenizer.to_json())
    return f"wrote numformer checkpoint {out} (from GGUF {file}: {describe(gguf)}; weights in {dtype})"
