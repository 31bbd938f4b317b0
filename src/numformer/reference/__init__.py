"""PyTorch references that the tests, `numformer check` and the benchmarks share.

Importing a module of this package imports torch (but `llama_tokenizers`, which needs only
`tokenizers`); numformer itself never does. `ops` holds each op written with torch's own functions
(the oracle of the op table in numformer.ops.table), `gpt` a GPT and `llama` a Llama written in
PyTorch that load numformer's weights by name, `gpt2_folder` a random Hugging Face GPT-2 folder and
`llama_folder` a random Llama, Mistral or Qwen2 folder (with transformers; its tokenizers from
`llama_tokenizers`) for the README's walk-throughs, the tests and the benchmarks.
"""
