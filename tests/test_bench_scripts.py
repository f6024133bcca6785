"""The side-by-side benchmark scripts' bookkeeping: rounds merged into rows, the steal time, and
how the benchmarks doc turns rounds into ratios (no engine is run here)."""

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parent.parent / "benches"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compare():
    return load("llamacpp_compare")


@pytest.fixture(scope="module")
def doc():
    return load("make_benchmarks_doc")


def test_steal_pct_is_the_steal_share_of_the_cpu_time_between_two_readings(compare):
    a = [100, 0, 50, 1000, 10, 0, 5, 20, 0, 0]
    # 300 more jiffies in all, 30 of them stolen
    b = [300, 0, 70, 1050, 10, 0, 5, 50, 0, 0]
    assert compare.steal_pct(a, b) == 10.0
    assert compare.steal_pct(a, a) is None  # no time passed
    assert compare.steal_pct(None, b) is None
    assert compare.steal_pct(a[:7], b[:7]) is None  # no steal counter (old kernels)
    times = compare.cpu_times()
    if times is not None:  # Linux
        assert len(times) >= 8 and all(v >= 0 for v in times)


def round_row(decode, prefill, steal, rss=100.0, token_by_token=False):
    return dict(engine="ferrolm int8", threads=2, source="llama-135m", kv_cache="bf16", decode=decode,
                prefill=prefill, read_gb_s=decode / 5, pct_of_ceiling=decode / 2, peak_rss_mib=rss,
                prompt_token_by_token=token_by_token, decode_runs=[decode - 1, decode + 1], tokens=128,
                matmul_bytes_per_token=1000, steal_pct=steal)


def test_merge_rounds_takes_medians_and_keeps_every_round(compare):
    rounds = [round_row(100.0, 900.0, 0.5, rss=160.0), round_row(60.0, 1200.0, 30.0, rss=170.0, token_by_token=True),
              round_row(110.0, 1000.0, None)]
    row = compare.merge_rounds(rounds)
    assert row["decode"] == 100.0 and row["prefill"] == 1000.0
    assert row["read_gb_s"] == 20.0 and row["pct_of_ceiling"] == 50.0
    assert row["peak_rss_mib"] == 170.0
    assert row["prompt_token_by_token"] is True
    assert row["decode_rounds"] == [100.0, 60.0, 110.0]
    assert row["prefill_rounds"] == [900.0, 1200.0, 1000.0]
    assert row["decode_runs"] == [99.0, 101.0, 59.0, 61.0, 109.0, 111.0]
    assert row["steal_rounds"] == [0.5, 30.0, None]
    assert row["steal_pct"] == pytest.approx(15.25)  # median of the rounds that measured it
    assert row["engine"] == "ferrolm int8" and row["tokens"] == 128
    # the rounds themselves are left as they were
    assert rounds[0]["decode"] == 100.0 and "decode_rounds" not in rounds[0]


def test_doc_pairs_rounds_into_ratios(doc, tmp_path, monkeypatch):
    def row(engine, decode_rounds, steal):
        return dict(engine=engine, threads=2, source="llama-135m", kv_cache="bf16", decode=sorted(decode_rounds)[1],
                    prefill=100.0, decode_rounds=decode_rounds, prefill_rounds=[100.0, 100.0, 100.0],
                    read_gb_s=20.0, pct_of_ceiling=70.0, peak_rss_mib=100.0, prompt_token_by_token=False,
                    matmul_bytes_per_token=1000, steal_pct=sorted(steal)[1], steal_rounds=steal)
    run = dict(sources=["llama-135m"], rounds=3, runs=1, loadavg=[1.0, 1.0, 1.0],
               rows=[row("ferrolm int8", [100.0, 50.0, 90.0], [0.0, 20.0, 1.0]),
                     row("llama.cpp q8_0", [80.0, 100.0, 90.0], [0.5, 0.5, 2.0])])
    (tmp_path / "llamacpp_shapes.json").write_text(json.dumps(run))
    monkeypatch.setattr(doc, "OUT", tmp_path)
    text = "\n".join(doc.llamacpp_shapes_section())
    # per round 1.25, 0.5, 1.0: the median of the ratios, not the ratio of the medians (90 / 90)
    assert "llama-135m 2T 1.00× (0.50–1.25)" in text
    assert "took turns over 3 rounds" in text
    assert "ferrolm at 2 threads median 1.0 % (at most 20.0 %)" in text
    assert "llama.cpp at 2 threads median 0.5 % (at most 2.0 %)" in text
    # a run of one round: plain ratios of the rows
    run.update(rounds=1, runs=3)
    for r in run["rows"]:
        for key in ("decode_rounds", "prefill_rounds", "steal_rounds"):
            del r[key]
    (tmp_path / "llamacpp_shapes.json").write_text(json.dumps(run))
    text = "\n".join(doc.llamacpp_shapes_section())
    assert "llama-135m 2T 1.00×," in text or "llama-135m 2T 1.00×;" in text
    assert "The median of 3 timed runs." in text


