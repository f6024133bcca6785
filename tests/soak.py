"""Endurance run: many generations on the fixture models from several threads, with model reloads,
LoRA adapter switches, soft prompts and cancelled streams in between. Every result must equal its
serial twin (the same call run alone, one thread, same seed), the resident memory must stay flat
after warm-up, and no file descriptor or memory map may leak.

    python tests/soak.py --generations 10000 --threads 4 --report soak-report.json

Phases: (1) twins: every job's call, run serially on freshly loaded models; (2) warm-up: the
first 10 % of each thread's jobs; (3) the rest. Between the phases the workers wait at a barrier
and the main thread counts fds and maps (after gc.collect(), so that dropped models are gone).
VmRSS, fds, maps and threads are also sampled every --sample-every generations, after
gc.collect() (and before it; and after glibc's malloc_trim, which shows the memory in use without
what the allocator keeps for reuse). Criteria (the verdict in the report; exit status 1 if any
fails):
  - every result equals its twin, and no call raised;
  - RSS flat after warm-up: no sample of the second half exceeds the median of the samples
    around the half-way point (45-55 %) by more than --rss-limit-mib (default 8 MiB);
  - fds and threads after <= before; file-backed maps after <= before; all maps after <= before
    + --maps-slack (default 40: exited threads' stacks that glibc keeps mapped for reuse).
Results are compared as they come (nothing accumulates while memory is sampled). See docs/soak.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
sys.path.insert(0, str(FIXTURES))

import ferrolm  # noqa: E402
from make_golden_streams import CHECKPOINTS, KNOBS  # noqa: E402

ADAPTERS = FIXTURES / "adapters"
PRECISIONS = ("fp32", "bf16", "int8")
#: LoRA adapters per checkpoint (name → fixture folder); soft prompts where the width fits.
LORAS = {
    "tiny-llama": {"attn": "tiny-llama-lora-attn", "mlp": "tiny-llama-lora-mlp"},
    "tiny-llama-gguf": {"attn": "tiny-llama-lora-attn", "mlp": "tiny-llama-lora-mlp"},
    "tiny-gpt2": {"c": "tiny-gpt2-lora"},
    "tiny-qwen2": {"qv": "tiny-qwen2-lora"},
}
SOFT_PROMPTS = {"tiny-llama": "tiny-llama-prompt-tuning", "tiny-llama-gguf": "tiny-llama-prompt-tuning"}
PROMPTS = ["The river ran past the old mill", "Once upon a time", "A small boat", "the", [5, 17, 42, 100, 7],
           [1, 2, 3], "The old miller said that the water was cold and the night was long"]
#: Job kinds and their share of the generations.
KINDS = {"generate": 50, "stream": 12, "cancel": 12, "merged": 12, "churn": 6, "chat": 8}


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    checkpoint: str
    precision: str
    knobs: str
    seed: int
    max_new_tokens: int
    prompt: Any
    adapter: Optional[str] = None  # a LORAS name: unmerged per call, or merged and active ("merged")
    soft_prompt: bool = False
    cancel_after: int = 0  # "cancel": deltas read before close()

    @property
    def options(self) -> Dict[str, Any]:
        return dict(KNOBS[self.knobs], seed=self.seed, max_new_tokens=self.max_new_tokens)


@dataclass
class Event:
    """Not a generation: reload a shared model, reload the thread's own model, or drop and load
    one of its merged adapters again."""
    kind: str
    checkpoint: str = ""
    precision: str = ""


def make_jobs(n: int, threads: int, seed: int, reload_every: int, kinds_allowed=tuple(KINDS),
              events=("shared", "private", "readapt"), token_prompts: bool = False) -> List[List[Any]]:
    """Per thread, a deterministic list of jobs and events (n jobs in all). `token_prompts`: only
    the prompts given as token ids (nothing is encoded, so no tokenizer cache is filled)."""
    rng = random.Random(seed)
    prompts = [p for p in PROMPTS if not token_prompts or not isinstance(p, str)]
    kinds = [k for k, w in KINDS.items() if k in kinds_allowed for _ in range(w)]
    lists: List[List[Any]] = [[] for _ in range(threads)]
    for i in range(n):
        t = i % threads
        kind = rng.choice(kinds)
        if kind == "merged":
            ckpt, precision = private_slot(t)
        else:
            ckpt, precision = rng.choice(list(CHECKPOINTS)), rng.choice(PRECISIONS)
        adapter = None
        if kind in ("merged", "churn") or rng.random() < 0.4:
            adapter = rng.choice(list(LORAS[ckpt]))
            if kind == "merged" and rng.random() < 0.25:
                adapter = None  # set_adapter(None): back to the base weights
        soft = kind not in ("churn", "chat") and ckpt in SOFT_PROMPTS and rng.random() < 0.3
        knobs = rng.choice(list(KNOBS))
        max_new = max(rng.randint(4, 40), KNOBS[knobs].get("min_new_tokens", 0))
        prompt = rng.choice(prompts)
        if kind == "chat":
            prompt = [{"role": "user", "content": rng.choice([p for p in PROMPTS if isinstance(p, str)])}]
        lists[t].append(Job(i, kind, ckpt, precision, knobs, rng.randrange(2**64), max_new, prompt,
                            adapter, soft, rng.randint(1, 6) if kind == "cancel" else 0))
        if events and (i // threads) % reload_every == reload_every - 1:
            what = rng.choice([e for e in ("shared", "shared", "private", "readapt") if e in events])
            c, p = (rng.choice(list(CHECKPOINTS)), rng.choice(PRECISIONS)) if what == "shared" else private_slot(t)
            lists[t].append(Event(what, c, p))
    return lists


def private_slot(thread: int) -> Tuple[str, str]:
    """The checkpoint and precision of thread `thread`'s own model (merged adapters)."""
    return list(CHECKPOINTS)[thread % len(CHECKPOINTS)], PRECISIONS[thread % len(PRECISIONS)]


