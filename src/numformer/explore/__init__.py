"""`numformer explore`: one offline HTML page of what a GPT or a Llama does with a prompt.

    from numformer import GPT
    from numformer.explore import explore_data, build_page
    model = GPT.load("out/best")              # or numformer.model.llama.Llama.load(...)
    ids = model.tokenizer.encode("ROMEO:")
    html = build_page(explore_data(model, ids))

The page has seven parts: attention per layer and head, the next-token distribution with the
sampling controls of `numformer sample`, the prompt shaded by probability, the logit lens, the
residual stream and the positions, the training curves, and the formulas with their worked
examples. For a Llama the attention is per query head (with the key/value head each one shares),
the positions are RoPE's rotation angles (it has no position table), and the formulas are the
article's that it runs and RoPE, RMSNorm, SwiGLU and grouped-query attention. `trace` (trace.py) is
the forward pass that collects those numbers through numformer.ops; `explore_data` (data.py) turns
them into the JSON the page embeds; `build_page` (page.py) puts that JSON, page.css and page.js
into page.html.

The JSON is in <script type="application/json" id="numformer-data">. Its keys `tokens` (the
prompt's tokens as strings), `token_ids` (ints) and `attention` (n_layer lists of n_head T×T
matrices, one per query head; row i = query position i, entries the softmax weights) are a public
contract.
"""

from numformer.explore.data import explore_data
from numformer.explore.page import MARKER, build_page, data_json, is_explorer_page
from numformer.explore.trace import Trace, trace

__all__ = ["MARKER", "Trace", "build_page", "data_json", "explore_data", "is_explorer_page", "trace"]
