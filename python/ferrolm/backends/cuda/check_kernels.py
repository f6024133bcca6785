"""Compile check of the CUDA kernels, without a GPU or a driver.

    python -m ferrolm.backends.cuda.check_kernels [--arch sm_80 --arch sm_90] [--kernel-dir DIR]

Compiles the kernels' translation unit (``sources.kernel_source``) with NVRTC to a cubin for each
architecture, with the options cupy uses at run time plus ``-Xptxas=-v``, parses ptxas's verbose
report into a table (registers, shared memory, spill stores/loads, stack frame per kernel and
architecture), prints it, and exits with status 1 on any compile error, any warning in the log
(compiler or ptxas), any register spill, or any exported kernel missing from the report; 2 when
NVRTC itself is missing.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ...errors import DeviceError
from . import nvrtc
from .sources import (
    CUPY_ADDED_OPTIONS,
    TRANSLATION_UNIT,
    exported_kernels,
    kernel_dir,
    kernel_files,
    kernel_source,
    module_options,
)

__all__ = [
    "ARCHS",
    "ArchReport",
    "FunctionReport",
    "check",
    "check_options",
    "find_warnings",
    "format_table",
    "main",
    "parse_ptxas_report",
    "problems",
]

ARCHS = ("sm_80", "sm_90")
VERBOSE_PTXAS = "-Xptxas=-v"


@dataclass
class FunctionReport:
    """ptxas's figures for one function (``entry`` for a kernel, else a non-inlined device
    function) on one architecture."""

    name: str
    arch: str
    entry: bool = False
    registers: Optional[int] = None
    barriers: Optional[int] = None
    smem: int = 0  # static shared memory, bytes
    cmem: int = 0  # constant bank 0 (parameters), bytes; sm_90's report leaves it out
    stack: int = 0  # stack frame, bytes
    spill_stores: int = 0  # bytes
    spill_loads: int = 0  # bytes

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


@dataclass
class ArchReport:
    """One architecture's compile: the kernels' figures, the warnings found in the log, the time."""

    arch: str
    functions: Dict[str, FunctionReport]
    warnings: List[str]
    log: str
    seconds: float
    cubin_bytes: int
    expected: List[str] = field(default_factory=list)

    @property
    def kernels(self) -> Dict[str, FunctionReport]:
        return {n: f for n, f in self.functions.items() if f.entry}


_ENTRY = re.compile(r"^ptxas info\s*: Compiling entry function '([^']+)' for '(\w+)'")
_PROPS = re.compile(r"^ptxas info\s*: Function properties for (\S+)")
_FRAME = re.compile(r"^ptxas\s+\.\s+(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"^ptxas info\s*: Used (\d+) registers")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")
_CMEM = re.compile(r"(\d+) bytes cmem\[0\]")
# A diagnostic: the front end's `file(line): warning #177-D: ...`, `file(line): error: ...` (the
# lines indented below it echo the source), ptxas's `ptxas warning : ...`, `ptxas fatal : ...`,
# `ptxas application ptx input, line 123; warning : ...`, NVRTC's own `nvrtc: error: ...`.
_DIAG = re.compile(
    r"^(?:.+\(\d+\):\s*(?:catastrophic error|fatal error|error|warning)\b"
    r"|(?:ptxas|nvrtc|nvlink)\b[^:]*?:?\s*(?:error|warning|fatal)\s*:)",
    re.I,
)
_BENIGN = (
    re.compile(r"^ptxas info\s*:"),
    re.compile(r"^ptxas\s+\."),
    re.compile(r"^Remark: The warnings can be suppressed"),
    re.compile(r"^\d+ errors? detected in the compilation"),
)


def parse_ptxas_report(log: str, arch: str = "") -> Dict[str, FunctionReport]:
    """The functions of ptxas's ``-v`` report in ``log``, by name (entry functions marked)."""
    out: Dict[str, FunctionReport] = {}
    entry: Optional[str] = None
    current: Optional[FunctionReport] = None
    for line in log.splitlines():
        line = line.rstrip()
        m = _ENTRY.match(line)
        if m:
            entry = m.group(1)
            rep = out.setdefault(entry, FunctionReport(entry, m.group(2) or arch))
            rep.entry, rep.arch = True, m.group(2) or arch
            current = rep
            continue
        m = _PROPS.match(line)
        if m:
            name = m.group(1)
            current = out.setdefault(name, FunctionReport(name, arch))
            if name == entry:
                current.entry = True
            continue
        m = _FRAME.match(line)
        if m and current is not None:
            current.stack, current.spill_stores, current.spill_loads = (int(g) for g in m.groups())
            continue
        m = _USED.match(line)
        if m and entry is not None:
            rep = out[entry]
            rep.registers = int(m.group(1))
            for rx, attr in ((_BARRIERS, "barriers"), (_SMEM, "smem"), (_CMEM, "cmem")):
                mm = rx.search(line)
                if mm:
                    setattr(rep, attr, int(mm.group(1)))
    return out


