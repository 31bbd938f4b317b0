"""Weights in and out of Hugging Face formats, and GGUF files in.

- `numformer.interop.gpt2`: GPT-2 checkpoints both ways (`GPT.from_hf`, `numformer convert`).
- `numformer.interop.llama`: Llama, Mistral and Qwen2 checkpoints both ways (`load_hf_llama`,
  `numformer convert`), their tokenizers applied as transformers applies them
  (`numformer.interop.hf_tokenizer`).
- `numformer.interop.hf`: which of the two a folder or a checkpoint is (`numformer convert`,
  `numformer train --init_from`); `numformer.interop.hf_folder`: what every folder has.
- `numformer.interop.bert`: BERT checkpoints in, as numformer's encoder (`numformer embed`).
- `numformer.interop.gguf`: GGUF files (llama.cpp's) in, as a Llama (`Llama.from_gguf`, `numformer
  convert --from_gguf`, `numformer chat`), their tokenizer rebuilt as transformers rebuilds it
  (`numformer.interop.gguf_tokenizer`).
"""
