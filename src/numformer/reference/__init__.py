"""PyTorch references that the tests, `numformer check` and the benchmarks share.

Importing a module of this package imports torch; numformer itself never does. `ops` holds each
op written with torch's own functions (the oracle of the op table in numformer.ops.table), `gpt`
a GPT and `llama` a Llama written in PyTorch that load numformer's weights by name, and
`gpt2_folder` a random Hugging Face GPT-2 folder (with transformers) for the README's
walk-through, the tests and the benchmarks.
"""