def find_warnings(log: str) -> List[str]:
    """Every diagnostic of ``log`` that is not ptxas's verbose report: compiler and ptxas
    warnings (and errors), with the source lines they echo, plus any line this parser does not
    recognise (reported rather than ignored)."""
    found: List[str] = []
    lines = log.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip() or any(rx.match(line) for rx in _BENIGN):
            i += 1
            continue
        if _DIAG.match(line):
            block = [line]
            i += 1
            while i < len(lines) and lines[i].startswith((" ", "\t")) and lines[i].strip():
                block.append(lines[i].rstrip())
                i += 1
            found.append("\n".join(block))
            continue
        found.append(f"unrecognised log line: {line}")
        i += 1
    return found


def check_options(directory: Optional[Path] = None, extra: Sequence[str] = ()) -> List[str]:
    """The NVRTC options of the check (the arch flag is added per architecture): what the backend
    gives cupy.RawModule, what cupy adds, ptxas's verbose report, then ``extra``."""
    return [*module_options(directory), *CUPY_ADDED_OPTIONS, VERBOSE_PTXAS, *extra]


def _compile_one(source: str, arch: str, options: Sequence[str], expected: List[str]) -> ArchReport:
    t0 = time.perf_counter()
    res = nvrtc.compile_cubin(source, TRANSLATION_UNIT, arch, options)
    seconds = time.perf_counter() - t0
    return ArchReport(
        arch=arch,
        functions=parse_ptxas_report(res.log, arch),
        warnings=find_warnings(res.log),
        log=res.log,
        seconds=seconds,
        cubin_bytes=len(res.cubin),
        expected=list(expected),
    )


def check(
    archs: Sequence[str] = ARCHS,
    *,
    source: Optional[str] = None,
    directory: Optional[Path] = None,
    extra_options: Sequence[str] = (),
    jobs: int = 2,
) -> List[ArchReport]:
    """Compile the kernels (``source``, default the translation unit of ``directory``, default the
    packaged kernels) for each of ``archs``. Raises DeviceError on a compile error (the message
    names the file and line) or when NVRTC is missing; warnings and spills are in the reports
    (see :func:`problems`)."""
    if source is None:
        if not kernel_files(directory):
            raise DeviceError(f"no CUDA kernels (*.cu) in {directory or 'the ferrolm/cuda folder'}")
        source = kernel_source(directory)
    options = check_options(directory, extra_options)
    expected = exported_kernels(source)
    if jobs > 1 and len(archs) > 1:
        # ctypes releases the GIL around nvrtcCompileProgram; NVRTC compiles programs in parallel
        with ThreadPoolExecutor(max_workers=min(jobs, len(archs))) as pool:
            return list(pool.map(lambda a: _compile_one(source, a, options, expected), archs))
    return [_compile_one(source, a, options, expected) for a in archs]


