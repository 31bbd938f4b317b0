"""Where each formula lives in numformer's source, and its derived backward as the op's docstring
states it.

    home("attention").where()        'numformer.ops.attention: forward, backward'
    home("attention").derivation()   the docstring's "Backward ..." paragraph, as lines

The derivation is read from the docstring of the module that implements the formula, so the
docstring, `numformer explain` and the documentation site show the same text and cannot drift
apart. An optimizer has no backward (it consumes the gradient); its entry points at the update
rule instead.

HOMES lists the article's thirteen formulas in the article's order, then the formulas numformer
adds beyond the article. The documentation site (mkdocs.yml, docs/hooks/) builds one page per
entry, so the formula of a new op is one more entry here.
"""

import inspect
from dataclasses import dataclass
from types import ModuleType

from numformer.ops import (attention, cross_entropy, dropout, erf, gelu, layernorm, linear, lora, mha, positional,
                           quant, residual, rmsnorm, rope, softmax, swiglu)
from numformer.optim import adam, sgd


@dataclass(frozen=True)
class Home:
    """One formula's place in the source."""

    module: ModuleType          # the module that implements it
    functions: tuple[str, ...]  # its entry points, as named in the module ("forward", "SGD.step")
    heading: str                # how the docstring paragraph with the derivation starts
    title: str                  # the formula's name for people
    article: bool = True        # one of the article's thirteen; False: added by numformer
    table: str | None = None    # its rows in the op table (numformer.ops.table, Case.op)
    derives: str = "backward"   # what the derivation gives: "backward", an optimizer's "update", ...

    @property
    def module_name(self) -> str:
        return self.module.__name__

    @property
    def path(self) -> str:
        """The module's file, relative to the repository root: src/numformer/ops/attention.py."""
        return "src/" + self.module_name.replace(".", "/") + ".py"

    def where(self) -> str:
        """'numformer.ops.attention: forward, backward'."""
        return f"{self.module_name}: {', '.join(self.functions)}"

    def derivation(self) -> list[str]:
        """The docstring paragraph that starts with `heading` and the indented lines under it,
        as written (the formulas keep their own alignment)."""
        return docstring_section(self.module, self.heading)


def docstring_section(module: ModuleType, heading: str) -> list[str]:
    """The lines of `module`'s docstring from the unindented line that starts with `heading`:
    that paragraph, then the indented block under it, up to the next unindented line. ValueError
    if the docstring has no such line: an op whose docstring lost its derivation is a bug."""
    lines = [line.rstrip() for line in inspect.cleandoc(module.__doc__ or "").splitlines()]
    starts = [i for i, line in enumerate(lines) if line.startswith(heading)]
    if not starts:
        raise ValueError(f"{module.__name__}'s docstring has no paragraph starting {heading!r}")
    i = starts[0] + 1
    while i < len(lines) and lines[i] and not lines[i][0].isspace():    # the paragraph goes on
        i += 1
    while i < len(lines) and (not lines[i] or lines[i][0].isspace()):  # the formulas under it
        i += 1
    section = lines[starts[0]:i]
    while section[-1] == "":
        section.pop()
    return section


_OP = ("forward", "backward")

HOMES = {
    # the article's thirteen, in its order (the names of numformer.explain.NAMES)
    "linear": Home(linear, _OP, "Backward", "Linear map", table="linear"),
    "positional_encoding": Home(positional, ("sinusoidal",), "Backward", "Sinusoidal positional encoding"),
    "attention": Home(attention, _OP, "Backward", "Scaled dot-product attention", table="attention"),
    "multi_head_attention": Home(mha, _OP, "Backward", "Multi-head attention", table="mha"),
    "residual": Home(residual, _OP, "Backward", "Residual connection", table="residual"),
    "layernorm": Home(layernorm, _OP, "Backward", "Layer normalisation", table="layernorm"),
    "gelu": Home(gelu, _OP, "Backward", "GELU", table="gelu"),
    "softmax": Home(softmax, _OP, "Backward", "Softmax", table="softmax"),
    "cross_entropy": Home(cross_entropy, _OP, "Backward", "Cross-entropy loss", table="cross_entropy"),
    "dropout": Home(dropout, _OP, "Backward", "Dropout", table="dropout"),
    "backpropagation": Home(linear, ("backward",), "Backward", "Backpropagation", table="linear"),
    "gradient_descent": Home(sgd, ("SGD.step",), "Plain gradient descent", "Gradient descent",
                             derives="update"),
    "adam": Home(adam, ("Adam.step",), "With g_t the gradient", "Adam", derives="update"),
    # beyond the article: the formulas of today's large models (numformer.explain.LATER, numbered 14-17)
    "rope": Home(rope, _OP, "Backward", "Rotary position embedding (RoPE)", article=False, table="rope"),
    "rmsnorm": Home(rmsnorm, _OP, "Backward", "RMS normalisation", article=False, table="rmsnorm"),
    "swiglu": Home(swiglu, _OP, "Backward", "SwiGLU", article=False, table="swiglu"),
    "grouped_query_attention": Home(attention, _OP, "Shared keys and values", "Grouped-query attention",
                                    article=False, table="attention"),
    # beyond the article: numformer's own
    "lora": Home(lora, _OP, "Backward", "Low-rank adapters (LoRA)", article=False, table="lora"),
    "erf": Home(erf, ("erf", "erfc", "normal_cdf"), "Derivatives", "The error function erf, and Φ",
                article=False, derives="derivatives"),
    "quant": Home(quant, ("quantize_int8", "bf16_bits", "block_dequantize", "block_quantize"), "Worst case",
                  "Quantized weights: int8, bf16, GGUF's blocks", article=False, derives="worst case"),
}


def home(name: str) -> Home:
    """The Home of formula `name` (a key of HOMES); KeyError for an unknown name."""
    return HOMES[name]
