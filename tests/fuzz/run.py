#!/usr/bin/env python3
"""Runs fuzz cases against ferrolm's public API in crash-isolated worker processes.

    python tests/fuzz/run.py --cases 100000 --seed 1 --report fuzz-report.json
    python tests/fuzz/run.py --surfaces gguf,lora --cases 2000 --seed 7 --jobs 2
    python tests/fuzz/run.py --replay fuzz-report.journal/journal-0.jsonl --entry 123
    python tests/fuzz/run.py --replay fuzz-report.json --entry 0      # the first finding

Each worker is forked from this process (which imported everything once), limited by
RLIMIT_AS, and runs one chunk of one surface, journaling every case before running it. A worker
that dies (abort, signal) is a crash of the case it was running; one that runs a case longer than
--timeout is a hang (its Python stack is dumped, then it is killed). Either way the chunk goes on
in a new worker from the next case. See docs/fuzzing.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import select
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

for _var, _value in (("OPENBLAS_NUM_THREADS", "1"), ("OMP_NUM_THREADS", "1"), ("RAYON_NUM_THREADS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_var, _value)

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, so that `fuzz` imports

from fuzz.engine import CHUNK, Worker, limit_memory  # noqa: E402
from fuzz.surfaces import ALL_SURFACES, SECRET_ENV, SURFACES  # noqa: E402

DEFAULT_TIMEOUT = 5.0
DEFAULT_MEMORY_MB = 4096


@dataclass
class Task:
    surface: str
    chunk: int
    start: int
    end: int
    failures: int = 0
    entries: Optional[List[Dict[str, Any]]] = None  # replayed journal entries instead of generated cases


@dataclass
class Child:
    pid: int
    fd: int
    task: Task
    slot: int
    journal: Path
    stderr: Path
    buf: bytes = b""
    open_case: Optional[Tuple[int, int, int, float]] = None  # index, journal offset, stderr offset, start
    last_pos: int = -1  # position in the chunk of the last finished case
    done: bool = False
    restart: bool = False  # the worker stopped after a MemoryError: continue in a fresh one
    hung: bool = False


@dataclass
class Stats:
    cases: int = 0
    ok: int = 0
    refused: collections.Counter = field(default_factory=collections.Counter)
    findings: int = 0
    crashes: int = 0
    hangs: int = 0
    harness_errors: int = 0
    ms: float = 0.0

    def as_dict(self) -> Dict[str, Any]:
        return {"cases": self.cases, "ok": self.ok, "refused": dict(sorted(self.refused.items())), "findings": self.findings,
                "crashes": self.crashes, "hangs": self.hangs, "harness_errors": self.harness_errors,
                "mean_ms": round(self.ms / self.cases, 2) if self.cases else 0.0}


def _normalize(text: str) -> str:
    text = re.sub(r"0x[0-9a-fA-F]+", "0xN", text)
    text = re.sub(r"\d+", "N", text)
    return text.strip()[:100]


def _frame_of(stderr: str) -> str:
    """The innermost interesting Python frame of a faulthandler dump."""
    lines = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', stderr)
    for pat in ("ferrolm/", "jinja2/", "tokenizers/", "gguf/"):
        for f, n, fn in lines:
            if pat in f:
                return f"{f[f.rindex(pat):]}:{n} {fn}"
    return f"{lines[0][0].rsplit('/', 1)[-1]}:{lines[0][1]} {lines[0][2]}" if lines else "?"


def _rust_frame(stderr: str) -> str:
    """The innermost ferrolm function of a Rust backtrace (RUST_BACKTRACE=1), if any."""
    m = re.search(r"^\s*\d+: (ferrolm::\S+)", stderr, re.M)
    return re.sub(r"::h[0-9a-f]{16}$", "", m.group(1)) if m else ""


def _head_tail(text: str, head: int = 4000, tail: int = 2500) -> str:
    return text if len(text) <= head + tail else text[:head] + "\n[...]\n" + text[-tail:]


def _native_message(stderr: str) -> str:
    for line in stderr.splitlines():
        if any(k in line for k in ("memory allocation of", "panicked at", "fatal runtime error", "Fatal Python error", "thread '", "capacity overflow")):
            return _normalize(line)
    return ""


class Campaign:
    def __init__(self, args: argparse.Namespace, plan: Dict[str, int], entries: Optional[List[Dict[str, Any]]] = None) -> None:
        self.args = args
        self.plan = plan
        self.stats = {s: Stats() for s in plan}
        self.findings: Dict[tuple, Dict[str, Any]] = {}
        self.harness: Dict[tuple, Dict[str, Any]] = {}
        self.pending: collections.deque = collections.deque()
        if entries is not None:
            for i in range(0, len(entries), CHUNK):
                part = entries[i : i + CHUNK]
                self.pending.append(Task("", 0, 0, len(part), entries=part))
        else:
            for s, n in plan.items():
                for c in range((n + CHUNK - 1) // CHUNK):
                    self.pending.append(Task(s, c, 0, min(CHUNK, n - c * CHUNK)))
        self.children: Dict[int, Child] = {}
        self.journal_dir = Path(args.journal_dir)
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="ferrolm-fuzz-"))
        self.secret = os.urandom(12).hex()
        self.started = time.time()
        self.spawned = 0
        self.outcomes: Dict[int, Dict[str, Any]] = {}  # replayed entries: position -> outcome

    # -- workers --------------------------------------------------------------------------------
    def spawn(self, task: Task, slot: int) -> None:
        r, w = os.pipe()
        self.spawned += 1
        stderr = self.scratch / f"stderr-{self.spawned}.log"
        journal = self.journal_dir / f"journal-{slot}.jsonl"
        def work() -> None:
            os.close(r)
            for other in self.children.values():
                os.close(other.fd)
            _become_worker(stderr, self.secret, self.args.memory_mb)
            scratch = self.scratch / f"w{slot}"
            scratch.mkdir(exist_ok=True)
            worker = Worker(w, journal, scratch)
            if task.entries is not None:
                worker.run_entries(task.entries, task.start, task.end)
            else:
                worker.run_chunk(task.surface, self.args.seed, task.chunk, task.start, task.end, self.scratch)

        pid = _fork(work)
        os.close(w)
        self.children[pid] = Child(pid, r, task, slot, journal, stderr, last_pos=task.start - 1)

    def run(self) -> None:
        try:
            while self.pending or self.children:
                if self.args.max_seconds and time.time() - self.started > self.args.max_seconds:
                    self.pending.clear()
                free = sorted(set(range(self.args.jobs)) - {c.slot for c in self.children.values()})
                while self.pending and free:
                    self.spawn(self.pending.popleft(), free.pop(0))
                self.poll()
        except KeyboardInterrupt:
            for c in list(self.children.values()):
                os.kill(c.pid, signal.SIGKILL)
                os.waitpid(c.pid, 0)
            self.children.clear()
            print("interrupted: the report covers the cases run so far", file=sys.stderr)

    def poll(self) -> None:
        now = time.monotonic()
        waits = [c.open_case[3] + self.args.timeout - now for c in self.children.values() if c.open_case and not c.hung]
        timeout = max(0.0, min(waits + [1.0]))
        fds = {c.fd: c for c in self.children.values()}
        ready, _, _ = select.select(list(fds), [], [], timeout)
        for fd in ready:
            c = fds[fd]
            data = os.read(fd, 1 << 16)
            if not data:
                self.reap(c)
                continue
            c.buf += data
            *lines, c.buf = c.buf.split(b"\n")
            for line in lines:
                self.message(c, line.decode())
        now = time.monotonic()
        for c in list(self.children.values()):
            if c.open_case and not c.hung and now - c.open_case[3] > self.args.timeout:
                c.hung = True
                try:
                    os.kill(c.pid, signal.SIGUSR1)  # faulthandler: dump every thread's stack
                    time.sleep(0.5)
                    os.kill(c.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def message(self, c: Child, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "S":
            index, joff, eoff = (int(x) for x in rest.split())
            c.open_case = (index, joff, eoff, time.monotonic())
        elif kind == "E":
            result = json.loads(rest)
            entry = self.entry(c.journal, c.open_case[1]) if c.open_case and result["outcome"] in ("finding", "harness-error") else None
            c.open_case = None
            c.last_pos = result["index"] - c.task.chunk * CHUNK
            self.record(self.surface_of(c.task, result["index"]), result, entry)
        elif kind == "D":
            c.done = True
        elif kind == "R":
            c.restart = True

    @staticmethod
    def surface_of(task: Task, index: int) -> str:
        return task.entries[index]["surface"] if task.entries is not None else task.surface

    def reap(self, c: Child) -> None:
        os.close(c.fd)
        _, status = os.waitpid(c.pid, 0)
        del self.children[c.pid]
        task = c.task
        if c.open_case is not None:
            index, joff, eoff, _ = c.open_case
            stderr = _read_from(c.stderr, eoff)
            entry = self.entry(c.journal, joff)
            surface = self.surface_of(task, index)
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            if c.hung and killed:  # (a worker that died on its own after the timeout crashed)
                self.record(surface, {"outcome": "hang", "how": f"no answer in {self.args.timeout} s", "index": index, "stderr": _head_tail(stderr), "where": _frame_of(stderr)}, entry)
            else:
                how = f"signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
                where = " via ".join(x for x in (_rust_frame(stderr), _frame_of(stderr)) if x)
                self.record(surface, {"outcome": "crash", "index": index, "how": how, "stderr": _head_tail(stderr),
                                           "native": _native_message(stderr), "where": where}, entry)
            next_pos = index - task.chunk * CHUNK + 1
            if next_pos < task.end:
                self.pending.appendleft(Task(task.surface, task.chunk, next_pos, task.end, entries=task.entries))
        elif c.restart or c.hung:  # (hung: the case answered just as the timeout killed the worker)
            if c.last_pos + 1 < task.end:
                self.pending.appendleft(Task(task.surface, task.chunk, c.last_pos + 1, task.end, task.failures, task.entries))
        elif not c.done:
            # died between cases (while generating one): retry from the next position, twice at most
            stderr = _read_from(c.stderr, 0)
            self.record(self.surface_of(task, max(c.last_pos, 0)), {"outcome": "harness-error", "type": "WorkerDied", "message": _normalize(stderr[-300:]),
                                       "where": "worker", "traceback": stderr[-4000:], "index": -1}, None, count_case=False)
            if task.failures < 2:
                self.pending.appendleft(Task(task.surface, task.chunk, c.last_pos + 1, task.end, task.failures + 1, task.entries))
        c.stderr.unlink(missing_ok=True)

    @staticmethod
    def entry(journal: Path, offset: int) -> Optional[Dict[str, Any]]:
        try:
            with open(journal, "rb") as f:
                f.seek(offset)
                return json.loads(f.readline())
        except (OSError, ValueError):
            return None

    # -- results ------------------------------------------------------------------------------
    def record(self, surface: str, r: Dict[str, Any], entry: Optional[Dict[str, Any]], count_case: bool = True) -> None:
        s = self.stats.setdefault(surface, Stats())
        if self.args.replay_all and count_case:
            self.outcomes[r["index"]] = {k: r.get(k) for k in ("outcome", "error", "kind", "type", "how", "message", "where") if r.get(k)}
        if count_case:
            s.cases += 1
            s.ms += r.get("ms", 0.0)
        outcome = r["outcome"]
        if outcome == "ok":
            s.ok += 1
            return
        if outcome == "error":
            s.refused[r["error"]] += 1
            return
        if outcome == "harness-error":
            s.harness_errors += 1
            key = (surface, r.get("type"), r.get("where"))
            target = self.harness
        else:
            if outcome == "crash":
                s.crashes += 1
                key = (surface, "crash", r["how"], r["native"], r["where"])
            elif outcome == "hang":
                s.hangs += 1
                key = (surface, "hang", r["where"])
            else:
                s.findings += 1
                if r["kind"] == "accepted-invalid":
                    m = re.search(r"^(.*?): (?:adapter_config\.json )?([\w.]+)=", r["message"])
                    key = (surface, r["kind"], m.group(1) + " " + m.group(2) if m else _normalize(r["message"]))
                elif r["kind"] == "exception":
                    # the ferrolm frame it escaped from, and the frame that raised it (a template's
                    # TypeErrors and jinja's own both escape through ChatTemplate.render)
                    key = (surface, "exception", r["type"], r["where"], r.get("raised_at"))
                else:
                    key = (surface, r["kind"], _normalize(r["message"])[:60])
            target = self.findings
        f = target.get(key)
        if f is None:
            f = target[key] = {"surface": surface, "kind": r.get("kind", outcome) if outcome == "finding" else outcome,
                               "type": r.get("type") or r.get("how"), "message": r.get("message") or r.get("native") or "",
                               "where": r.get("where"), "raised_at": r.get("raised_at"), "count": 0, "traceback": r.get("traceback") or r.get("stderr", ""),
                               "reproducers": []}
        f["count"] += 1
        if entry is not None and len(f["reproducers"]) < self.args.reproducers:
            f["reproducers"].append(entry)

    def annotate_crashes(self) -> None:
        """Replays the kept reproducers of each distinct crash with RUST_BACKTRACE=1 and adds the
        innermost ferrolm functions and one backtrace to the finding."""
        for f in self.findings.values():
            if f["kind"] != "crash" or not f["reproducers"] or self.args.annotate <= 0:
                continue
            frames = []
            for entry in f["reproducers"][: self.args.annotate]:
                _, stderr = run_isolated(entry, self.args, backtrace=True)
                frame = _rust_frame(stderr)
                if frame and frame not in frames:
                    frames.append(frame)
                f.setdefault("backtrace", _head_tail(stderr))
            if frames:
                f["rust_functions"] = frames
                f["where"] = f"{' / '.join(frames)} via {f['where']}"

    def report(self) -> Dict[str, Any]:
        totals = Stats()
        for s in self.stats.values():
            totals.cases += s.cases
            totals.ok += s.ok
            totals.refused.update(s.refused)
            totals.findings += s.findings
            totals.crashes += s.crashes
            totals.hangs += s.hangs
            totals.harness_errors += s.harness_errors
            totals.ms += s.ms
        findings = sorted(self.findings.values(), key=lambda f: (f["surface"], f["kind"], -f["count"]))
        return {
            "replayed": str(self.args.replay_all) if self.args.replay_all else None,
            "seed": None if self.args.replay_all else self.args.seed,
            "cases_requested": self.plan,
            "timeout_s": self.args.timeout,
            "memory_mb": self.args.memory_mb,
            "jobs": self.args.jobs,
            "elapsed_s": round(time.time() - self.started, 1),
            "totals": totals.as_dict(),
            "surfaces": {k: v.as_dict() for k, v in self.stats.items()},
            "distinct_findings": len(findings),
            "findings": findings,
            "harness_errors": sorted(self.harness.values(), key=lambda f: -f["count"]),
            "outcomes": [self.outcomes.get(i) for i in range(max(self.outcomes) + 1)] if self.outcomes else None,
            "journal_dir": str(self.journal_dir),
        }


def _become_worker(stderr: Path, secret: str, memory_mb: Optional[int], backtrace: bool = False) -> None:
    import faulthandler

    fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    os.environ[SECRET_ENV] = secret
    # Symbolizing a Rust backtrace takes seconds per crash: off while fuzzing; each distinct
    # crash is replayed once with it afterwards (annotate_crashes)
    os.environ["RUST_BACKTRACE"] = "1" if backtrace else "0"
    limit_memory(memory_mb)


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, offset))
            data = f.read()
            return (data[:30000] + b"\n[...]\n" + data[-10000:] if len(data) > 40000 else data).decode("utf-8", "replace")
    except OSError:
        return ""


def _warm_up() -> None:
    """Imports and fixture parsing done once here, before forking, so workers start at once."""
    import ferrolm  # noqa: F401
    import ferrolm.gguf  # noqa: F401
    import gguf  # noqa: F401
    import jinja2.sandbox  # noqa: F401
    import tokenizers  # noqa: F401

    for s in SURFACES.values():
        s.strategy()


def plan_cases(total: int, surfaces: List[str]) -> Dict[str, int]:
    per, extra = divmod(total, len(surfaces))
    return {s: per + (1 if i < extra else 0) for i, s in enumerate(surfaces)}


def format_summary(rep: Dict[str, Any]) -> str:
    what = f"replayed {rep['replayed']}" if rep.get("replayed") else f"seed {rep['seed']}"
    lines = [f"{what}, {rep['totals']['cases']} cases in {rep['elapsed_s']} s (timeout {rep['timeout_s']} s, "
             f"RLIMIT_AS {rep['memory_mb']} MiB, {rep['jobs']} job(s))", ""]
    lines.append(f"{'surface':<12} {'cases':>7} {'ok':>7} {'refused':>8} {'findings':>9} {'crashes':>8} {'hangs':>6} {'harness':>8} {'ms/case':>8}")
    for name, s in list(rep["surfaces"].items()) + [("total", rep["totals"])]:
        lines.append(f"{name:<12} {s['cases']:>7} {s['ok']:>7} {sum(s['refused'].values()):>8} {s['findings']:>9} {s['crashes']:>8} "
                     f"{s['hangs']:>6} {s['harness_errors']:>8} {s['mean_ms']:>8}")
    if rep["findings"]:
        lines += ["", f"{rep['distinct_findings']} distinct finding(s):"]
        for i, f in enumerate(rep["findings"]):
            first = f["reproducers"][0] if f["reproducers"] else None
            at = f" (case {first['surface']}#{first['index']})" if first else ""
            raised = f" (raised in {f['raised_at']})" if f.get("raised_at") and f["raised_at"] not in f["where"] else ""
            lines.append(f"  [{i}] {f['surface']}: {f['kind']} {f['type']} x{f['count']} at {f['where']}{raised}{at}")
            if f["message"]:
                lines.append(f"      {f['message'][:200]}")
    if rep["harness_errors"]:
        lines += ["", "harness errors (bugs of the fuzzer itself):"]
        for f in rep["harness_errors"]:
            lines.append(f"  {f['surface']}: {f['type']} x{f['count']} at {f['where']}: {f['message'][:200]}")
    return "\n".join(lines)


# -- replay --------------------------------------------------------------------------------------


def load_entry(path: Path, n: int) -> Dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except ValueError:
        return json.loads(text.splitlines()[n])  # a journal: one entry per line
    if isinstance(doc, dict) and "findings" in doc:
        return doc["findings"][n]["reproducers"][0]
    return doc


def load_entries(path: Path) -> List[Dict[str, Any]]:
    """Every case of a journal (.jsonl), a JSON list of entries, or every reproducer of a report."""
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(doc, dict) and "findings" in doc:
        return [e for f in doc["findings"] for e in f["reproducers"]]
    return doc if isinstance(doc, list) else [doc]


def _fork(work: Callable[[], None]) -> int:
    """Forks a worker: the child runs `work` and exits with 0, or with 70 after printing the
    traceback of what it raised to its (redirected) stderr; returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            work()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def run_isolated(entry: Dict[str, Any], args: argparse.Namespace, backtrace: bool = True) -> Tuple[str, str]:
    """Runs one entry in a forked worker; returns (what happened, its stderr)."""
    r, w = os.pipe()
    scratch = Path(tempfile.mkdtemp(prefix="ferrolm-fuzz-"))
    stderr = scratch / "stderr.log"
    def work() -> None:
        os.close(r)
        _become_worker(stderr, os.urandom(12).hex(), args.memory_mb, backtrace=backtrace)
        Worker(w, scratch / "journal.jsonl", scratch).run_entries([entry], 0, 1)

    pid = _fork(work)
    os.close(w)
    out, hung = b"", False
    deadline = time.monotonic() + args.timeout
    while True:
        ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            hung = True
            os.kill(pid, signal.SIGUSR1)
            time.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
            break
        data = os.read(r, 1 << 16)
        if not data:
            break
        out += data
    os.close(r)
    _, status = os.waitpid(pid, 0)
    results = [line[2:] for line in out.decode().splitlines() if line.startswith("E ")]
    if results:
        what = results[0]
    elif hung:
        what = "hang"
    else:
        what = f"crash: signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status) else f"crash: exit {os.WEXITSTATUS(status)}"
    text = _read_from(stderr, 0)
    shutil.rmtree(scratch, ignore_errors=True)
    return what, text