def test_the_llamacpp_section_keeps_other_machines_runs(doc, tmp_path, monkeypatch):
    monkeypatch.setattr(doc, "OUT", tmp_path)
    assert doc.llamacpp_shapes_section() == []

    def run(cpu, ours, theirs):
        def row(engine, decode):
            return dict(engine=engine, threads=1, source="gpt2-124m", kv_cache="bf16", decode=decode, prefill=500.0,
                        decode_rounds=[decode, decode + 2], prefill_rounds=[500.0, 500.0], read_gb_s=14.0,
                        pct_of_ceiling=decode / 2, peak_rss_mib=100.0, prompt_token_by_token=False,
                        matmul_bytes_per_token=1000, steal_pct=0.0, steal_rounds=[0.0, 0.0])
        return dict(sources=["gpt2-124m"], rounds=2, runs=1, loadavg=[1.0, 1.0, 1.0],
                    machine={"cpu": cpu, "cpus": 2, "simd": "avx512", "prefill_gemm": "amx-bf16"},
                    rows=[row("ferrolm int8", ours), row("llama.cpp q8_0", theirs)])

    (tmp_path / "llamacpp_shapes.json").write_text(json.dumps(run("CPU A", 100.0, 80.0)))
    b = {**run("CPU B", 220.0, 100.0), "date": "2026-12-04 20:00 UTC"}
    b["machine"].update(last_level_cache_mib=480.0, int8_layout="tiles")
    (tmp_path / "llamacpp_shapes_b.json").write_text(json.dumps(b))
    md = "\n".join(doc.llamacpp_shapes_section())
    main, other = md.split("### The same on another machine (b)")
    assert "Machine: CPU A" in main and "| gpt2-124m | 1 | — | — | — | — | 100.0 (50%) | 80.0 (40%) |" in main
    assert "gpt2-124m 1T 1.25× (1.24–1.25)" in main
    assert "Machine: CPU B" in other and "| gpt2-124m | 1 | — | — | — | — | 220.0 (110%) | 100.0 (50%) |" in other
    assert "gpt2-124m 1T 2.19× (2.18–2.20)" in other
    # a row past 100 % on a CPU with a known last-level cache says which weights may have stayed in it
    assert "the CPU's 480 MiB last-level cache" in other and "ferrolm int8 on gpt2-124m reads 0 MiB a token" in other
    assert "last-level cache" not in main and "INT8 weights in" not in main
    assert "prefill GEMM `amx-bf16`, INT8 weights in tiles." in other
    assert "--llamacpp-on b" in other and "docs/bench/llamacpp_shapes_b.json" in other
    assert "measured 2026-12-04 20:00 UTC" in other
    with pytest.raises(SystemExit, match="--llamacpp-on takes a name"):
        doc.measure_llamacpp_shapes("no/slashes")


