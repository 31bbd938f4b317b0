"""`numformer embed`: sentence embeddings (the command's code is in numformer.sentence for now)."""

from numformer.sentence import add_arguments, main  # noqa: F401
