"""A short run of the endurance script (tests/soak.py; the full run is documented in docs/soak.md),
so that the script keeps working: a few hundred generations on 3 threads with every kind of job
and event, each result equal to its serial twin, no fd, map or thread leak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gguf")  # the GGUF fixture is one of the checkpoints

SOAK = Path(__file__).parent / "soak.py"
sys.path.insert(0, str(SOAK.parent))
import soak  # noqa: E402


def test_short_soak_run(tmp_path):
    report_path = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(SOAK), "--generations", "300", "--threads", "3", "--reload-every", "8",
                          "--sample-every", "20", "--rss-limit-mib", "64", "--report", str(report_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    assert report["passed"] and all(report["checks"].values())
    assert report["generations"] == 300 and report["mismatches"] == 0 and report["error_count"] == 0
    assert all(n > 0 for n in report["jobs_by_kind"].values()), report["jobs_by_kind"]
    counts = report["counts"]
    for what in ("event:shared", "event:private", "event:readapt", "soft_prompt", "with_adapter", "adapter_switches"):
        assert counts.get(what, 0) > 0, what
    assert len(report["rss_samples"]) == 15
    assert "PASS" in run.stdout


def test_twins_tell_different_calls_apart():
    """The comparison can fail: another seed, another adapter or a longer cancelled prefix differ."""
    lists = soak.make_jobs(60, 2, seed=3, reload_every=10)
    jobs = [j for items in lists for j in items if isinstance(j, soak.Job)]
    assert [j.id for j in jobs if j.id % 2 == 0] == [j.id for j in lists[0] if isinstance(j, soak.Job)]
    assert soak.make_jobs(60, 2, seed=3, reload_every=10)[1] == lists[1]  # deterministic
    job = soak.Job(0, "generate", "tiny-llama", "fp32", "temperature_1", 7, 16, "Once upon a time", adapter="attn")
    cancel = soak.Job(1, "cancel", "tiny-llama", "fp32", "temperature_1", 7, 16, "Once upon a time", cancel_after=2)
    twins = soak.compute_twins([job, cancel], kernel_threads=1)
    model = soak.load_model("tiny-llama", "fp32", 1, merged=False)
    assert soak.same(job, soak.run_job(model, job), twins[0])
    other_seed = soak.Job(**{**job.__dict__, "seed": 8})
    assert not soak.same(job, soak.run_job(model, other_seed), twins[0])
    no_adapter = soak.Job(**{**job.__dict__, "adapter": None})
    assert not soak.same(job, soak.run_job(model, no_adapter), twins[0])
    got = soak.run_job(model, cancel)
    assert got["closed"] and len(got["deltas"]) == 2 and soak.same(cancel, got, twins[1])
    longer = soak.run_job(model, soak.Job(**{**cancel.__dict__, "cancel_after": 3}))
    assert twins[1]["deltas"][:3] == longer["deltas"] and not soak.same(cancel, longer, twins[1])