def test_the_doc_says_which_run_each_section_without_a_machine_comes_from(doc, tmp_path, monkeypatch):
    """record_run notes the date and this machine for the sections it names; runs_sentence
    groups the sections by run and sends the unrecorded ones to the file's history."""
    monkeypatch.setattr(doc, "RUNS", tmp_path / "runs.json")
    assert "the eval, the adapters, the serving and the KV cache sections in an earlier run" in doc.runs_sentence()
    doc.record_run("eval", "adapters")
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert set(runs) == {"eval", "adapters"} and runs["eval"] == runs["adapters"]
    assert runs["eval"]["date"].endswith(" UTC") and "vCPUs, kernels `" in runs["eval"]["machine"]
    said = doc.runs_sentence()
    assert f"the eval and the adapters sections on {runs['eval']['date']} ({runs['eval']['machine']})" in said
    assert "the serving and the KV cache sections in an earlier run" in said
    doc.record_run("kv_cache")
    assert "the serving section in an earlier run" in doc.runs_sentence()


def test_a_rerun_row_gives_the_medians_of_its_rounds_ratios(doc, tmp_path, monkeypatch):
    monkeypatch.setattr(doc, "RERUNS", tmp_path)
    assert doc.llamacpp_reruns_section() == []

    def row(engine, prefill, decode, steal):
        return {"engine": engine, "source": "llama-1.1b", "threads": 2, "prefill": statistics.median(prefill),
                "decode": statistics.median(decode), "pct_of_ceiling": 90.0, "prefill_rounds": prefill,
                "decode_rounds": decode, "steal_rounds": steal}

    rerun = {"date": "2026-12-03 11:50 UTC", "machine": {"cpu": "Some CPU"}, "engines": "ferrolm fp32,llama.cpp f32",
             "rows": [row("ferrolm fp32", [50.0, 60.0, 40.0], [4.0, 5.0, 6.0], [0.1, 0.2, 0.3]),
                      row("llama.cpp f32", [50.0, 40.0, 50.0], [4.0, 4.0, 4.0], [0.5, 2.5, 0.4])]}
    (tmp_path / "llama-1.1b-2T-x.json").write_text(json.dumps(rerun))
    md = "\n".join(doc.llamacpp_reruns_section())
    # prefill ratios 1.0, 1.5, 0.8: median 1.00, not 50/50 of the medians; decode 1.0, 1.25, 1.5
    assert "| 2026-12-03 11:50 UTC, Some CPU | llama-1.1b | 2 | ferrolm fp32 | llama.cpp f32 | 50.0 / 50.0 " \
           "| 1.00× (0.80–1.50) | 5.0 (90%) / 4.0 (90%) | 1.25× (1.00–1.50) | 0.1–2.5 |" in md
    assert '--engines "ferrolm fp32,llama.cpp f32" --threads 2 --runs 1 --rounds 5' in md
    assert "token by token" not in md
    rerun["rows"][1]["prompt_token_by_token"] = True
    (tmp_path / "llama-1.1b-2T-x.json").write_text(json.dumps(rerun))
    md = "\n".join(doc.llamacpp_reruns_section())
    assert "| 50.0 / 50.0† | — |" in md and "ran token by token (`n_batch=1`), and its prefill is not compared" in md


