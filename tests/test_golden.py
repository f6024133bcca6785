"""Golden streams: the exact tokens a seed produces on the fixture models, per precision, must not
change unless on purpose (a deliberate change to sampling or numerics, committed together with
the regenerated tests/fixtures/expected/golden_streams.json; see tests/fixtures/README.md).

Three layers:
- the committed RNG vectors are what the independent reference script computes (the Rust core
  checks its RNG against the same file: `cargo test --lib rng`);
- every stream of the golden file is reproduced exactly, at the kernel level this process runs
  (and, in subprocesses, at every other level this CPU has), plain and streamed;
- the FP32 and BF16 golden streams themselves follow, step by step, from the model's logits
  through a numpy re-implementation of the documented sampling chain and the reference RNG, and
  the greedy ones equal transformers' greedy tokens, so the file holds correct streams, not
  merely whatever the code once produced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

from conftest import EXPECTED, FIXTURES, decode_logits, reference

sys.path.insert(0, str(FIXTURES))
import make_golden_streams as golden  # noqa: E402
import make_rng_vectors as rng_ref  # noqa: E402

pytest.importorskip("gguf")  # the GGUF fixture is one of the checkpoints

DOC = json.loads((EXPECTED / "golden_streams.json").read_text())
LEVEL = golden.current_level()
WANT = golden.expected_streams(DOC, LEVEL)
GROUPS = [(ckpt, None) for ckpt in golden.CHECKPOINTS] + [(c[1], c[0]) for c in golden.ADAPTER_CASES]
GROUP_IDS = [ckpt if adapter is None else f"{ckpt}+{adapter}" for ckpt, adapter in GROUPS]


def group_cases(checkpoint: str, adapter: Optional[str]) -> List[golden.Case]:
    cases = [c for c in golden.cases() if c.checkpoint == checkpoint and c.adapter == adapter]
    assert cases
    return cases


def need_level() -> Dict[str, List[dict]]:
    if WANT is None:
        pytest.skip(f"{DOC.get('reference_level')!r}-based golden file has no streams for the kernel level {LEVEL!r}: "
                    "generate them with tests/fixtures/make_golden_streams.py on such a machine")
    return WANT


def test_rng_vectors_are_the_reference_scripts_output():
    assert (EXPECTED / "rng_vectors.json").read_text() == rng_ref.render()


def test_the_golden_file_matches_its_generator():
    ids = [c.id for c in golden.cases()]
    assert len(set(ids)) == len(ids)
    assert DOC["prompt"] == golden.PROMPT and DOC["max_new_tokens"] == golden.MAX_NEW_TOKENS
    assert list(DOC["knobs"]) == list(golden.KNOBS)
    for name, knobs in golden.KNOBS.items():
        recorded = dict(DOC["knobs"][name])
        if "logit_bias" in recorded:
            recorded["logit_bias"] = {int(t): b for t, b in recorded["logit_bias"].items()}
        assert recorded == knobs, name
    for p in golden.PRECISIONS:
        assert [r["id"] for r in DOC["streams"][p]] == ids
    for level, diffs in DOC["level_differences"].items():
        assert level in golden.LEVELS and level != DOC["reference_level"]
        for p, recs in diffs.items():
            assert {r["id"] for r in recs} <= set(ids)
    # the knob sets are not redundant: on every checkpoint each one gives its own streams
    for p in golden.PRECISIONS:
        seen: Dict[tuple, str] = {}
        for r in DOC["streams"][p]:
            ckpt, knobs, seed = r["id"].split("/")
            key = (ckpt, seed, tuple(r["tokens"]))
            assert key not in seen, f"{p}: {knobs} and {seen[key]} give the same stream on {ckpt} ({seed})"
            seen[key] = knobs


def describe(case_id: str, got: dict, want: dict) -> str:
    a, b = got["tokens"], want["tokens"]
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (f"{case_id}: first difference at token {first}: got {a[first:first + 4]}..., want {b[first:first + 4]}...; "
            f"finish {got['finish_reason']} vs {want['finish_reason']}")


@pytest.mark.parametrize("precision", golden.PRECISIONS)
@pytest.mark.parametrize("checkpoint,adapter", GROUPS, ids=GROUP_IDS)
def test_golden_streams(precision, checkpoint, adapter):
    want = {r["id"]: r for r in need_level()[precision]}
    model, extra = golden.load(checkpoint, precision, adapter)
    bad = []
    for case in group_cases(checkpoint, adapter):
        got = golden.run(model, case, extra)
        if got != want[case.id]:
            bad.append(describe(case.id, got, want[case.id]))
        # streamed: the same tokens, and the deltas add up to the same text
        stream = model.generate(golden.PROMPT, max_new_tokens=golden.MAX_NEW_TOKENS, seed=case.seed, stream=True,
                                **golden.KNOBS[case.knobs], **extra)
        text = "".join(stream)
        res = stream.result
        got = {"id": case.id, "tokens": res.tokens, "finish_reason": res.finish_reason, "text": text}
        if got != want[case.id]:
            bad.append("streamed " + describe(case.id, got, want[case.id]))
    assert not bad, f"{len(bad)} golden streams changed ({precision}, kernel level {LEVEL}):\n" + "\n".join(bad)


@pytest.mark.parametrize("level", [lv for lv in [DOC["reference_level"], *DOC["level_differences"]] if lv != LEVEL])
def test_golden_streams_at_other_kernel_levels(level):
    """The file's other kernel levels that this CPU has (FERROLM_SIMD caps the level and
    FERROLM_BF16_PREFILL picks the BF16 GEMM; one process each)."""
    env = golden.level_env(level)
    probe = subprocess.run([sys.executable, str(FIXTURES / "make_golden_streams.py"), "--level"],
                           env=env, capture_output=True, text=True, check=True)
    if probe.stdout.strip() != level:
        pytest.skip(f"this CPU has no {level} kernels")
    run = subprocess.run([sys.executable, str(FIXTURES / "make_golden_streams.py"), "--check"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


# -- the golden streams are right ------------------------------------------------------------------

def reference_pick(logits: np.ndarray, knobs: dict, history: List[int], generated: List[int], suppress: List[int],
                   u: Optional[float]) -> Tuple[int, np.ndarray]:
    """Tokens the documented chain may pick (float64): repetition penalty → frequency/presence →
    logit bias → suppression → [sampling] temperature → top-k → top-p → min-p → draw with u.
    Returns the pick (the first argmax, or the first token whose cumulative probability exceeds
    u) and a mask of the tokens within a margin for the core's float32 rounding."""
    x = logits.astype(np.float64).copy()
    rp = knobs.get("repetition_penalty", 1.0)
    if rp != 1.0:
        for t in set(history):
            x[t] = x[t] * rp if x[t] < 0 else x[t] / rp
    fp, pp = knobs.get("frequency_penalty", 0.0), knobs.get("presence_penalty", 0.0)
    if fp or pp:
        for t in set(generated):
            x[t] -= generated.count(t) * fp + pp
    for t, b in knobs.get("logit_bias", {}).items():
        x[t] += b
    x[suppress] = -np.inf
    if u is None:
        return int(np.argmax(x)), x >= x.max() - 1e-4
    x /= knobs.get("temperature") or 1.0
    k = knobs.get("top_k", 0)
    if 0 < k < len(x):
        x[x < np.sort(x)[::-1][k - 1]] = -np.inf
    top_p = knobs.get("top_p", 1.0)
    if top_p < 1.0:
        order = np.argsort(x, kind="stable")
        order = order[np.isfinite(x[order])]
        p = np.exp(x[order] - x[order].max())
        cum = np.cumsum(p / p.sum())
        drop = order[:-1][cum[:-1] <= 1.0 - top_p]
        x[drop] = -np.inf
    min_p = knobs.get("min_p", 0.0)
    if min_p > 0:
        p = np.exp(x - x.max())
        p /= p.sum()
        x[p < min_p * p.max()] = -np.inf
    p = np.exp(x - x.max())
    p /= p.sum()
    hi = np.cumsum(p)
    lo = hi - p
    eps = 1e-5
    pick = int(np.flatnonzero((p > 0) & (u < hi))[0])
    return pick, (p > 0) & (lo - eps <= u) & (u < hi + eps)


