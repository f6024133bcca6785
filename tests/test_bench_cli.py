"""`ferrolm bench` on the fixture models with tiny settings: every field present and sane, the
estimate within 10% of the measured peak RSS of each precision (each configuration in a fresh
process), the files of --out (charts valid PNGs when matplotlib is installed), the report
without matplotlib, and bad arguments."""

from __future__ import annotations

import csv
import json
import math

import pytest

from ferrolm import bench_report, metrics
from ferrolm.cli import main
from conftest import FIXTURES, MODELS

SOURCES = [str(MODELS / "tiny-llama"), str(MODELS / "tiny-gpt2"), str(MODELS / "tiny-qwen2"),
           str(FIXTURES / "gguf" / "tiny-llama.gguf")]
TINY = ["--threads", "1", "--runs", "1", "--prompt-tokens", "16", "--new-tokens", "16", "--quality-tokens", "96",
        "--window", "64", "--quality-new-tokens", "8", "--bandwidth-mib", "64", "--no-progress"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["bench", *SOURCES, "--precisions", "fp32,bf16,int8", *TINY, "--out", str(out), "--format", "json"])
    assert rc == 0
    return json.loads(buf.getvalue()), out


def test_every_field_present_and_sane(bench_run):
    report, _ = bench_run
    assert report["settings"]["prompt_tokens"] == 16 and report["machine"]["simd"]
    assert report["machine"]["int8_layout"] in ("rows", "tiles")
    assert [m["path"] for m in report["models"]] == SOURCES
    for m in report["models"]:
        assert [(r["precision"], r["threads"]) for r in m["rows"]] == [("fp32", 1), ("bf16", 1), ("int8", 1)]
        weights = {}
        for r in m["rows"]:
            weights[r["precision"]] = r["weight_bytes"]
            assert r["load_seconds"] >= 0 and r["params"] > 90_000
            assert len(r["prefill_runs"]) == len(r["decode_runs"]) == 2
            for key in ("prefill_tok_s", "decode_tok_s", "decode_ceiling_tok_s", "read_bandwidth_gb_s", "decode_pct_of_ceiling"):
                assert math.isfinite(r[key]) and r[key] > 0, key
            assert r["prefill_std"] >= 0 and r["decode_std"] >= 0
            assert r["peak_rss_mib"] > r["weight_mib"] + 20  # the Python runtime comes on top
            assert r["estimate"]["weights_bytes"] == r["weight_bytes"]
            assert r["estimate"]["context"] == 32
        assert weights["fp32"] > weights["bf16"] > weights["int8"]
        q = m["quality"]
        assert q["scored_tokens"] == 95 and q["window"] == 64 and q["prompts"] == 6 and q["reference_perplexity"] > 1
        assert set(q["precisions"]) == {"bf16", "int8"}
        for p, d in q["precisions"].items():
            assert d["candidate_precision"] == p and d["reference_precision"] == "fp32"
            assert 0 <= d["mean_kl"] <= d["p99_kl"] <= d["max_kl"] and 0 < d["top1_agreement"] <= 1
            assert abs(d["perplexity_change_pct"]) < 10
            g = d["greedy_scores"]
            if not metrics.available():  # ROUGE/BLEU need ferrolm[eval]
                assert g is None and not q["metrics_available"]
                continue
            assert set(g) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"}
            assert all(0 <= g[k] <= 1 for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")) and 0 <= g["bleu"] <= 100
            texts = [x["candidate_text"] for x in d["greedy"]], [x["reference_text"] for x in d["greedy"]]
            assert g["bleu"] == pytest.approx(metrics.bleu(*texts)) and g["rougeL"] == pytest.approx(metrics.rouge(*texts)["rougeL"])
            if all(x["identical"] for x in d["greedy"]):
                assert g["rouge1"] == pytest.approx(1.0)


def test_quality_table_with_the_default_caches(bench_run):
    """The default caches (FP32 with FP32 weights, BF16 with the others): the table keeps the
    FP32 reference row and says which cache each other row ran with."""
    report, _ = bench_run
    assert report["models"][0]["quality"]["kv_cache"] == "auto"
    md = bench_report.render(report, "md")
    lines = md.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| precision | weights MiB | perplexity"))
    rows = [line.split(" | ")[0] for line in lines[head + 2:head + 5]]
    assert rows == ["| fp32", "| bf16, BF16 KV cache", "| int8, BF16 KV cache"], rows
    assert "FP32 weights with an FP32 KV cache (BF16, INT8 and INT4 with a BF16 cache" in md


def test_estimate_within_10_percent_of_peak_rss(bench_run):
    report, _ = bench_run
    for m in report["models"]:
        for r in m["rows"]:
            assert abs(r["estimate_error_pct"]) <= 10, (m["name"], r["precision"], r["peak_rss_mib"], r["estimate_mib"])


def test_files_written(bench_run):
    report, out = bench_run
    assert json.loads((out / "bench.json").read_text())["models"][0]["rows"][0]["precision"] == "fp32"
    md = (out / "report.md").read_text()
    assert "| precision | threads | load s | weights MiB | pp16 tok/s | tg16 tok/s |" in md
    assert md.count("| int8 | 1 |") == 4 and "same top token" in md and "ROUGE-L" in md
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert len(rows) == 12 and {r["precision"] for r in rows} == {"fp32", "bf16", "int8"}
    assert all(float(r["decode_tok_s"]) > 0 for r in rows)


def test_charts_are_valid_pngs(bench_run):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    _, out = bench_run
    md = (out / "report.md").read_text()
    for name in bench_report.CHARTS:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert f"]({name})" in md


def test_report_without_matplotlib_says_how_to_get_charts(bench_run, tmp_path, monkeypatch):
    report, _ = bench_run
    monkeypatch.setattr(bench_report, "plotting_available", lambda: False)
    written = bench_report.write_outputs(dict(report), tmp_path)
    assert not any(p.suffix == ".png" for p in written)
    assert "pip install 'ferrolm[plot]'" in (tmp_path / "report.md").read_text()
    assert "pip install 'ferrolm[plot]'" in bench_report.render(dict(report, charts=None), "md")


def test_quality_skipped_without_tokenizer(tmp_path, capsys):
    from conftest import random_llama

    folder = random_llama(tmp_path / "no-tokenizer", ctx=64)
    assert main(["bench", str(folder), "--precisions", "fp32,int8", *TINY, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    m = report["models"][0]
    assert m["quality"] is None and "no tokenizer" in m["quality_note"] and len(m["rows"]) == 2


@pytest.mark.parametrize("args, message", [
    (["--precisions", "fp32,fp16"], "FP16 weights are not available in this version"),
    (["--precisions", "fp32,fp8"], "precision must be one of fp32, bf16, int8, int4"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--threads", "0"], "--threads takes positive integers"),
    (["--runs", "0"], "--runs must be at least 1"),
])
def test_bad_arguments(args, message, capsys):
    assert main(["bench", SOURCES[0], *args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_cuda_bench_without_cupy_names_what_is_missing(monkeypatch, capsys):
    pytest.importorskip("numpy")
    try:
        import cupy  # noqa: F401

        pytest.skip("cupy is installed")
    except ImportError:
        pass
    monkeypatch.delenv("FERROLM_CUDA_EMULATE", raising=False)
    assert main(["bench", SOURCES[0], "--device", "cuda", "--no-progress"]) == 2
    assert "needs cupy" in capsys.readouterr().err


def test_missing_model_and_unwritable_out(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "no model" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["bench", SOURCES[0], "--out", str(blocker / "sub"), "--no-progress"]) == 2
    assert "cannot write to --out" in capsys.readouterr().err


def test_saved_int8_checkpoint_refuses_other_precisions(tmp_path, capsys):
    from conftest import load_fixture

    saved = load_fixture("tiny-llama", precision="int8").save(tmp_path / "q")
    assert main(["bench", str(saved), "--precisions", "fp32,int8", *TINY]) == 2
    assert "loads only as int8" in capsys.readouterr().err
    assert main(["bench", SOURCES[0], "--prompt-tokens", "100", "--new-tokens", "29", "--no-progress"]) == 2
    assert "exceed the model's 128 positions" in capsys.readouterr().err


def test_cuda_bench_on_the_emulator(monkeypatch, tmp_path, capsys):
    """--device cuda measures the CUDA backend (here on the emulator): decode with and without
    the captured step, launches per token, prefill, the copy-bandwidth share."""
    monkeypatch.setenv("FERROLM_CUDA_EMULATE", "1")
    args = ["bench", str(MODELS / "tiny-gpt2"), "--device", "cuda", "--precisions", "fp32,bf16", "--runs", "1",
            "--prompt-tokens", "12", "--new-tokens", "4", "--format", "json", "--no-progress", "--out", str(tmp_path)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runtime"] == "emulator" and [r["precision"] for r in report["rows"]] == ["fp32", "bf16"]
    for r in report["rows"]:
        assert r["decode_tok_s"] > 0 and r["decode_tok_s_no_graph"] > 0 and r["prefill_tok_s"] > 0
        assert r["launches_per_token"] > 10 and 0 < r["decode_pct_of_bandwidth"] < 100
    md = (tmp_path / "report_cuda.md").read_text()
    assert len([line for line in md.splitlines() if line.startswith("| ") and "tiny-gpt2" in line]) == 2
    assert json.loads((tmp_path / "bench_cuda.json").read_text())["rows"] == report["rows"]


def test_a_bf16_kv_cache_bench(capsys):
    """--kv-cache bf16: every configuration and the estimate use it, quality compares each
    precision with it against FP32 weights with an FP32 cache, and the report says so."""
    assert main(["bench", SOURCES[0], "--precisions", "fp32,int8", "--kv-cache", "bf16", *TINY, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["kv_cache"] == "bf16"
    m = report["models"][0]
    for row in m["rows"]:
        assert row["kv_cache"] == "bf16" and row["estimate"]["kv_cache"] == "bf16"
        assert row["kv_cache_mib"] * 2**20 == row["estimate"]["kv_cache_bytes"]
    q = m["quality"]
    assert q["kv_cache"] == "bf16" and set(q["precisions"]) == {"fp32", "int8"}
    assert q["precisions"]["fp32"]["candidate_kv_cache"] == "bf16" and q["precisions"]["fp32"]["mean_kl"] > 0
    md = bench_report.render(report, "md")
    assert "KV cache: BF16." in md and "| fp32, BF16 KV cache |" in md and "an FP32 KV cache" in md


def test_a_bf16_kv_cache_bench_on_cuda_is_refused(capsys):
    assert main(["bench", SOURCES[0], "--device", "cuda", "--kv-cache", "bf16", "--no-progress"]) == 2
    assert "keeps its KV cache in FP32" in capsys.readouterr().err


def test_last_level_cache_comes_from_the_highest_data_cache_level(tmp_path):
    from ferrolm.bench import last_level_cache_mib

    def index(i, level, kind, size):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")

    assert last_level_cache_mib(tmp_path) is None  # sysfs says nothing
    index(0, 1, "Data", "48K")
    index(1, 1, "Instruction", "64K")
    assert last_level_cache_mib(tmp_path) == 48 / 1024
    index(2, 2, "Unified", "2048K")
    index(3, 3, "Unified", "491520K")
    assert last_level_cache_mib(tmp_path) == 480.0
    index(4, 4, "Instruction", "1G")  # not a data cache
    assert last_level_cache_mib(tmp_path) == 480.0
    (tmp_path / "index3" / "size").write_text("garbage\n")
    assert last_level_cache_mib(tmp_path) is None