def test_the_ctranslate2_section_keeps_other_machines_runs(doc, tmp_path, monkeypatch):
    monkeypatch.setattr(doc, "OUT", tmp_path)
    assert doc.ctranslate2_section() == []

    def run(cpu, gemm, ours, theirs, pairs):
        def row(engine, prefill):
            return {"engine": engine, "threads": 1, "prefill_tok_s": prefill, "decode_tok_s": 100.0,
                    "runs": {"prefill_s": [128 / prefill], "decode_tok_s": [100.0]}}
        return {"shape": "llama-135m", "ctranslate2": "4.8.5", "prefill_gemm": gemm,
                "machine": {"cpu": cpu, "cpus": 2, "simd": "avx512", "ferrolm": "0.1.0"},
                "rows": [row("ferrolm int8", ours), row("ctranslate2 int8", theirs)],
                "pairs": {"1": {"ratios": pairs, "median": statistics.median(pairs)}}}

    (tmp_path / "ctranslate2.json").write_text(json.dumps(run("CPU A", "avx512-bf16", 800.0, 1000.0, [0.8, 0.9, 0.85])))
    (tmp_path / "ctranslate2_b.json").write_text(json.dumps(run("CPU B", "amx-bf16", 1600.0, 1500.0, [1.1, 1.0, 1.05])))
    md = "\n".join(doc.ctranslate2_section())
    main, other = md.split("### The same on another machine (b)")
    assert "Machine: CPU A" in main and "prefill 0.80×" in main and "1 thread 0.85× (range 0.80–0.90)" in main
    assert "is not met at 1 thread(s)" in main and "`vdpbf16ps`" in main
    assert "Machine: CPU B" in other and "prefill 1.07×" in other and "1 thread 1.05× (range 1.00–1.10)" in other
    assert "is met at 1 thread(s)" in other and "AMX tiles" in other
    assert "--ctranslate2-on b" in other and "docs/bench/ctranslate2_b.json" in other
    # the AMX-off row says which GEMM it ran: the vdpbf16ps one before its child reported it
    b = run("CPU B", "amx-bf16", 1600.0, 1500.0, [1.1, 1.0, 1.05])
    off = dict(b["rows"][0], engine="ferrolm int8, FERROLM_AMX=off", prefill_tok_s=600.0)
    (tmp_path / "ctranslate2_b.json").write_text(json.dumps(dict(b, rows=[*b["rows"], off])))
    other = "\n".join(doc.ctranslate2_section()).split("### The same on another machine (b)")[1]
    assert "with AMX off (`FERROLM_AMX=off`: the `vdpbf16ps` GEMM, INT8 weights in tiles of 16 rows): 1 thread 0.40×" in other
    off["runs"] = dict(off["runs"], prefill_gemm="f32")
    (tmp_path / "ctranslate2_b.json").write_text(json.dumps(dict(b, rows=[*b["rows"], off])))
    other = "\n".join(doc.ctranslate2_section()).split("### The same on another machine (b)")[1]
    assert "`FERROLM_AMX=off`: the VNNI GEMM on the exact 16-bit x" in other and "1 thread 0.40×" in other


def test_the_ctranslate2_section_sets_amx_off_against_ctranslate2_without_amx(doc, tmp_path, monkeypatch):
    monkeypatch.setattr(doc, "OUT", tmp_path)

    def row(engine, prefill):
        return {"engine": engine, "threads": 1, "prefill_tok_s": prefill, "decode_tok_s": 100.0,
                "runs": {"prefill_s": [128 / prefill], "decode_tok_s": [100.0], "prefill_gemm": "f32"}}

    run = {"shape": "llama-135m", "ctranslate2": "4.8.5", "prefill_gemm": "amx-bf16",
           "machine": {"cpu": "CPU X", "cpus": 2, "simd": "avx512", "ferrolm": "0.1.0"},
           "rows": [row("ferrolm int8", 1600.0), row("ferrolm int8, FERROLM_AMX=off", 800.0),
                    row("ctranslate2 int8", 1400.0), row("ctranslate2 int8, MKL without AMX", 1000.0)],
           "pairs": {"1": {"ratios": [1.1, 1.2, 1.3], "median": 1.2}},
           "pairs_amx_off": {"1": {"ratios": [0.7, 0.8, 0.9], "median": 0.8}}}
    (tmp_path / "ctranslate2.json").write_text(json.dumps(run))
    md = "\n".join(doc.ctranslate2_section())
    assert "| ctranslate2 int8, MKL without AMX | 1 | 1000.0 |" in md
    # 800 against the 1000 of CTranslate2 without AMX, not the 1400 with it
    assert "`MKL_ENABLE_INSTRUCTIONS=AVX512_E1`): 1 thread 0.80×" in md
    assert "the same pairs with both engines without AMX: 1 thread 0.80× (range 0.70–0.90)" in md
    assert "The prefill target (INT8 ≥ CTranslate2's int8) is met at 1 thread(s)" in md
    assert "The prefill target (INT8 ≥ CTranslate2's int8) without AMX is not met at 1 thread(s)" in md
    assert "on AMX-INT8 tiles where the CPU has them" in md
