"""Chat templates: rendering as transformers does, and model.chat()."""

from __future__ import annotations

import json

import pytest

import ferrolm
from ferrolm.chat import ChatTemplate
from conftest import copy_model

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|endoftext|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture
def chat_model(tmp_path):
    folder = copy_model("tiny-llama", tmp_path)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = CHATML
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return ferrolm.load(folder)


def test_render_matches_the_template_semantics():
    t = ChatTemplate(CHATML)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert t.render(msgs) == (
        "<|im_start|>system\nBe brief.<|endoftext|>\n<|im_start|>user\nHi<|endoftext|>\n<|im_start|>assistant\n"
    )
    assert t.render(msgs, add_generation_prompt=False).endswith("Hi<|endoftext|>\n")


def test_trim_blocks_helpers_and_special_tokens():
    src = (
        "{{ bos_token }}\n{% for m in messages %}\n  {{ m.role | upper }}: {{ m.content | tojson }}\n{% endfor %}"
        "{% if messages | length > 2 %}{{ raise_exception('too long') }}{% endif %}"
    )
    t = ChatTemplate(src, {"bos_token": "<s>"})
    # trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before one
    assert t.render([{"role": "user", "content": "é\""}]) == '<s>\n  USER: "é\\""\n'
    with pytest.raises(ferrolm.InvalidArgumentError, match="too long"):
        t.render([{"role": "user", "content": "a"}] * 3)


def test_generation_blocks_render_their_body():
    t = ChatTemplate("{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}")
    assert t.render([{"role": "assistant", "content": "x"}]) == "[x]"


def test_sandbox_blocks_attribute_escapes():
    t = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ferrolm.FerrolmError):
        t.render([{"role": "user", "content": "a"}])


def test_bad_templates_and_messages():
    broken = ChatTemplate("{% for %}")  # compiled on its first render
    for _ in range(2):
        with pytest.raises(ferrolm.CheckpointError, match="Jinja"):
            broken.render([{"role": "user", "content": "a"}])
    t = ChatTemplate(CHATML)
    for bad in ([], "hi", [{"content": "no role"}], [{"role": "user", "content": 3}], [{"role": "user", "content": object()}]):
        with pytest.raises(ferrolm.InvalidArgumentError):
            t.render(bad)


def test_a_broken_template_loads_generates_and_fails_only_on_chat(tmp_path):
    folder = copy_model("tiny-llama", tmp_path)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}{{ m.content }"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    model = ferrolm.load(folder)
    assert len(model.generate([1, 2, 3], max_new_tokens=4, ignore_eos=True).tokens) == 4
    with pytest.raises(ferrolm.CheckpointError, match="not valid Jinja"):
        model.chat([{"role": "user", "content": "hi"}], max_new_tokens=2)


def test_loading_and_generating_import_neither_jinja_nor_numpy():
    """A program that never chats nor asks for arrays does not pay their memory."""
    import subprocess
    import sys
    from pathlib import Path

    gguf = Path(__file__).parent / "fixtures" / "gguf" / "tiny-llama.gguf"
    code = (
        "import sys, ferrolm\n"
        f"m = ferrolm.load({str(gguf)!r}, progress=False)\n"
        "m.generate('hello', max_new_tokens=3)\n"
        "print(sorted(k for k in ('jinja2', 'numpy', 'asyncio', 'hashlib') if k in sys.modules))\n"
        "m.apply_chat_template([{'role': 'user', 'content': 'hi'}]) if m.chat_template else None\n"
        "print('jinja2' in sys.modules or m.chat_template is None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"


def test_chat_generates_through_the_template(chat_model):
    msgs = [{"role": "user", "content": "The river"}]
    prompt = chat_model.apply_chat_template(msgs)
    ids = chat_model.tokenize(prompt, add_special_tokens=False)
    want = chat_model.generate(ids, max_new_tokens=12, eos_token_id=chat_model.end_of_turn_ids())
    got = chat_model.chat(msgs, max_new_tokens=12)
    assert got.tokens == want.tokens and got.text == want.text
    assert got.prompt_tokens == ids
    stream = chat_model.chat(msgs, max_new_tokens=12, stream=True)
    assert "".join(stream) == got.text


def test_chat_stops_at_end_of_turn(chat_model):
    eot = chat_model.tokenizer.token_to_id("<|endoftext|>")
    assert eot in chat_model.end_of_turn_ids()
    out = chat_model.chat([{"role": "user", "content": "x"}], max_new_tokens=20, logit_bias={eot: 100.0})
    assert out.finish_reason == "eos" and out.tokens == [eot]


def test_chat_without_template_raises():
    from conftest import load_fixture

    with pytest.raises(ferrolm.TokenizerError, match="chat template"):
        load_fixture("tiny-gpt2").chat([{"role": "user", "content": "hi"}])