def load_model(checkpoint: str, precision: str, kernel_threads: int, merged: bool) -> ferrolm.Model:
    """A fixture model with its adapters (unmerged, chosen per call; or merged, for set_adapter)
    and its soft prompt loaded."""
    model = ferrolm.load(CHECKPOINTS[checkpoint], precision=precision, threads=kernel_threads, progress=False)
    for name, folder in LORAS[checkpoint].items():
        model.load_lora(ADAPTERS / folder, name=name, merged=merged)
    if checkpoint in SOFT_PROMPTS:
        model.load_soft_prompt(ADAPTERS / SOFT_PROMPTS[checkpoint], name="sp")
    return model


def run_job(model: ferrolm.Model, job: Job) -> Dict[str, Any]:
    """The job's call on `model` (whose adapter state the caller has set); a comparable record."""
    kw = dict(job.options)
    if job.kind in ("generate", "stream", "cancel", "chat") and job.adapter is not None:
        kw["adapter"] = job.adapter
    if job.soft_prompt:
        kw["soft_prompt"] = "sp"
    prompt = job.prompt
    if job.kind == "chat":
        if model.chat_template is not None:  # the GGUF fixture has one
            r = model.chat(job.prompt, **kw)
            return {"tokens": r.tokens, "text": r.text, "finish": r.finish_reason, "prompt": r.prompt_tokens}
        # the folder fixtures have none: a plain rendering of the messages
        prompt = "".join(f"{m['role']}: {m['content']}\n" for m in job.prompt) + "assistant:"
    if job.kind in ("stream", "cancel"):
        stream = model.generate(prompt, stream=True, **kw)
        deltas = []
        for delta in stream:
            deltas.append(delta)
            if job.kind == "cancel" and len(deltas) == job.cancel_after:
                stream.close()
                return {"deltas": deltas, "closed": True}
        r = stream.result
        return {"deltas": deltas, "tokens": r.tokens, "text": r.text, "finish": r.finish_reason}
    r = model.generate(prompt, **kw)
    return {"tokens": r.tokens, "text": r.text, "finish": r.finish_reason}


def same(job: Job, got: Dict[str, Any], twin: Dict[str, Any]) -> bool:
    if job.kind == "cancel":
        if got.get("closed"):
            return got["deltas"] == twin["deltas"][: job.cancel_after]
        return got == twin  # the stream ended before cancel_after deltas
    return got == twin