def stepwise_logits(model, prompt: List[int], tokens: List[int], adapter=None, soft_prompt=None) -> np.ndarray:
    """The logits that pick each of `tokens`: the prompt in one forward pass, then one pass per
    token, on the rows paths generate() takes (BF16: the prompt's GEMM may round x to bf16 where
    the CPU has AVX512-BF16, the decode steps' GEMV keeps it f32, so teacher-forcing the whole
    stream through one GEMM would not reproduce them)."""
    session = model.new_session() if adapter is None else model.new_session(adapter)
    if soft_prompt is not None:
        session.forward_embeddings(model._prefix(soft_prompt, len(prompt)))
    return decode_logits(session, prompt + tokens[:-1], len(prompt))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("checkpoint,adapter", GROUPS, ids=GROUP_IDS)
def test_golden_streams_follow_from_the_logits_and_the_reference_rng(precision, checkpoint, adapter):
    """Teacher-forced on each golden stream: at every step, the model's logits for the stream so
    far (Model.logits, a separate code path; BF16: `stepwise_logits`), the chain above in float64 and the next uniform of
    an independent xoshiro256** must allow the golden token; the stream ends where the rules say
    (EOS once allowed, else max_new_tokens)."""
    want = {r["id"]: r for r in need_level()[precision]}
    model, extra = golden.load(checkpoint, precision, adapter)
    prompt = model.tokenize(golden.PROMPT)
    differ = []
    for case in group_cases(checkpoint, adapter):
        knobs = golden.KNOBS[case.knobs]
        sampling = knobs.get("do_sample") is True or bool(knobs.get("temperature"))
        rng = rng_ref.Xoshiro256StarStar.seeded(case.seed)
        tokens = want[case.id]["tokens"]
        if precision == "bf16":
            logits = stepwise_logits(model, prompt, tokens, **extra)
        else:
            logits = model.logits(prompt + tokens, **extra)[len(prompt) - 1:]
        for k, tok in enumerate(tokens):
            suppress = [golden.EOS] if k < knobs.get("min_new_tokens", 0) else []
            u = rng.uniform53() / 2**53 if sampling else None
            pick, allowed = reference_pick(logits[k], knobs, prompt + tokens[:k], tokens[:k], suppress, u)
            assert allowed[tok], f"{case.id}: token {k} is {tok}, the reference picks {pick}"
            if pick != tok:
                differ.append(f"{case.id} token {k}")
            if tok == golden.EOS:
                assert k == len(tokens) - 1 and want[case.id]["finish_reason"] == "eos", case.id
        if want[case.id]["finish_reason"] == "length":
            assert len(tokens) == golden.MAX_NEW_TOKENS, case.id
    # a near-tie that float32 rounding tips the other way is rare; many would mean the margin hides errors
    assert len(differ) <= 1, f"the golden token is only within the margin of the reference pick at {differ}"


@pytest.mark.parametrize("checkpoint", list(golden.CHECKPOINTS))
def test_fp32_greedy_golden_streams_are_transformers_greedy_tokens(checkpoint):
    """The FP32 greedy streams equal the tokens transformers generated for the same prompt
    (tests/fixtures/expected, tests/fixtures/gguf): the file starts from a known-right stream."""
    if checkpoint == "tiny-llama-gguf":
        ref = np.load(FIXTURES / "gguf" / "tiny-llama.npz")
    else:
        ref = reference(checkpoint)[0]
    model, _ = golden.load(checkpoint, "fp32")
    assert model.tokenize(golden.PROMPT) == ref["prompt_ids"].tolist()
    want = {r["id"]: r for r in need_level()["fp32"]}[f"{checkpoint}/greedy/seed={golden.SEEDS[0]}"]
    n = min(len(ref["greedy_tokens"]), golden.MAX_NEW_TOKENS)
    assert want["tokens"][:n] == ref["greedy_tokens"][:n].tolist()