def replay(entry: Dict[str, Any], args: argparse.Namespace) -> int:
    print(f"replaying {entry['surface']} case {entry.get('index')} (seed {entry.get('seed')})")
    print(json.dumps(entry["case"])[:2000])
    if args.in_process:
        import tempfile as tf

        from fuzz.engine import execute
        from fuzz.surfaces import Context

        result = execute(entry["surface"], entry["case"], Context(Path(tf.mkdtemp(prefix="ferrolm-fuzz-"))))
        print(json.dumps({k: v for k, v in result.items() if k != "traceback"}, indent=1))
        if result.get("traceback"):
            print(result["traceback"])
        return 0 if result["outcome"] in ("ok", "error") else 1
    what, stderr = run_isolated(entry, args, backtrace=True)
    if what.startswith("{"):
        res = json.loads(what)
        print(json.dumps({k: v for k, v in res.items() if k != "traceback"}, indent=1))
        if res.get("traceback"):
            print(res["traceback"])
        return 0 if res["outcome"] in ("ok", "error") else 1
    print(what)
    print(_head_tail(stderr, 8000, 4000))
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=8000, help="total cases, split evenly over the surfaces (default 8000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--surfaces", default=",".join(SURFACES), help=f"comma-separated subset of: {', '.join(SURFACES)} (default: all)")
    p.add_argument("--report", default="fuzz-report.json", help="JSON report path (default fuzz-report.json)")
    p.add_argument("--journal-dir", default=None, help="where workers journal cases (default: REPORT without .json + .journal)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes at once (default 1)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help=f"seconds per case before it counts as a hang (default {DEFAULT_TIMEOUT})")
    p.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB, help=f"RLIMIT_AS of a worker in MiB; 0: none (default {DEFAULT_MEMORY_MB})")
    p.add_argument("--max-seconds", type=float, default=0, help="stop starting new chunks after this long (0: no limit)")
    p.add_argument("--reproducers", type=int, default=3, help="journal entries kept per distinct finding (default 3)")
    p.add_argument("--annotate", type=int, default=3, help="reproducers of each distinct crash replayed afterwards with a Rust "
                   "backtrace, to name the Rust function (default 3; 0: none)")
    p.add_argument("--replay", type=Path, help="replay one case: a journal (.jsonl), a single entry (.json) or a report")
    p.add_argument("--replay-all", type=Path, help="run every case of a journal, a list of entries or a report's reproducers, "
                   "isolated as in a campaign (e.g. to check fixes)")
    p.add_argument("--entry", type=int, default=0, help="with --replay: the journal line, or the finding number of a report")
    p.add_argument("--in-process", action="store_true", help="with --replay: run in this process (no isolation; for debugging)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    if args.replay:
        return replay(load_entry(args.replay, args.entry), args)

    surfaces = [s for s in args.surfaces.split(",") if s]
    unknown = [s for s in surfaces if s not in ALL_SURFACES]
    if unknown:
        p.error(f"unknown surface(s): {', '.join(unknown)}")
    if args.journal_dir is None:
        args.journal_dir = str(Path(args.report).with_suffix("")) + ".journal"
    _warm_up()
    if args.replay_all:
        entries = load_entries(args.replay_all)
        plan = dict(collections.Counter(e["surface"] for e in entries))
        campaign = Campaign(args, plan, entries)
    else:
        campaign = Campaign(args, plan_cases(args.cases, surfaces))
    campaign.run()
    campaign.annotate_crashes()
    rep = campaign.report()
    Path(args.report).write_text(json.dumps(rep, indent=1, default=str))
    if not args.quiet:
        print(format_summary(rep))
        print(f"\nreport: {args.report}; journal: {args.journal_dir}")
    bad = rep["totals"]["findings"] + rep["totals"]["crashes"] + rep["totals"]["hangs"] + rep["totals"]["harness_errors"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
