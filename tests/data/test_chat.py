"""Chat templates (numformer.data.chat) rendered as transformers renders them
(transformers.utils.chat_template_utils.render_jinja_template, what apply_chat_template calls):
the same text for the same conversation, with and without the generation prompt, for ChatML,
Llama 2's template and one that uses the Jinja features chat templates use; the errors a template
can make, each one line naming the model."""

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from numformer.data.chat import ChatSettings, ChatTemplate
from numformer.errors import DataError
from tests.helpers import one_line
from tests.interop.gguf_files import CHATML, LLAMA2

FEATURES = (
    "{%- set ns = namespace(found=false, n=0) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.found = true -%}{%- continue -%}{%- endif -%}"
    "{%- set ns.n = ns.n + 1 -%}"
    "<{{ message['role'] | upper }}>{{ message['content'] | trim }}{{ eos_token }}\n"
    "{%- if ns.n > 3 -%}{%- break -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ {'system': ns.found, 'turns': ns.n, 'text': 'é & <b>'} | tojson }}"
    "{% generation %}{% if add_generation_prompt %}<ASSISTANT>{% endif %}{% endgeneration %}"
)

TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  Hi  "}],
    [{"role": "user", "content": "Bonjour 👋 — ça va ?"}, {"role": "assistant", "content": "Oui, merci."},
     {"role": "user", "content": "我爱你\n\nnew lines"}, {"role": "assistant", "content": "x"},
     {"role": "user", "content": "last"}],
]


@pytest.mark.parametrize("template", [CHATML, LLAMA2, FEATURES], ids=["chatml", "llama2", "features"])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_renders_as_transformers(template, generation_prompt):
    ours = ChatTemplate(ChatSettings(template, [2]), TOKENS, "model.gguf")
    for messages in CONVERSATIONS:
        if template is LLAMA2 and messages[0]["role"] == "system":
            continue
        want, _ = render_jinja_template([messages], chat_template=template, add_generation_prompt=generation_prompt,
                                        **TOKENS)
        assert ours.render(messages, add_generation_prompt=generation_prompt) == want[0]


def test_raise_exception_is_one_line_naming_the_model():
    ours = ChatTemplate(ChatSettings(LLAMA2, [2]), TOKENS, "model.gguf")
    with pytest.raises(DataError) as e:
        ours.render([{"role": "assistant", "content": "I speak first"}])
    assert one_line(e) == ("model.gguf: the chat template failed: Conversation roles must alternate "
                           "user/assistant/user/assistant/...")


@pytest.mark.parametrize("template,words", [
    ("{% for m in messages %}{{ m['content'] }", ["not valid Jinja", "line 1"]),
    ("{{ messages[0]['content'] + 1 }}", ["failed", "TypeError"]),
    ("{{ messages.__class__.__mro__ }}", ["failed"]),
    ("{% set ns = namespace() %}{% set ns._private = 1 %}", ["failed"]),
    ("{{ undefined_function() }}", ["failed"]),
])
def test_a_template_that_fails_is_one_line(template, words):
    with pytest.raises(DataError) as e:
        ChatTemplate(ChatSettings(template, []), TOKENS, "model.gguf").render([{"role": "user", "content": "x"}])
    line = one_line(e)
    assert line.startswith("model.gguf: ") and all(w in line for w in words), line


def test_no_template_is_one_line():
    with pytest.raises(DataError, match="no chat template"):
        ChatTemplate(ChatSettings(None, []), TOKENS, "ck")


def test_settings_from_a_checkpoint_are_checked():
    assert ChatSettings.from_dict({"template": "x", "end_of_turn": [1, 2]}, 10, "t") == ChatSettings("x", [1, 2])
    for bad in ({"template": 3}, {"template": "x", "end_of_turn": [10]}, {"template": "x", "end_of_turn": [True]},
                {"template": "x", "colour": "red"}, ["x"]):
        with pytest.raises(DataError):
            ChatSettings.from_dict(bad, 10, "t")
