"""Tier 1 of the CUDA backend's tests: every kernel compiles with NVRTC for sm_80 and sm_90 with no
error, no warning and no register spill (no GPU or driver needed), and the check itself can fail:
syntax errors name the file and line, spills, warnings and kernels absent from ptxas's report are
caught."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ferrolm.backends.cuda import check_kernels as ck
from ferrolm.backends.cuda import nvrtc, sources
from ferrolm.errors import DeviceError

NO_NVRTC = "NVRTC not installed: pip install 'nvidia-cuda-nvrtc-cu12>=12,<13' 'nvidia-cuda-runtime-cu12>=12,<13' (CI installs both)"
needs_nvrtc = pytest.mark.skipif(not nvrtc.nvrtc_available() or nvrtc.cuda_include_dir() is None, reason=NO_NVRTC)

# a clean kernel: static shared memory, a barrier, a bf16 load (needs the runtime wheel's headers)
CLEAN = r"""
#include <cuda_bf16.h>
extern "C" __global__ void __launch_bounds__(256) reverse_scale(const __nv_bfloat16* x, float* y, int n) {
    __shared__ float s[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? __bfloat162float(x[i]) : 0.f;
    __syncthreads();
    if (i < n) y[i] = 2.f * s[255 - threadIdx.x];
}

extern "C"
__global__ void
fill(float* y, int n, float v) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = v;
}
"""

# 64 accumulators live across a loop, but __launch_bounds__(1024, 2) leaves 32 registers a thread
SPILLS = r"""
extern "C" __global__ void __launch_bounds__(1024, 2) hungry(const float* x, float* y, int n) {
    float acc[64];
#pragma unroll
    for (int j = 0; j < 64; ++j) acc[j] = x[j * n + threadIdx.x];
    for (int it = 0; it < n; ++it) {
#pragma unroll
        for (int j = 0; j < 64; ++j) acc[j] = acc[j] * acc[(j + 1) % 64] + x[it + j];
    }
#pragma unroll
    for (int j = 0; j < 64; ++j) y[j * n + threadIdx.x] = acc[j];
}
"""


def write(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


# -- the shipped kernels -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_reports():
    if not sources.kernel_files():
        pytest.fail(f"no CUDA kernels (*.cu) in {sources.kernel_dir()}: are they packaged?")
    return {r.arch: r for r in ck.check(ck.ARCHS)}


@needs_nvrtc
@pytest.mark.parametrize("arch", ck.ARCHS)
def test_shipped_kernels_compile_clean(shipped_reports, arch):
    r = shipped_reports[arch]
    table = ck.format_table([r])
    names = sources.exported_kernels(sources.kernel_source())
    assert names, "no extern \"C\" __global__ kernels found in the sources"
    missing = [n for n in names if n not in r.kernels]
    assert not missing, f"{arch}: exported kernels missing from ptxas's report: {missing}\n{r.log}"
    assert not r.warnings, f"{arch}: warnings in the NVRTC log:\n" + "\n".join(r.warnings)
    spilling = [f"{f.name}: {f.spill_stores}/{f.spill_loads} bytes" for f in r.functions.values() if f.spills]
    assert not spilling, f"{arch}: register spills: {spilling}\n{table}"
    assert all(r.kernels[n].registers for n in names), table
    assert not ck.problems([r])
    print(f"\n{table}\n{arch}: compiled in {r.seconds:.2f} s")


@needs_nvrtc
def test_emulator_test_kernels_are_valid_cuda():
    # the emulator's own test kernels (tests/cuda_kernels) compile as real CUDA too, with no
    # warning; spills are allowed there (faults.cu recurses on purpose, to overflow a stack)
    folder = Path(__file__).resolve().parent / "cuda_kernels"
    if not sources.kernel_files(folder):
        pytest.skip("no tests/cuda_kernels/*.cu")
    reports = ck.check(ck.ARCHS, directory=folder, extra_options=[f"-I{sources.kernel_dir()}"])
    assert [p for p in ck.problems(reports) if " spills (" not in p] == [], ck.format_table(reports)
    assert all(r.kernels for r in reports)


def test_exported_kernels_match_the_documented_abi():
    doc = Path(__file__).resolve().parents[1] / "docs" / "cuda.md"
    if not doc.is_file():
        pytest.skip("docs/cuda.md is not beside the tests")
    documented = set()
    for line in doc.read_text().splitlines():
        if line.startswith("| `"):  # a row of the kernel table: names in its first column
            documented |= set(re.findall(r"`(\w+)`", line.split("|")[1]))
    exported = set(sources.exported_kernels(sources.kernel_source()))
    assert exported - documented == set(), "kernels missing from docs/cuda.md's table"
    assert documented - exported == set(), "documented kernels missing from the sources"


def test_shipped_kernels_are_in_the_package():
    assert sources.kernel_dir().name == "cuda" and sources.kernel_dir().parent.name == "ferrolm"
    assert sources.kernel_files(), f"no *.cu in {sources.kernel_dir()}"
    assert (sources.kernel_dir() / "common.cuh").is_file()


# -- the translation unit ------------------------------------------------------------------------


def test_kernel_source_concatenates_in_name_order_with_line_directives(tmp_path):
    d = write(tmp_path, {"b.cu": "// b\n", "a.cu": "// a", "common.cuh": "// header\n", "notes.txt": "x"})
    assert [p.name for p in sources.kernel_files(d)] == ["a.cu", "b.cu"]
    assert sources.kernel_source(d) == '#line 1 "a.cu"\n// a\n#line 1 "b.cu"\n// b\n'


def test_module_options(tmp_path):
    opts = sources.module_options(tmp_path, include_dir=None)
    assert opts == ("-std=c++17", f"-I{tmp_path.resolve()}")
    assert sources.module_options(tmp_path, include_dir=tmp_path / "inc")[-1] == f"-I{(tmp_path / 'inc').resolve()}"
    assert sources.CUPY_ADDED_OPTIONS == ("-ftz=true", "--device-as-default-execution-space")


def test_exported_kernels_parses_declarations():
    src = """
    extern "C" __global__ void plain(int* x) {}
    extern "C" __global__ void __launch_bounds__(256, 2) bounded(int* x) {}
    extern "C" __global__ __launch_bounds__(128) void bounded_first (float*) {}
    extern "C"
    __global__
    void split_lines(int n) {}
    // extern "C" __global__ void commented(int* x) {}
    /* extern "C" __global__ void block_commented(int* x) {} */
    __global__ void not_exported(int* x) {}
    extern "C" __device__ float device_fn(float x) { return x; }
    extern "C" __global__ void plain(int* x);
    """
    assert sources.exported_kernels(src) == ["plain", "bounded", "bounded_first", "split_lines"]


# -- parsing ptxas's report ----------------------------------------------------------------------

SAMPLE_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'kern2' for 'sm_80'
ptxas info    : Function properties for kern2
ptxas         .     336 bytes stack frame, 448 bytes spill stores, 444 bytes spill loads
ptxas info    : Used 24 registers, used 0 barriers, 336 bytes cumulative stack size, 364 bytes cmem[0]
ptxas info    : Compile time = 16.803 ms
ptxas info    : Compiling entry function 'kern' for 'sm_80'
ptxas info    : Function properties for kern
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 1 barriers, 1024 bytes smem, 364 bytes cmem[0]
ptxas info    : Compile time = 1.414 ms
ptxas info    : Function properties for _Z6helperPKfi
ptxas         .     8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""


def test_parse_ptxas_report():
    fns = ck.parse_ptxas_report(SAMPLE_LOG, "sm_80")
    assert set(fns) == {"kern", "kern2", "_Z6helperPKfi"}
    k, k2, h = fns["kern"], fns["kern2"], fns["_Z6helperPKfi"]
    assert (k.entry, k.registers, k.barriers, k.smem, k.cmem, k.stack, k.spills) == (True, 10, 1, 1024, 364, 0, False)
    assert (k2.registers, k2.stack, k2.spill_stores, k2.spill_loads, k2.spills) == (24, 336, 448, 444, True)
    assert (h.entry, h.registers, h.stack) == (False, None, 8)
    assert ck.find_warnings(SAMPLE_LOG) == []


def test_find_warnings_classifies_every_line():
    log = (
        'a.cu(2): warning #177-D: variable "unused" was declared but never referenced\n'
        "    int unused;\n"
        "        ^\n"
        "\n"
        'Remark: The warnings can be suppressed with "-diag-suppress <warning-number>"\n'
        "\n"
        "ptxas warning : For profile sm_80 adjusting per thread register count of 16 to lower bound of 24\n"
        "ptxas info    : 0 bytes gmem\n"
        "ptxas application ptx input, line 12; warning : Program is doing double precision computations.\n"
        "ptxas fatal   : Unresolved extern function 'f'\n"
        "nvrtc: error: failed to open libnvrtc-builtins.so.12.9.\n"
        "something nobody expected\n"
    )
    w = ck.find_warnings(log)
    assert len(w) == 6
    assert w[0].startswith("a.cu(2): warning #177-D") and "int unused;" in w[0]
    assert w[1].startswith("ptxas warning")
    assert w[2].startswith("ptxas application ptx input, line 12; warning")
    assert w[3].startswith("ptxas fatal") and w[4].startswith("nvrtc: error")
    assert w[5] == "unrecognised log line: something nobody expected"


# -- the check fails when it should ----------------------------------------------------------------


@needs_nvrtc
def test_clean_kernels_pass_with_figures(tmp_path):
    d = write(tmp_path, {"k.cu": CLEAN})
    reports = ck.check(ck.ARCHS, directory=d)
    assert [r.arch for r in reports] == list(ck.ARCHS)
    for r in reports:
        assert set(r.kernels) == {"reverse_scale", "fill"}
        rs = r.kernels["reverse_scale"]
        assert rs.smem == 256 * 4 and rs.barriers == 1 and rs.registers > 0 and not rs.spills
        assert r.kernels["fill"].smem == 0
        assert r.warnings == [] and r.cubin_bytes > 0
    assert ck.problems(reports) == []


@needs_nvrtc
def test_syntax_error_raises_device_error_naming_file_and_line(tmp_path):
    d = write(tmp_path, {
        "a_ok.cu": 'extern "C" __global__ void ok(int* x) { x[0] = 1; }\n',
        "b_bad.cu": '// line 1\n\nextern "C" __global__ void bad(int* x) { x[0] = 1 }\n',
    })
    with pytest.raises(DeviceError) as ei:
        ck.check(("sm_80",), directory=d)
    msg = str(ei.value)
    assert "b_bad.cu(3): error" in msg, msg
    assert ck.main(["--kernel-dir", str(d), "--arch", "sm_80"]) == 1


@needs_nvrtc
def test_missing_header_is_an_error(tmp_path):
    d = write(tmp_path, {"k.cu": '#include "nope.cuh"\nextern "C" __global__ void k(int* x) {}\n'})
    with pytest.raises(DeviceError, match=r"k\.cu\(1\).*nope\.cuh"):
        ck.check(("sm_90",), directory=d)


@needs_nvrtc
def test_spill_is_reported(tmp_path, capsys):
    d = write(tmp_path, {"s.cu": SPILLS})
    reports = ck.check(ck.ARCHS, directory=d)
    for r in reports:
        h = r.kernels["hungry"]
        assert h.spills and h.spill_stores > 0 and h.registers <= 32, ck.format_table([r])
    assert any("hungry spills" in p for p in ck.problems(reports))
    assert ck.main(["--kernel-dir", str(d)]) == 1
    assert "hungry spills" in capsys.readouterr().err


@needs_nvrtc
def test_forced_register_cap_spills(tmp_path):
    # the same kernel as CLEAN's neighbour: -maxrregcount on a register-hungry kernel
    src = SPILLS.replace("__launch_bounds__(1024, 2) ", "")
    d = write(tmp_path, {"s.cu": src})
    (r,) = ck.check(("sm_80",), directory=d)
    assert not r.kernels["hungry"].spills, ck.format_table([r])
    (r,) = ck.check(("sm_80",), directory=d, extra_options=["-maxrregcount=32"])
    assert r.kernels["hungry"].spills, ck.format_table([r])


@needs_nvrtc
@pytest.mark.parametrize("snippet, expect", [
    ("#warning the kernel author left a note\n", "#warning directive"),
    ("", 'variable "unused" was declared but never referenced'),
])
def test_warning_is_reported(tmp_path, snippet, expect):
    body = "int unused;" if not snippet else ""
    d = write(tmp_path, {"w.cu": snippet + 'extern "C" __global__ void w(int* x) { %s x[0] = 1; }\n' % body})
    reports = ck.check(ck.ARCHS, directory=d)
    for r in reports:
        assert len(r.warnings) == 1 and expect in r.warnings[0] and r.warnings[0].startswith("w.cu("), r.warnings
        assert not r.kernels["w"].spills
    assert len(ck.problems(reports)) == 2
    assert ck.main(["--kernel-dir", str(d)]) == 1


@needs_nvrtc
def test_ptxas_warning_is_reported(tmp_path):
    d = write(tmp_path, {"d.cu": 'extern "C" __global__ void d(double* x) { x[0] = x[1] * x[2]; }\n'})
    (r,) = ck.check(("sm_80",), directory=d, extra_options=["-Xptxas=-warn-double-usage"])
    assert r.warnings and all(w.startswith("ptxas application ptx input") and "double precision" in w
                              for w in r.warnings), r.warnings
    (r,) = ck.check(("sm_80",), directory=d)
    assert r.warnings == []


@needs_nvrtc
def test_kernel_missing_from_report_is_reported(tmp_path):
    d = write(tmp_path, {"k.cu": '#if 0\nextern "C" __global__ void ghost(int* x) {}\n#endif\n'
                                 'extern "C" __global__ void real(int* x) { x[0] = 1; }\n'})
    (r,) = ck.check(("sm_80",), directory=d)
    assert set(r.kernels) == {"real"}
    assert ck.problems([r]) == ["sm_80: exported kernel ghost is missing from ptxas's report"]


@needs_nvrtc
def test_no_kernels_is_an_error(tmp_path):
    with pytest.raises(DeviceError, match="no CUDA kernels"):
        ck.check(("sm_80",), directory=tmp_path)
    assert ck.main(["--kernel-dir", str(tmp_path)]) == 1


@needs_nvrtc
def test_main_prints_the_table(tmp_path, capsys):
    d = write(tmp_path, {"k.cu": CLEAN})
    assert ck.main(["--kernel-dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert "reverse_scale  sm_80" in out and "reverse_scale  sm_90" in out
    assert "-ftz=true" in out and "-Xptxas=-v" in out and "compile time:" in out
    assert "check_kernels: OK" in out


# -- the NVRTC binding ---------------------------------------------------------------------------


@needs_nvrtc
def test_nvrtc_binding():
    major, minor = nvrtc.nvrtc_version()
    assert major == 12
    archs = nvrtc.supported_archs()
    assert 80 in archs and 90 in archs
    assert (nvrtc.cuda_include_dir() / "cuda_fp16.h").is_file()
    src = 'extern "C" __global__ void k(float* y) { y[threadIdx.x] = 1.f; }\n'
    res = nvrtc.compile_cubin(src, "k.cu", "sm_90", ["-Xptxas=-v"])
    assert res.cubin[:4] == b"\x7fELF" and "Compiling entry function 'k' for 'sm_90'" in res.log
    assert nvrtc.compile_cubin(src, "k.cu", 80).cubin[:4] == b"\x7fELF"
    ptx = nvrtc.compile_ptx(src, "k.cu", "sm_80")
    assert ".entry k(" in ptx.ptx and ".target sm_80" in ptx.ptx
    with pytest.raises(DeviceError, match="not a CUDA architecture"):
        nvrtc.compile_cubin(src, "k.cu", "ampere")
    with pytest.raises(DeviceError, match="NVRTC_ERROR_INVALID_OPTION"):
        nvrtc.compile_cubin(src, "k.cu", "sm_80", ["--no-such-option"])


@needs_nvrtc
def test_bf16_header_needs_the_include_dir(tmp_path):
    src = '#include <cuda_bf16.h>\nextern "C" __global__ void k(__nv_bfloat16* y) {}\n'
    with pytest.raises(DeviceError, match="cuda_bf16.h"):
        nvrtc.compile_cubin(src, "k.cu", "sm_80", ["-std=c++17"])
    assert nvrtc.compile_cubin(src, "k.cu", "sm_80", ["-std=c++17", f"-I{nvrtc.cuda_include_dir()}"]).cubin