def problems(reports: Sequence[ArchReport]) -> List[str]:
    """What fails the check: warnings, spills, and exported kernels missing from a report."""
    out: List[str] = []
    for r in reports:
        for w in r.warnings:
            out.append(f"{r.arch}: {w}")
        for f in r.functions.values():
            if f.spills:
                out.append(f"{r.arch}: {f.name} spills ({f.spill_stores} bytes stored, {f.spill_loads} bytes loaded)")
        for name in r.expected:
            if name not in r.kernels:
                out.append(f"{r.arch}: exported kernel {name} is missing from ptxas's report")
    return out


def format_table(reports: Sequence[ArchReport]) -> str:
    """One row per kernel (and non-inlined device function) and architecture."""
    header = ("kernel", "arch", "regs", "smem B", "stack B", "spill st B", "spill ld B", "barriers")
    rows = []
    for r in reports:
        for f in sorted(r.functions.values(), key=lambda f: (not f.entry, f.name)):
            rows.append((
                f.name if f.entry else f"{f.name} (device function)",
                r.arch,
                "-" if f.registers is None else str(f.registers),
                str(f.smem),
                str(f.stack),
                str(f.spill_stores),
                str(f.spill_loads),
                "-" if f.barriers is None else str(f.barriers),
            ))
    rows.sort(key=lambda row: (row[0], row[1]))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]

    def fmt(row):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ferrolm.backends.cuda.check_kernels",
        description="Compile the CUDA kernels with NVRTC (no GPU needed) and report registers, shared "
                    "memory and spills; fail on errors, warnings or spills.",
    )
    ap.add_argument("--arch", action="append", help="target architecture (repeatable; default sm_80 and sm_90)")
    ap.add_argument("--kernel-dir", type=Path, default=None, help="kernel folder (default: the packaged ferrolm/cuda)")
    ap.add_argument("--option", action="append", default=[], metavar="OPT",
                    help="an extra NVRTC option (repeatable), e.g. --option=-maxrregcount=64")
    ap.add_argument("--log", action="store_true", help="print NVRTC's full log for each architecture")
    args = ap.parse_args(argv)
    archs = args.arch or list(ARCHS)

    if not nvrtc.nvrtc_available():
        print("check_kernels: NVRTC not found; install nvidia-cuda-nvrtc-cu12 and nvidia-cuda-runtime-cu12",
              file=sys.stderr)
        return 2
    if nvrtc.cuda_include_dir() is None:
        print("check_kernels: warning: cuda_bf16.h not found (install nvidia-cuda-runtime-cu12)", file=sys.stderr)
    major, minor = nvrtc.nvrtc_version()
    files = kernel_files(args.kernel_dir)
    folder = args.kernel_dir or kernel_dir()
    print(f"NVRTC {major}.{minor} ({nvrtc.nvrtc_path()})")
    print(f"kernels: {', '.join(f.name for f in files) or '(none)'} in {folder}")
    print("options: " + " ".join(check_options(args.kernel_dir, args.option)) + " -arch=<arch>")
    t0 = time.perf_counter()
    try:
        reports = check(archs, directory=args.kernel_dir, extra_options=args.option)
    except DeviceError as e:
        print(f"check_kernels: FAILED\n{e}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    if args.log:
        for r in reports:
            print(f"--- NVRTC log, {r.arch}\n{r.log.rstrip()}")
    print()
    print(format_table(reports))
    print("smem: static shared memory per block (dynamic shared memory is set at launch); stack: the local-memory\n"
          "frame (local arrays, math library slow paths), spills included; cmem: the parameters, not shown")
    print()
    for r in reports:
        print(f"{r.arch}: {len(r.kernels)} kernels, cubin {r.cubin_bytes} bytes, compiled in {r.seconds:.2f} s")
    print(f"compile time: {wall:.2f} s wall for {len(reports)} architectures")
    bad = problems(reports)
    if bad:
        print(f"\ncheck_kernels: FAILED ({len(bad)} problems)", file=sys.stderr)
        for p in bad:
            print(p, file=sys.stderr)
        return 1
    print("check_kernels: OK (no errors, warnings or spills)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
