"""The generation loop: streaming, stop strings, limits, EOS, configs, timings, CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import ferrolm
from conftest import MODELS, load_fixture, reference

PROMPT = "The river ran past the old mill"


def test_streaming_text_equals_final_text(model_name):
    model = load_fixture(model_name)
    stream = model.generate(PROMPT, max_new_tokens=32, ignore_eos=True, stream=True)
    assert isinstance(stream, ferrolm.TextStream)
    chunks = list(stream)
    res = stream.result
    assert res is not None and len(chunks) > 1
    assert "".join(chunks) == res.text
    assert res.text == model.detokenize(res.tokens)
    plain = model.generate(PROMPT, max_new_tokens=32, ignore_eos=True)
    assert (plain.text, plain.tokens, plain.finish_reason) == (res.text, res.tokens, res.finish_reason)


def _pieces(model, tokens):
    """Text contributed by each token (decode of growing prefixes)."""
    texts = [model.detokenize(tokens[: i + 1]) for i in range(len(tokens))]
    return [t[len(p):] for p, t in zip([""] + texts, texts)]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_stop_string_spanning_two_tokens(name):
    model = load_fixture(name)
    full = model.generate(PROMPT, max_new_tokens=32, ignore_eos=True)
    pieces = _pieces(model, full.tokens)
    # a stop string made of the last character of one token and the first of the next
    i = next(i for i in range(4, len(pieces) - 1)
             if pieces[i].isprintable() and pieces[i + 1].isprintable() and pieces[i] and pieces[i + 1])
    stop = pieces[i][-1] + pieces[i + 1][0]
    cut = full.text.find(stop)
    n_tokens = next(k for k in range(1, len(full.tokens) + 1) if stop in model.detokenize(full.tokens[:k]))
    for stream in (False, True):
        out = model.generate(PROMPT, max_new_tokens=32, ignore_eos=True, stop=[stop, "\x00never"], stream=stream)
        if stream:
            text = "".join(out)
            out = out.result
            assert text == out.text
        assert out.finish_reason == "stop"
        assert out.text == full.text[:cut]
        assert stop not in out.text
        assert out.tokens == full.tokens[:n_tokens]


def test_stop_string_prefix_is_held_back_then_released():
    model = load_fixture("tiny-gpt2")
    full = model.generate(PROMPT, max_new_tokens=32, ignore_eos=True)
    # a stop string that starts like the text but never completes: everything is emitted at the end
    stop = full.text[-3:] + "\x01\x02"
    out = model.generate(PROMPT, max_new_tokens=32, ignore_eos=True, stop=stop, stream=True)
    assert "".join(out) == full.text
    assert out.result.finish_reason == "length"


def test_eos_stops_and_min_new_tokens_suppresses_it():
    model = load_fixture("tiny-llama")
    ref, _ = reference("tiny-llama")
    greedy = ref["greedy_tokens"].tolist()
    eos = greedy[5]  # declare the 6th greedy token to be EOS
    out = model.generate(ref["prompt_ids"].tolist(), max_new_tokens=32, eos_token_id=eos)
    assert out.finish_reason == "eos"
    assert out.tokens == greedy[: greedy.index(eos) + 1]
    out = model.generate(ref["prompt_ids"].tolist(), max_new_tokens=32, eos_token_id=eos, min_new_tokens=20)
    assert eos not in out.tokens[:20]
    assert len(out.tokens) >= 20


def test_model_eos_from_generation_config():
    model = load_fixture("tiny-llama")
    assert model.eos_token_ids == (0,)
    out = model.generate([1, 2], max_new_tokens=64, logit_bias={0: 50.0})
    assert out.finish_reason == "eos" and out.tokens == [0]
    out = model.generate([1, 2], max_new_tokens=5, logit_bias={0: 50.0}, ignore_eos=True)
    assert out.finish_reason == "length" and out.tokens == [0] * 5 and out.text == ""


def test_max_new_tokens_and_context_limit():
    model = load_fixture("tiny-gpt2")
    assert len(model.generate([3], max_new_tokens=7, ignore_eos=True).tokens) == 7
    # 120 prompt tokens in a 128-token context: generation stops when the cache is full
    out = model.generate(list(range(1, 121)), max_new_tokens=50, ignore_eos=True)
    assert out.finish_reason == "length"
    assert len(out.prompt_tokens) + len(out.tokens) == 129  # the last sampled token needs no cache slot
    small = ferrolm.load(MODELS / "tiny-gpt2", context_length=16)
    assert small.context_length == 16
    out = small.generate([1, 2, 3, 4], max_new_tokens=50, ignore_eos=True)
    assert len(out.tokens) == 13


def test_generation_config_object_and_overrides():
    model = load_fixture("tiny-qwen2")
    cfg = ferrolm.GenerationConfig(max_new_tokens=6, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)
    a = model.generate(PROMPT, cfg)
    assert len(a.tokens) == 6
    assert model.generate(PROMPT, cfg).tokens == a.tokens
    b = model.generate(PROMPT, cfg, max_new_tokens=3)
    assert len(b.tokens) == 3 and b.tokens == a.tokens[:3]
    assert cfg.replace(temperature=0).sampling is False
    assert ferrolm.GenerationConfig(do_sample=True).sampling is True
    assert ferrolm.GenerationConfig(temperature=0.5, do_sample=False).sampling is False
    assert ferrolm.GenerationConfig(stop="x").stop == ("x",)


def test_timings_are_measured():
    model = load_fixture("tiny-llama")
    t = model.generate(PROMPT, max_new_tokens=16, ignore_eos=True).timings
    assert t.prompt_tokens == 9 and t.new_tokens == 16
    assert 0 < t.time_to_first_token <= t.total_seconds
    assert 0 < t.decode_seconds <= t.total_seconds
    assert t.prefill_tokens_per_s > 0 and t.decode_tokens_per_s > 0
    assert np.isnan(model.generate(PROMPT, max_new_tokens=1).timings.decode_tokens_per_s)


def test_stream_can_be_closed_early():
    model = load_fixture("tiny-llama")
    stream = model.generate(PROMPT, max_new_tokens=32, ignore_eos=True, stream=True)
    next(stream)
    stream.close()
    assert list(stream) == []
    # the model still works afterwards
    assert len(model.generate(PROMPT, max_new_tokens=4, ignore_eos=True).tokens) == 4


def test_cli_generate_streams_text():
    run = subprocess.run(
        [sys.executable, "-m", "ferrolm", "generate", str(MODELS / "tiny-llama"), PROMPT,
         "--max-new-tokens", "12", "--ignore-eos", "-v"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    model = load_fixture("tiny-llama")
    want = model.generate(PROMPT, max_new_tokens=12, ignore_eos=True).text
    assert run.stdout == PROMPT + want + "\n"
    assert "decode" in run.stderr and "tok/s" in run.stderr


def test_cli_reports_errors_without_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "ferrolm", "generate", str(tmp_path / "nope"), "hi"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "does not exist" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "ferrolm", "generate", str(MODELS / "tiny-llama"), "hi",
                          "--top-p", "2"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "top_p" in run.stderr
