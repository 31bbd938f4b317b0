"""Chat templates: how a chat model wants a conversation written out, applied as transformers
applies it (`tokenizer.apply_chat_template(messages, add_generation_prompt=True)`).

A chat model was fine-tuned on conversations in one fixed text format: SmolLM2's is ChatML,

    <|im_start|>system\\nYou are a helpful AI assistant ...<|im_end|>\\n
    <|im_start|>user\\nWhat is the capital of France?<|im_end|>\\n
    <|im_start|>assistant\\n                                  <- the generation prompt

and the model writes its reply after the generation prompt, ending it with an end-of-turn token
(<|im_end|>). The format travels with the model as a Jinja template (GGUF:
tokenizer.chat_template; Hugging Face: tokenizer_config.json), rendered with `messages` (a list
of {"role", "content"}), `add_generation_prompt`, and the special tokens by role (`bos_token`,
`eos_token`, `unk_token`, `pad_token`). As in transformers: a sandboxed, immutable Jinja
environment with trim_blocks and lstrip_blocks, the loop controls ({% break %}, {% continue %}),
`raise_exception(message)` (a template's way to refuse a conversation: an error naming the
model), `strftime_now(format)`, a `tojson` that does not escape HTML, and `{% generation %}`
blocks (which mark what the assistant wrote) rendered as their content.

The rendered text is then encoded with the special tokens matched whole and nothing added
(transformers: add_special_tokens=False): the template itself writes any BOS it wants.

A tokenizer carries its chat settings (ChatSettings) in numformer's tokenizer.json document, under
"chat": the template and the ids that end a turn; the special tokens by role are the tokenizer's
own (BPETokenizer.special_tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from numformer.errors import DataError

@dataclass
class ChatSettings:
    """What a chat needs beyond the tokenizer: the template (None: the model has none) and the
    token ids that end the assistant's turn."""

    template: str | None
    end_of_turn: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"template": self.template, "end_of_turn": list(self.end_of_turn)}

    @classmethod
    def from_dict(cls, doc, vocab_size: int, source: str) -> "ChatSettings":
        """The ChatSettings of a tokenizer document's "chat" object; DataError (one line naming
        source) for one that is not well formed."""
        if not isinstance(doc, dict) or set(doc) - {"template", "end_of_turn"}:
            raise DataError(f"{source}: \"chat\" must be an object with template and end_of_turn")
        template, ends = doc.get("template"), doc.get("end_of_turn", [])
        if template is not None and not isinstance(template, str):
            raise DataError(f"{source}: chat.template must be text or null")
        if not isinstance(ends, list) or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size
                                             for i in ends):
            raise DataError(f"{source}: chat.end_of_turn must be a list of token ids in 0..{vocab_size - 1}")
        return cls(template, list(ends))


class _Generation(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %}: transformers marks the assistant's part with it;
    rendered here as what it encloses."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace(), refusing attribute names that begin with "_" (as transformers does):
    no way from a template to Python's internals."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set {name!r} on a namespace")


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = _Namespace
    return env


class ChatTemplate:
    """A model's chat template, compiled once; render() writes a conversation out.

    >>> ChatTemplate(tok.chat, tok.special_tokens, "model.gguf").render([{"role": "user", "content": "Hi"}])
    """

    def __init__(self, settings: ChatSettings, special_tokens: dict[str, str], source: str):
        self.settings, self.special_tokens, self.source = settings, dict(special_tokens), source
        if settings.template is None:
            raise DataError(f"{source}: the model has no chat template, so it cannot chat (it was not made for "
                            f"conversations; `numformer sample` continues a text)")
        try:
            self._template = _environment().from_string(settings.template)
        except jinja2.TemplateSyntaxError as e:
            raise DataError(f"{source}: the chat template is not valid Jinja: {e.message} (line {e.lineno})") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as the model reads it; with add_generation_prompt, followed by what
        begins the assistant's reply. DataError (one line) when the template refuses the
        conversation (raise_exception) or fails."""
        try:
            return self._template.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                                         tools=None, documents=None, **self.special_tokens)
        except jinja2.TemplateError as e:
            raise DataError(f"{self.source}: the chat template failed: {_first_line(e)}") from None
        # render runs the template's own code and nothing of numformer's: what it raises is the template's
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError,
                RecursionError) as e:
            raise DataError(f"{self.source}: the chat template failed: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e) -> str:
    text = str(getattr(e, "message", None) or e)
    return (text.splitlines() or [type(e).__name__])[0]
