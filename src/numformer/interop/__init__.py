"""Weights in and out of Hugging Face formats.

- `numformer.interop.gpt2`: GPT-2 checkpoints both ways (`GPT.from_hf`, `numformer convert`).
"""
