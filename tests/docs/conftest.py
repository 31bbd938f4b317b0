"""tests/docs build the documentation site (mkdocs.yml) and read it in headless Chromium.

They need the docs extra (`pip install -c constraints.txt '.[docs]'`; the README's test command
installs it). Without it they are not collected, and the test session's header says so; in CI
(the environment variable CI set, as .ci/run runs) they are always collected, so a missing docs
extra fails there instead of going unnoticed.
"""

import importlib.util
import os

DOCS_TOOLS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "latex2mathml")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:          # a parent package is missing
        return False


MISSING = [name for name in DOCS_TOOLS if not _installed(name)]

collect_ignore = ["test_site.py"] if MISSING and not os.environ.get("CI") else []
