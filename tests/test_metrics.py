"""ferrolm.metrics against hand-computed values and against rouge-score and sacrebleu called
directly (needs `pip install 'ferrolm[eval]'`)."""

from __future__ import annotations

import math

import pytest

import ferrolm
from ferrolm import metrics
from ferrolm.metrics import bleu, rouge

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
sacrebleu = pytest.importorskip("sacrebleu")

PAIRS = [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("#Person1# asks #Person2# to move the meeting to three.", "#Person2# moves the team meeting to three in the afternoon."),
    ("Running dogs chased the ball.", "A dog runs after the balls."),
    ("Nothing in common here", "completely different words"),
    ("First line.\nSecond line about cats.", "Second line about cats.\nFirst line."),
    ("", "an empty prediction scores zero"),
]


def test_rouge_hand_computed():
    # unigrams: the x2, cat, on, mat shared of 6 each -> 5/6; bigrams: the-cat, on-the, the-mat of 5 -> 3/5;
    # LCS "the cat on the mat" = 5 of 6
    got = rouge(["the cat sat on the mat"], ["the cat is on the mat"])
    assert got == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6, "rougeLsum": 5 / 6})
    # mean over pairs: an identical pair (1) and a disjoint one (0)
    assert rouge(["a b c", "x y"], ["a b c", "p q"])["rouge1"] == pytest.approx(0.5)


def test_rouge_stems_like_the_course():
    # "running dogs" / "a dog runs": with Porter stemming run+dog are shared -> P 2/2, R 2/3, F 0.8
    assert rouge(["running dogs"], ["a dog runs"])["rouge1"] == pytest.approx(0.8)
    assert rouge(["running dogs"], ["a dog runs"], use_stemmer=False)["rouge1"] == 0.0


def test_rouge_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    preds, refs = zip(*PAIRS)
    got = rouge(list(preds), list(refs))
    for key in metrics.ROUGE_KEYS:
        want = sum(scorer.score(r, p)[key].fmeasure for p, r in PAIRS) / len(PAIRS)
        assert got[key] == pytest.approx(want, abs=1e-12), key
    # rougeLsum splits at newlines: the swapped two-line pair differs from rougeL
    one = rouge([PAIRS[4][0]], [PAIRS[4][1]])
    assert one["rougeLsum"] > one["rougeL"]


def test_rouge_multiple_references_takes_the_best():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    refs = ["a dog runs", "the cat sleeps"]
    got = rouge(["the cat sleeps all day"], [refs])
    assert got["rouge1"] == pytest.approx(scorer.score_multi(refs, "the cat sleeps all day")["rouge1"].fmeasure)
    assert got["rouge1"] == pytest.approx(2 * 1 * (3 / 5) / (1 + 3 / 5))


def test_bleu_hand_computed():
    # n-gram precisions 5/6, 3/5, 1/4, and 0/3 smoothed to 1/(2*3) (sacrebleu's "exp"); equal lengths: BP 1
    want = 100 * math.exp(sum(math.log(p) for p in (5 / 6, 3 / 5, 1 / 4, 1 / 6)) / 4)
    assert bleu(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(want)
    assert bleu(["the same words here"], ["the same words here"]) == pytest.approx(100.0)


def test_bleu_equals_sacrebleu():
    preds, refs = zip(*PAIRS)
    assert bleu(list(preds), list(refs)) == pytest.approx(sacrebleu.corpus_bleu(list(preds), [list(refs)]).score)
    two = [["the cat is on the mat", "there is a cat on the mat"], ["a dog runs", "the dog is running"]]
    streams = [[r[0] for r in two], [r[1] for r in two]]
    hyps = ["the cat sat on the mat", "a dog is running"]
    assert bleu(hyps, two) == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score)


def test_bad_arguments():
    with pytest.raises(ferrolm.InvalidArgumentError, match="2 predictions but 1 references"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ferrolm.InvalidArgumentError, match="no predictions"):
        bleu([], [])
    with pytest.raises(ferrolm.InvalidArgumentError, match="not a single string"):
        rouge("abc", "abc")
    with pytest.raises(ferrolm.InvalidArgumentError, match="same number of references"):
        bleu(["a", "b"], [["a"], ["b", "c"]])
    with pytest.raises(ferrolm.InvalidArgumentError, match="reference 0"):
        rouge(["a"], [[]])


def test_missing_library_says_which_extra(monkeypatch):
    import importlib

    real = importlib.import_module

    def fail(name, *args):
        if name.startswith("sacrebleu"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fail)
    with pytest.raises(ferrolm.MissingDependencyError, match=r"ferrolm\[eval\]"):
        bleu(["a"], ["a"])
    assert not metrics.available()