def compute_twins(jobs: List[Job], kernel_threads: int) -> Dict[int, Dict[str, Any]]:
    """Every job run alone, one after the other, on models loaded for the purpose. A cancelled
    stream's twin is the whole stream."""
    shared: Dict[Tuple[str, str], ferrolm.Model] = {}
    merged: Dict[Tuple[str, str], ferrolm.Model] = {}
    twins = {}
    for job in sorted(jobs, key=lambda j: j.id):
        key = (job.checkpoint, job.precision)
        if job.kind == "merged":
            if key not in merged:
                merged[key] = load_model(*key, kernel_threads, merged=True)
            model = merged[key]
            model.set_adapter(job.adapter)
        else:
            if key not in shared:
                shared[key] = load_model(*key, kernel_threads, merged=False)
            model = shared[key]
        alone = job
        if job.kind == "cancel":
            alone = Job(**{**job.__dict__, "kind": "stream"})
        elif job.kind == "churn":
            alone = Job(**{**job.__dict__, "kind": "generate"})  # the same adapter, loaded unmerged at the start
        twins[job.id] = run_job(model, alone)
    return twins


def process_counts() -> Dict[str, int]:
    status = Path("/proc/self/status").read_text()
    field = {line.split(":")[0]: line.split(":")[1].split() for line in status.splitlines()}
    with open("/proc/self/maps") as f:
        paths = [line.split()[5] if len(line.split()) > 5 else "" for line in f]
    return {"rss_kib": int(field["VmRSS"][0]), "fds": len(os.listdir("/proc/self/fd")), "maps": len(paths),
            "file_maps": sum(p.startswith("/") for p in paths), "threads": int(field["Threads"][0])}


