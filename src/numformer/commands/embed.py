"""`numformer embed`: sentence embeddings (the command's code is in numformer.sentence for now)."""

from numformer import sentence
from numformer.sentence import add_arguments  # noqa: F401


def main(args) -> int:
    from numformer.cli import check_text

    for i, text in enumerate(args.texts, 1):
        check_text(text, f"TEXT {i}")
    return sentence.main(args)
