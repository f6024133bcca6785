"""The CI slice of the fuzz harness (tests/fuzz, docs/fuzzing.md): a fixed-seed slice of every
surface, run through tests/fuzz/run.py exactly as a campaign runs, failing with the reproducers
of any crash, hang, non-ferrolm exception, accepted invalid input or broken invariant. Also
checks that the harness itself detects each kind of failure and that cases are reproducible.

Needs the `hypothesis` package (pip install hypothesis, or the `test` extra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import hypothesis  # noqa: F401
except ImportError:  # a missing dependency fails the slice; it must not skip it quietly
    hypothesis = None

RUN = Path(__file__).resolve().parent / "fuzz" / "run.py"
#: Minimal reproducers of the findings the harness has made (one journal entry per line, with a
#: "name" saying what it does); each must end as ok or as a FerrolmError once fixed.
KNOWN = Path(__file__).resolve().parent / "fuzz" / "known_findings.jsonl"
SEED = 0
#: Cases per surface: about 90 s in all on a 2-core machine (see docs/fuzzing.md).
SLICE = {
    "config": 900,
    "safetensors": 1000,
    "gguf": 800,
    "lora": 1300,
    "soft_prompt": 1300,
    "tokenizer": 1100,
    "chat": 700,
    "generation": 900,
}


def _need_hypothesis() -> None:
    if hypothesis is None:
        pytest.fail("the fuzz slice needs the 'hypothesis' package: pip install hypothesis (or pip install '.[test]')")


def run_campaign(tmp_path: Path, *args: str, timeout: float = 900) -> dict:
    report = tmp_path / "report.json"
    cmd = [sys.executable, str(RUN), "--report", str(report), "--quiet", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert report.is_file(), f"{' '.join(cmd)} wrote no report (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(report.read_text())


def describe(problems: list) -> str:
    lines = []
    for f in problems:
        raised = f" (raised in {f['raised_at']})" if f.get("raised_at") else ""
        lines.append(f"- {f['surface']}: {f['kind']} {f['type']} x{f['count']} at {f['where']}{raised}")
        if f.get("message"):
            lines.append(f"    {f['message'][:300]}")
        for entry in f["reproducers"][:1]:
            lines.append(f"    reproducer: {json.dumps(entry)[:1500]}")
            lines.append("    replay: save that line to case.json, then python tests/fuzz/run.py --replay case.json")
    return "\n".join(lines)


@pytest.mark.parametrize("surface", list(SLICE))
def test_fuzz_slice(surface: str, tmp_path: Path) -> None:
    _need_hypothesis()
    rep = run_campaign(tmp_path, "--surfaces", surface, "--cases", str(SLICE[surface]), "--seed", str(SEED), "--annotate", "1")
    stats = rep["surfaces"][surface]
    problems = rep["findings"] + rep["harness_errors"]
    assert not problems, (
        f"{surface}: {stats['findings']} finding(s), {stats['crashes']} crash(es), {stats['hangs']} hang(s), "
        f"{stats['harness_errors']} harness error(s) in {stats['cases']} cases (seed {SEED}):\n{describe(problems)}"
    )
    assert stats["cases"] == SLICE[surface]
    # the slice must reach ferrolm's deeper layers, not only its first parser
    assert stats["ok"] + sum(stats["refused"].values()) == stats["cases"]
    assert stats["ok"] > 0 and len(stats["refused"]) >= 2, stats


def test_known_findings_are_fixed(tmp_path: Path) -> None:
    _need_hypothesis()
    entries = [json.loads(line) for line in KNOWN.read_text(encoding="utf-8").splitlines() if line.strip()]
    rep = run_campaign(tmp_path, "--replay-all", str(KNOWN), "--annotate", "0")
    outcomes = rep["outcomes"] or []
    assert len(outcomes) == len(entries)
    still = [(e, o) for e, o in zip(entries, outcomes) if o is None or o["outcome"] not in ("ok", "error")]
    lines = [f"- {e['surface']} entry {e['index']}: {e['name']}\n    now: {json.dumps(o)[:300]}" for e, o in still]
    assert not still, (f"{len(still)} of {len(entries)} known findings still reproduce "
                       f"(replay one: python tests/fuzz/run.py --replay {KNOWN.relative_to(RUN.parent.parent.parent)} --entry N):\n" + "\n".join(lines))


def test_harness_detects_every_kind_of_failure(tmp_path: Path) -> None:
    """The selftest surface aborts, segfaults, hangs, leaks exceptions and exhausts memory on
    purpose: each must be recorded as such with its reproducer, and the run must go on after a
    crash or a hang with the next case."""
    _need_hypothesis()
    kinds = ["ok", "abort", "refuse", "segv", "leak", "hang", "violation", "oom"]
    entries = [{"surface": "selftest", "seed": 0, "index": i, "case": {"do": k, "n": i}} for i, k in enumerate(kinds * 2)]
    journal = tmp_path / "cases.jsonl"
    journal.write_text("".join(json.dumps(e) + "\n" for e in entries))
    rep = run_campaign(tmp_path, "--replay-all", str(journal), "--timeout", "1", "--memory-mb", "2048", timeout=300)
    s = rep["surfaces"]["selftest"]
    assert (s["cases"], s["ok"], s["refused"]) == (16, 2, {"InvalidArgumentError": 2}), s
    assert (s["crashes"], s["hangs"], s["findings"], s["harness_errors"]) == (4, 2, 6, 0), s
    found = {(f["kind"], f["type"]): f for f in rep["findings"]}
    assert set(found) == {("crash", "signal SIGABRT"), ("crash", "signal SIGSEGV"), ("hang", "no answer in 1.0 s"),
                          ("exception", "TypeError"), ("exception", "MemoryError"), ("accepted-invalid", "Violation")}, set(found)
    for (kind, _), f in found.items():
        assert f["count"] == 2 and len(f["reproducers"]) == 2, f
        do = {f["reproducers"][0]["case"]["do"], f["reproducers"][1]["case"]["do"]}
        assert len(do) == 1, f
    assert "Aborted" in found["crash", "signal SIGABRT"]["traceback"]
    assert "surfaces.py" in found["hang", "no answer in 1.0 s"]["where"]  # the stack dumped before the kill
    # one journaled case replays on its own to the same outcome
    case = tmp_path / "case.json"
    case.write_text(json.dumps(found["crash", "signal SIGABRT"]["reproducers"][0]))
    proc = subprocess.run([sys.executable, str(RUN), "--replay", str(case)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "crash: signal SIGABRT" in proc.stdout, proc.stdout + proc.stderr


def test_generated_chunks_resume_after_crashes(tmp_path: Path) -> None:
    """In a generated run, every requested case is run even when workers keep dying."""
    _need_hypothesis()
    rep = run_campaign(tmp_path, "--surfaces", "selftest", "--cases", "24", "--seed", "3", "--timeout", "1", timeout=300)
    s = rep["surfaces"]["selftest"]
    assert s["cases"] == 24
    assert s["crashes"] + s["hangs"] > 0 and s["ok"] + sum(s["refused"].values()) + s["findings"] + s["crashes"] + s["hangs"] == 24, s


_CASE_DIGEST = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "warm":  # as in a campaign's workers: ferrolm and every dependency imported
    import fuzz.run
    fuzz.run._warm_up()
from fuzz.engine import generate_cases
from fuzz.surfaces import SURFACES
out = {}
for s in SURFACES:
    h = hashlib.sha256()
    generate_cases(s, 5, 1, 3, 15, lambda i, c: h.update(json.dumps([i, c], sort_keys=True).encode()))
    out[s] = h.hexdigest()
print(json.dumps(out))
"""


def test_cases_are_reproducible_from_their_seed() -> None:
    """Case `index` of a seed is the same in every process, whatever its hash seed and whatever
    modules it has imported."""
    _need_hypothesis()
    digests = []
    for hash_seed, mode in (("1", "plain"), ("2", "warm")):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run([sys.executable, "-c", _CASE_DIGEST, str(RUN.parent.parent), mode], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        digests.append(json.loads(proc.stdout))
    assert digests[0] == digests[1]
    assert len(set(digests[0].values())) == len(digests[0])
