"""Weights in and out of Hugging Face formats.

- `numformer.interop.gpt2`: GPT-2 checkpoints both ways (`GPT.from_hf`, `numformer convert`).
- `numformer.interop.bert`: BERT checkpoints in, as numformer's encoder (`numformer embed`).
"""