def trimmed_rss() -> Optional[int]:
    """VmRSS (KiB) after glibc's malloc_trim(0) has returned the free pages of every heap to the
    system: the memory in use, without what the allocator keeps for reuse. None off glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return process_counts()["rss_kib"]


def thread_names() -> Dict[str, int]:
    names: Dict[str, int] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        names[name] = names.get(name, 0) + 1
    return dict(sorted(names.items()))


@dataclass
class Soak:
    kernel_threads: int
    sample_every: int
    collect: bool
    twins: Dict[int, Dict[str, Any]]
    shared: Dict[Tuple[str, str], ferrolm.Model] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: int = 0
    samples: List[Dict[str, Any]] = field(default_factory=list)
    mismatches: int = 0
    mismatch_examples: List[Dict[str, Any]] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)
    t0: float = 0.0

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def shared_model(self, checkpoint: str, precision: str) -> ferrolm.Model:
        with self.lock:
            return self.shared[(checkpoint, precision)]

    def reload_shared(self, checkpoint: str, precision: str) -> None:
        model = load_model(checkpoint, precision, self.kernel_threads, merged=False)
        with self.lock:
            self.shared[(checkpoint, precision)] = model  # the old one is dropped once idle

    def record(self, job: Job, got: Dict[str, Any]) -> None:
        ok = same(job, got, self.twins[job.id])
        with self.lock:
            self.done += 1
            done = self.done
            if not ok:
                self.mismatches += 1
                if len(self.mismatch_examples) < 20:
                    self.mismatch_examples.append({"job": repr(job), "got": got, "twin": self.twins[job.id]})
        if done % self.sample_every == 0:
            raw = process_counts()
            if self.collect:
                gc.collect()  # dropped models are freed by the cyclic collector (see docs/soak.md)
            counts = process_counts()
            sample = {"generations": done, "seconds": round(time.perf_counter() - self.t0, 3), **counts,
                      "rss_kib_before_gc": raw["rss_kib"], "threads_before_gc": raw["threads"],
                      "rss_kib_after_trim": trimmed_rss() if self.collect else None}
            with self.lock:
                self.samples.append(sample)


def churn(model: ferrolm.Model, job: Job) -> Dict[str, Any]:
    """A per-call adapter loaded under a new name on a shared model, used once, removed."""
    name = f"{job.adapter}-{job.id}"
    model.load_lora(ADAPTERS / LORAS[job.checkpoint][job.adapter], name=name, merged=False)
    got = run_job(model, Job(**{**job.__dict__, "kind": "generate", "adapter": name}))
    model.remove_adapter(name)
    return got


def worker(soak: Soak, index: int, items: List[Any], warmup: int, barrier: threading.Barrier) -> None:
    own_key = private_slot(index)
    try:
        own = load_model(*own_key, soak.kernel_threads, merged=True)
    except Exception as e:  # noqa: BLE001
        with soak.lock:
            soak.errors.append(f"loading the thread's own model: {type(e).__name__}: {e}")
        items.clear()
    n_jobs = 0
    for phase_end in (warmup, None):
        while items and (phase_end is None or n_jobs < phase_end):
            item = items.pop(0)
            try:
                if isinstance(item, Event):
                    if item.kind == "shared":
                        soak.reload_shared(item.checkpoint, item.precision)
                    elif item.kind == "private":
                        own = load_model(*own_key, soak.kernel_threads, merged=True)  # the old one is dropped
                    else:  # readapt: drop one merged adapter and load it again
                        name = random.Random(len(items)).choice(list(LORAS[own_key[0]]))
                        own.remove_adapter(name)
                        own.load_lora(ADAPTERS / LORAS[own_key[0]][name], name=name)
                    soak.count(f"event:{item.kind}")
                    continue
                n_jobs += 1
                job = item
                if job.kind == "merged":
                    own.set_adapter(job.adapter)
                    soak.count("adapter_switches")
                    got = run_job(own, job)
                elif job.kind == "churn":
                    got = churn(soak.shared_model(job.checkpoint, job.precision), job)
                else:
                    got = run_job(soak.shared_model(job.checkpoint, job.precision), job)
                soak.count(job.kind)
                if job.soft_prompt:
                    soak.count("soft_prompt")
                if job.adapter is not None:
                    soak.count("with_adapter")
                soak.record(job, got)
            except Exception as e:  # noqa: BLE001 — every failure is reported
                with soak.lock:
                    soak.errors.append(f"{type(e).__name__}: {e} ({item!r})")
        barrier.wait()  # the main thread measures here
        barrier.wait()


def run(args: argparse.Namespace) -> Dict[str, Any]:
    started = time.perf_counter()
    lists = make_jobs(args.generations, args.threads, args.seed, args.reload_every, args.kinds, args.events,
                      args.token_prompts)
    jobs = [j for items in lists for j in items if isinstance(j, Job)]
    t = time.perf_counter()
    twins = compute_twins(jobs, args.kernel_threads)
    twin_seconds = time.perf_counter() - t
    gc.collect()

    soak = Soak(args.kernel_threads, args.sample_every, not args.no_gc, twins)
    for ckpt in CHECKPOINTS:
        for precision in PRECISIONS:
            soak.reload_shared(ckpt, precision)
    barrier = threading.Barrier(args.threads + 1)
    warmups = [max(1, len([j for j in items if isinstance(j, Job)]) // 10) for items in lists]
    threads = [threading.Thread(target=worker, args=(soak, i, items, warmups[i], barrier), name=f"soak-{i}")
               for i, items in enumerate(lists)]
    soak.t0 = time.perf_counter()
    for th in threads:
        th.start()
    barrier.wait()  # warm-up done: every worker idle
    gc.collect()
    before = {**process_counts(), "generations": soak.done, "thread_names": thread_names()}
    t_main = time.perf_counter()
    barrier.wait()
    barrier.wait()  # all jobs done: every worker idle
    main_seconds = time.perf_counter() - t_main
    after_raw = {**process_counts(), "generations": soak.done}
    gc.collect()
    after = {**process_counts(), "generations": soak.done, "thread_names": thread_names()}
    barrier.wait()
    for th in threads:
        th.join()
    total_seconds = time.perf_counter() - started

    # verdict
    n = soak.done
    rss = [(s["generations"], s["rss_kib"]) for s in soak.samples]
    mid = [r for g, r in rss if 0.45 * n < g <= 0.55 * n]
    late = [r for g, r in rss if g > 0.5 * n]
    growth_mib = (max(late) - statistics.median(mid)) / 1024 if mid and late else None
    second = [(g, r) for g, r in rss if g > 0.5 * n]
    slope = None
    if len(second) >= 3:
        gx = [g for g, _ in second]
        ry = [r for _, r in second]
        mx, my = statistics.fmean(gx), statistics.fmean(ry)
        slope = sum((x - mx) * (y - my) for x, y in zip(gx, ry)) / sum((x - mx) ** 2 for x in gx) * 1000 / 1024
    checks = {
        "all_generations_ran": n == len(jobs),
        "results_equal_twins": soak.mismatches == 0,
        "no_errors": not soak.errors,
        "rss_flat": growth_mib is not None and growth_mib <= args.rss_limit_mib,
        "no_fd_leak": after["fds"] <= before["fds"],
        "no_thread_leak": after["threads"] <= before["threads"],
        "no_map_leak": after["file_maps"] <= before["file_maps"] and after["maps"] <= before["maps"] + args.maps_slack,
    }
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "config": {k: v for k, v in vars(args).items() if k != "report"},
        "ferrolm_simd": ferrolm._core.simd_level(),
        "generations": n,
        "jobs_by_kind": {k: soak.counts.get(k, 0) for k in KINDS},
        "counts": dict(sorted(soak.counts.items())),
        "seconds": {"twins": round(twin_seconds, 2), "soak_total": round(time.perf_counter() - soak.t0, 2),
                    "main_phase": round(main_seconds, 2), "all": round(total_seconds, 2)},
        "before": before,
        "after_without_gc": after_raw,
        "after": after,
        "rss_growth_second_half_mib": None if growth_mib is None else round(growth_mib, 2),
        "peak_before_gc": {k: max((smp[f"{k}_before_gc"] for smp in soak.samples), default=None)
                           for k in ("rss_kib", "threads")},
        "rss_slope_second_half_mib_per_1000": None if slope is None else round(slope, 3),
        "rss_samples": soak.samples,
        "mismatches": soak.mismatches,
        "mismatch_examples": soak.mismatch_examples,
        "errors": soak.errors[:50],
        "error_count": len(soak.errors),
        "checks": checks,
        "passed": all(checks.values()),
    }


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generations", type=int, default=10000, help="generations in all (warm-up included)")
    ap.add_argument("--threads", type=int, default=4, help="Python threads generating at once")
    ap.add_argument("--kernel-threads", type=int, default=2, help="each model's kernel threads")
    ap.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    ap.add_argument("--seed", type=int, default=0, help="seed of the job list")
    ap.add_argument("--reload-every", type=int, default=40, help="jobs of a thread between two of its events")
    ap.add_argument("--sample-every", type=int, default=250, help="generations between two memory samples")
    ap.add_argument("--rss-limit-mib", type=float, default=8.0)
    ap.add_argument("--maps-slack", type=int, default=40,
                    help="anonymous maps the run may add: glibc keeps up to 40 MiB of exited threads' stacks "
                         "mapped for reuse, i.e. 20 of the kernel pools' 2 MiB stacks with their guard pages")
    ap.add_argument("--no-gc", action="store_true",
                    help="do not run gc.collect() at each sample (dropped models then wait for Python's own "
                         "collections; see docs/soak.md)")
    ap.add_argument("--kinds", type=lambda v: tuple(x for x in v.split(",") if x), default=tuple(KINDS),
                    help=f"job kinds to run (to narrow down a failure; default: all of {','.join(KINDS)})")
    ap.add_argument("--events", type=lambda v: tuple(x for x in v.split(",") if x), default=("shared", "private", "readapt"),
                    help="events between jobs: shared (reload a shared model), private (reload a thread's own "
                         "model), readapt (drop and load one of its merged adapters); '' for none")
    ap.add_argument("--token-prompts", action="store_true",
                    help="prompts as token ids only, no chat jobs: nothing is encoded (see docs/soak.md)")
    args = ap.parse_args(argv)
    if args.token_prompts:
        args.kinds = tuple(k for k in args.kinds if k != "chat")
    if not args.kinds or set(args.kinds) - set(KINDS) or set(args.events) - {"shared", "private", "readapt"}:
        ap.error("unknown --kinds or --events")
    if args.generations < args.threads or args.threads < 1:
        ap.error("--generations must be >= --threads >= 1")
    report = run(args)
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    b, a = report["before"], report["after"]
    print(f"{report['generations']} generations on {args.threads} threads in {report['seconds']['soak_total']} s "
          f"(twins {report['seconds']['twins']} s); mismatches {report['mismatches']}, errors {report['error_count']}")
    print(f"RSS {b['rss_kib'] / 1024:.1f} -> {a['rss_kib'] / 1024:.1f} MiB (second-half growth "
          f"{report['rss_growth_second_half_mib']} MiB); fds {b['fds']} -> {a['fds']}; maps {b['maps']} -> {a['maps']} "
          f"(file-backed {b['file_maps']} -> {a['file_maps']}); threads {b['threads']} -> {a['threads']}")
    failed = [k for k, ok in report["checks"].items() if not ok]
    print("PASS" if not failed else f"FAIL: {', '.join(failed)}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
