"""The CUDA kernels (python/ferrolm/cuda/*.cu) against NumPy references of the CPU core's math,
run on the CPU emulator of the CUDA execution model (and, with the `gpu` marker, on a real GPU
through cupy), with the launch geometry of docs/cuda.md.

Shapes are odd on purpose: sizes that are not multiples of the block or of the vector width,
unaligned rows (ldx > k, views starting one element in), GQA, several attention splits."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import cuda_reference as ref
from conftest import gpu_available
from ferrolm.backends.cuda.emulator import EmulatedModule
from ferrolm.backends.cuda.sources import kernel_dir, kernel_source

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                                reason="the CUDA emulator needs a C++ compiler")

I32, F32 = np.int32, np.float32
FP_REL = 1e-5  # FP32 paths, relative to the output's scale


class GpuModule:
    """The same kernels on a GPU through cupy, behind the emulator's call shape: every numpy
    buffer an argument points into is copied to the device at the same address modulo 256 (so
    aligned and unaligned cases stay what they are), and copied back after the launch."""

    def __init__(self) -> None:
        import cupy

        from ferrolm.backends.cuda.sources import module_options

        self.cp = cupy
        self.module = cupy.RawModule(code=kernel_source(), options=module_options())

    def get_function(self, name):
        return lambda grid, block, args, shared_mem=0: self._launch(name, grid, block, args, shared_mem)

    def _launch(self, name, grid, block, args, shared_mem):
        cp, roots, dev_args = self.cp, {}, []
        for a in args:
            if isinstance(a, np.ndarray):
                root = a
                while isinstance(root.base, np.ndarray):
                    root = root.base
                if id(root) not in roots:
                    shift = root.ctypes.data % 256
                    dev = cp.empty(root.nbytes + 256, cp.uint8)
                    dev[shift:shift + root.nbytes].set(root.reshape(-1).view(np.uint8))
                    roots[id(root)] = (root, dev, shift)
                root, dev, shift = roots[id(root)]
                at = shift + a.ctypes.data - root.ctypes.data
                dev_args.append(dev[at:at + a.nbytes].view(a.dtype))
            else:
                dev_args.append(np.uint64(0) if a is None else a)
        self.module.get_function(name)(tuple(grid), tuple(block), tuple(dev_args), shared_mem=shared_mem)
        for root, dev, shift in roots.values():
            root.reshape(-1).view(np.uint8)[...] = dev[shift:shift + root.nbytes].get()


@pytest.fixture(scope="module", params=["emulator", pytest.param("gpu", marks=pytest.mark.gpu)])
def mod(request):
    # the translation unit the backend compiles, on the emulator or (gpu marker) a real GPU
    if request.param == "gpu":
        if not gpu_available():
            pytest.skip("no cupy or no NVIDIA GPU here")
        return GpuModule()
    return EmulatedModule(kernel_source(), [str(kernel_dir())])


def launch(mod, name, grid, block, *args):
    mod.get_function(name)(grid, block, args)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def aligned(a: np.ndarray) -> np.ndarray:
    """A copy of a starting on a 64-byte boundary (so "aligned" cases take the vector paths)."""
    raw = np.empty(a.nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def rows_with_stride(rng, m: int, k: int, ld: int, offset: int = 0, dtype=np.float32):
    """A buffer holding m rows of k values ld apart, starting `offset` elements after a 64-byte
    boundary (so row starts can sit off 16-byte boundaries); returns (view from the first row,
    the rows)."""
    buf = aligned(rng.standard_normal(offset + max(m - 1, 0) * ld + k + 3).astype(dtype))
    view = buf[offset:]
    rows = np.stack([view[i * ld : i * ld + k] for i in range(m)])
    return view, rows


def strided_out(view: np.ndarray, m: int, n: int, ld: int) -> np.ndarray:
    return np.stack([view[i * ld : i * ld + n] for i in range(m)])


# --- embeddings -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["f32", "bf16", "q8"])
@pytest.mark.parametrize("d", [40, 300])
@pytest.mark.parametrize("with_wpe", [False, True])
def test_embed(mod, fmt, d, with_wpe):
    rng = np.random.default_rng(d)
    vocab, t, p0, group = 11, 3, 4, 32
    ids = np.array([7, 0, 10], I32)
    table = rng.standard_normal((vocab, d)).astype(F32)
    wpe = rng.standard_normal((p0 + t + 2, d)).astype(F32) if with_wpe else None
    pos = np.array([p0], I32)
    x = np.full((t, d), np.nan, F32)
    if fmt == "f32":
        want = table[ids].astype(np.float64)
        launch(mod, "embed_f32", (t,), (256,), ids, table, wpe, pos, x, I32(d))
    elif fmt == "bf16":
        tb = ref.to_bf16(table)
        want = ref.from_bf16(tb)[ids].astype(np.float64)
        launch(mod, "embed_bf16", (t,), (256,), ids, tb, wpe, pos, x, I32(d))
    else:
        ng = cdiv(d, group)
        q = rng.integers(-127, 128, (vocab, d)).astype(np.int8)
        sbits, s = ref.f16_scales(rng, (vocab, ng))
        deq = q.astype(F32) * np.repeat(s, group, axis=1)[:, :d]
        want = deq[ids].astype(np.float64)
        launch(mod, "embed_q8", (t,), (256,), ids, q, sbits, I32(group), wpe, pos, x, I32(d))
    if with_wpe:
        want = want + wpe[p0 : p0 + t]
    ref.assert_close(x, want, FP_REL, f"embed_{fmt}")


def test_embed_q8_widens_every_half(mod):
    # q = 1 everywhere and one scale per value (group 1): row r holds halves 1024·r .. 1024·r + 1023,
    # so the 64 rows gather every f16 bit pattern (subnormals, ±0, ±inf, NaNs) widened to f32
    vocab, d = 64, 1024
    bits = np.arange(1 << 16, dtype=np.uint16).reshape(vocab, d)
    q = np.ones((vocab, d), np.int8)
    ids = np.arange(vocab, dtype=I32)
    x = np.zeros((vocab, d), F32)
    launch(mod, "embed_q8", (vocab,), (256,), ids, q, bits, I32(1), None, np.array([0], I32), x, I32(d))
    want = bits.view(np.float16).astype(F32)
    nan = np.isnan(want)
    assert (np.isnan(x) == nan).all()
    np.testing.assert_array_equal(x[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_add_pos_embed(mod):
    rng = np.random.default_rng(1)
    t, d, p0 = 3, 300, 5
    wpe = rng.standard_normal((p0 + t, d)).astype(F32)
    x = rng.standard_normal((t, d)).astype(F32)
    want = x.astype(np.float64) + wpe[p0:]
    launch(mod, "add_pos_embed", (t,), (256,), wpe, np.array([p0], I32), x, I32(d))
    ref.assert_close(x, want, FP_REL, "add_pos_embed")


# --- norms ------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [40, 200, 600])
def test_norms(mod, d):
    rng = np.random.default_rng(d)
    t, ldx, eps = 3, d + 3, 1e-5
    xv, x = rows_with_stride(rng, t, d, ldx, offset=1)
    x *= 3.0
    xv[:] *= 3.0
    w = rng.standard_normal(d).astype(F32)
    b = rng.standard_normal(d).astype(F32)
    out = np.full((t, d), np.nan, F32)
    launch(mod, "rms_norm", (t,), (256,), xv, I32(ldx), w, out, I32(d), F32(eps))
    ref.assert_close(out, ref.rms_norm(x, w, eps), FP_REL, "rms_norm")
    out[:] = np.nan
    launch(mod, "layer_norm", (t,), (256,), xv, I32(ldx), w, b, out, I32(d), F32(eps))
    ref.assert_close(out, ref.layer_norm(x, w, b, eps), FP_REL, "layer_norm")


# --- W8A16 activation quantization ------------------------------------------------------------


@pytest.mark.parametrize("k", [37, 64, 100, 257])
def test_quantize_a16_is_bit_exact(mod, k):
    rng = np.random.default_rng(k)
    m, ldx = 5, k + 5
    ng = cdiv(k, 32)
    xv, x = rows_with_stride(rng, m, k, ldx, offset=1)
    x = x * np.float32(4.0)
    # row 1: a zero group, a group below MIN_AMAX, a NaN group (when there are enough groups);
    # row 2: the last (short) group holds +inf;
    # row 3: ties of round-half-even (amax 32639: the inverse is 1), ±amax, subnormals, -0.0;
    # row 4: a group of subnormals only (amax < MIN_AMAX), then one just at MIN_AMAX
    x[1, :32] = 0.0
    if k > 64:
        x[1, 32:64] *= np.float32(1e-31)
        x[1, 64 + 3] = np.nan
    x[2, -1] = np.inf
    tiny = np.float32(1e-40)
    x[3, :12] = [32639.0, 0.5, 1.5, 2.5, -0.5, -1.5, -32638.5, 3.4999998, -32639.0, tiny, -0.0, 7.0]
    x[4, :32] = tiny
    if k > 64:
        x[4, 32:64] = 0.0
        x[4, 40] = ref.MIN_AMAX
        x[4, 41] = -ref.MIN_AMAX / np.float32(2.0)
    for i in range(m):
        xv[i * ldx : i * ldx + k] = x[i]
    x16 = aligned(np.full((m, 32 * ng), 99, np.int16))
    xs = np.full((m, ng), -1.0, F32)
    with np.errstate(invalid="ignore", over="ignore"):
        want_q, want_s = ref.quantize_x16(x)
    launch(mod, "quantize_a16", (cdiv(ng, 4), m), (128,), xv, I32(ldx), x16, xs, I32(m), I32(k))
    np.testing.assert_array_equal(x16, want_q)  # zero past k too
    np.testing.assert_array_equal(xs.view(np.uint32), want_s.view(np.uint32))  # NaN bits too
    assert xs[1, 0] == 0 and np.isnan(xs[2, -1]) and xs[4, 0] == 0 and not x16[4, :32].any()
    assert list(x16[3, :12]) == [32639, 0, 2, 2, 0, -2, -32638, 3, -32639, 0, 0, 7]
    assert xs[3, 0] == np.float32(1.0)
    if k > 64:
        assert np.isnan(xs[1, 2]) and not x16[1, 64:96].any()
        assert x16[4, 40] == 32639 and x16[4, 41] == -16320 and xs[4, 1] == ref.MIN_AMAX / ref.A16_MAX


# --- matmuls ----------------------------------------------------------------------------------


def matmul_case(rng, fmt: str, m: int, k: int, n: int, offset: int = 1, ldx: int = 0):
    """Operands of one matmul: kernel arguments (x side, w side) and the float64 reference.
    x rows are ldx apart (default k + 3: rows off 16-byte boundaries)."""
    ldx = ldx or k + 3
    if fmt == "w8a16":
        x = rng.standard_normal((m, k)).astype(F32)
        x16, xs = ref.quantize_x16(x)
        wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
        wsbits, ws = ref.f16_scales(rng, (n, cdiv(k, 32)))
        want = ref.w8a16(x16, xs, wq, ws)
        # x16 is quantize_a16's output (16-byte aligned rows of 32·ng); wq rows are k apart and
        # `offset` moves them off 16-byte boundaries
        wbuf = aligned(np.zeros(offset + n * k, np.int8))
        wbuf[offset:] = wq.reshape(-1)
        return (aligned(x16), xs), (wbuf[offset:], wsbits), want
    xv, x = rows_with_stride(rng, m, k, ldx, offset=offset)
    w = aligned(rng.standard_normal((n, k)).astype(F32))
    if fmt == "bf16":
        wb = aligned(ref.to_bf16(w))
        w, warg = ref.from_bf16(wb), wb
    else:
        warg = w
    want = x.astype(np.float64) @ w.astype(np.float64).T
    return (xv, I32(ldx)), (warg,), want


def matmul_geometry(kind: str, m: int, n: int):
    return ((cdiv(n, 4),), (128,)) if kind == "gemv" else ((cdiv(n, 64), cdiv(m, 64)), (256,))


def run_matmul(mod, kind: str, fmt: str, m: int, k: int, n: int, *, alpha=1.0, accumulate=False,
               bias=False, offset=1, ldx=0, seed=0):
    rng = np.random.default_rng(seed + 1000 * m + k + 7 * n)
    xargs, wargs, want = matmul_case(rng, fmt, m, k, n, offset, ldx)
    ldy = n + 2
    yv = rng.standard_normal(m * ldy).astype(F32)
    y0 = strided_out(yv, m, n, ldy).astype(np.float64)
    b = rng.standard_normal(n).astype(F32) if bias else None
    want = alpha * want + (b if bias else 0.0) + (y0 if accumulate else 0.0)
    grid, block = matmul_geometry(kind, m, n)
    gaps = [yv[i * ldy + n : (i + 1) * ldy].copy() for i in range(m)]
    tail = (b, yv, I32(ldy), I32(m), I32(k), I32(n), F32(alpha), I32(int(accumulate)))
    launch(mod, f"{kind}_{fmt}", grid, block, *xargs, *wargs, *tail)
    got = strided_out(yv, m, n, ldy)
    ref.assert_close(got, want, FP_REL, f"{kind}_{fmt} m={m} k={k} n={n}")
    for i in range(m):  # nothing written between the rows of y
        np.testing.assert_array_equal(yv[i * ldy + n : (i + 1) * ldy], gaps[i])


FORMATS = ["f32", "bf16", "w8a16"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("k,n", [(37, 3), (100, 130), (257, 1)])
def test_gemv(mod, fmt, m, k, n):
    run_matmul(mod, "gemv", fmt, m, k, n)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k", [512, 1056, 2080])
def test_gemv_long_rows_aligned(mod, fmt, k):
    # long enough for the unrolled vector loops; every row 16-byte aligned
    run_matmul(mod, "gemv", fmt, 2, k, 5, offset=0, ldx=k + 4)
    run_matmul(mod, "gemv", fmt, 4, k, 3, offset=0, ldx=k + 8)
    run_matmul(mod, "gemv", fmt, 3, k, 2, offset=0, ldx=k + 4, bias=True, accumulate=True, alpha=0.5)


@pytest.mark.parametrize("kind", ["gemv", "gemm"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_epilogue(mod, kind, fmt):
    m = 3 if kind == "gemv" else 5
    run_matmul(mod, kind, fmt, m, 100, 7, alpha=0.375, accumulate=True, bias=True)
    run_matmul(mod, kind, fmt, m, 64, 6, alpha=-2.0, accumulate=False, bias=True, offset=0)
    run_matmul(mod, kind, fmt, m, 37, 5, alpha=1.5, accumulate=True, bias=False)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("m,k,n", [(1, 37, 3), (5, 100, 130), (70, 100, 67), (70, 64, 3), (130, 257, 65)])
def test_gemm(mod, fmt, m, k, n):
    run_matmul(mod, "gemm", fmt, m, k, n, offset=0 if k == 64 else 1, ldx=k + 4 if k == 64 else 0)


@pytest.mark.parametrize("kind,m", [("gemv", 1), ("gemv", 4), ("gemm", 5), ("gemm", 70)])
@pytest.mark.parametrize("k", [20, 32, 64])
def test_w8a16_is_the_cpus_arithmetic_bit_for_bit_up_to_two_groups(mod, kind, m, k):
    """Each group adds f32(S_g)·(xs_g·ws_g), every operation rounded on its own (S_g the exact
    integer group sum), as the CPU's reference kernel (matmul_int8_kernels.rs, dot_portable);
    only the order of the additions may differ, and with one or two groups there is one order:
    y is the CPU's bit for bit, y = (0 + f32(S_0)·(xs_0·ws_0)) + f32(S_1)·(xs_1·ws_1)."""
    rng = np.random.default_rng(k + m)
    n = 67
    x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 50.0, (m, 1))).astype(F32)
    x16, xs = ref.quantize_x16(x)
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    wsbits, ws = ref.f16_scales(rng, (n, cdiv(k, 32)))
    want = np.zeros((m, n), F32)
    for g in range(cdiv(k, 32)):
        sl = slice(32 * g, min(k, 32 * g + 32))
        isum = x16[:, sl].astype(np.int64) @ wq[:, sl].T.astype(np.int64)
        want = want + isum.astype(F32) * (ws[:, g][None, :] * xs[:, g : g + 1])
    y = np.full((m, n), np.nan, F32)
    grid, block = matmul_geometry(kind, m, n)
    launch(mod, f"{kind}_w8a16", grid, block, aligned(x16), xs, wq, wsbits, None, y, I32(n), I32(m), I32(k), I32(n),
           F32(1.0), I32(0))
    np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("kind,m", [("gemv", 4), ("gemm", 70)])
def test_w8a16_integer_sums_at_the_extremes(mod, kind, m):
    # every product at ±32639·127 and of one sign per (row, column): a group sum of ±132,644,896,
    # far beyond f32's exact integers and int16, inside int32; k = 100 ends in a short group
    rng = np.random.default_rng(m)
    k, n = 100, 9
    xsign = rng.choice([-1, 1], (m, 1)).astype(F32)
    x = np.repeat(xsign * np.float32(3.0), k, axis=1)
    x16, xs = ref.quantize_x16(x)
    assert (np.abs(x16[:, :k]) == 32639).all()
    wsign = rng.choice([-1, 1], (n, 1))
    wq = np.repeat(wsign * 127, k, axis=1).astype(np.int8)
    wsbits, ws = ref.f16_scales(rng, (n, cdiv(k, 32)))
    y = np.full((m, n), np.nan, F32)
    grid, block = matmul_geometry(kind, m, n)
    launch(mod, f"{kind}_w8a16", grid, block, aligned(x16), xs, wq, wsbits, None, y, I32(n), I32(m), I32(k), I32(n),
           F32(1.0), I32(0))
    isum = x16[:, :k].astype(np.int64) @ wq.T.astype(np.int64)
    assert abs(isum).max() == 100 * 32639 * 127
    ref.assert_close(y, ref.w8a16(x16, xs, wq, ws), 1e-6, kind)


def test_w8a16_matmuls_propagate_nan_groups(mod):
    # a row of x with a non-finite value quantizes with scale NaN and its outputs turn NaN
    rng = np.random.default_rng(3)
    m, k, n = 3, 70, 5
    x = rng.standard_normal((m, k)).astype(F32)
    x[0, 40] = np.nan
    x[2, :] = 0.0
    with np.errstate(invalid="ignore"):
        x16, xs = ref.quantize_x16(x)
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    wsbits, _ = ref.f16_scales(rng, (n, cdiv(k, 32)))
    for kind in ("gemv", "gemm"):
        y = np.full((m, n), 7.0, F32)
        grid, block = matmul_geometry(kind, m, n)
        launch(mod, f"{kind}_w8a16", grid, block, aligned(x16), xs, wq, wsbits, None, y, I32(n), I32(m), I32(k),
               I32(n), F32(1.0), I32(0))
        assert np.isnan(y[0]).all(), kind
        assert np.isfinite(y[1]).all() and (y[2] == 0).all(), kind


# --- RoPE + KV cache --------------------------------------------------------------------------


@pytest.mark.parametrize("n_heads,n_kv_heads,head_dim", [(6, 2, 8), (4, 4, 64), (2, 1, 200)])
@pytest.mark.parametrize("with_rope", [True, False])
def test_rope_store_kv(mod, n_heads, n_kv_heads, head_dim, with_rope):
    rng = np.random.default_rng(head_dim + n_heads)
    t, p0, max_seq = 3, 9, 16
    q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
    width = q_dim + 2 * kv_dim
    ld = width + 5
    buf = rng.standard_normal(t * ld).astype(F32)
    before = buf.copy()
    rows = strided_out(buf, t, width, ld).copy()
    freqs = ref.inv_freq(head_dim, 10000.0)
    k_cache = np.full((max_seq, kv_dim), -5.0, F32)
    v_cache = np.full((max_seq, kv_dim), -5.0, F32)
    launch(mod, "rope_store_kv", (t,), (128,), buf, I32(ld), I32(t), np.array([p0], I32),
           freqs if with_rope else None, I32(n_heads), I32(n_kv_heads), I32(head_dim), k_cache, v_cache)
    want = rows.copy()
    if with_rope:
        for i in range(t):
            want[i, : q_dim + kv_dim] = ref.rope(rows[i, : q_dim + kv_dim], p0 + i, freqs, head_dim)
    got = strided_out(buf, t, width, ld)
    ref.assert_close(got, want, FP_REL, "rope rows")
    ref.assert_close(k_cache[p0 : p0 + t], want[:, q_dim : q_dim + kv_dim], FP_REL, "k cache")
    np.testing.assert_array_equal(v_cache[p0 : p0 + t], rows[:, q_dim + kv_dim :])
    assert (k_cache[:p0] == -5).all() and (k_cache[p0 + t :] == -5).all()
    assert (v_cache[:p0] == -5).all() and (v_cache[p0 + t :] == -5).all()
    for i in range(t):  # the gaps between rows are untouched
        np.testing.assert_array_equal(buf[i * ld + width : (i + 1) * ld], before[i * ld + width : (i + 1) * ld])


# --- attention --------------------------------------------------------------------------------


def run_attention(mod, n_heads, n_kv_heads, head_dim, t, p0, chunk, seed=0):
    rng = np.random.default_rng(seed + head_dim + 10 * n_heads)
    n_keys = p0 + t
    kv_dim = n_kv_heads * head_dim
    ldq = n_heads * head_dim + 3
    q = rng.standard_normal((t, ldq)).astype(F32)
    k_cache = rng.standard_normal((n_keys + 2, kv_dim)).astype(F32)
    v_cache = rng.standard_normal((n_keys + 2, kv_dim)).astype(F32)
    scale = 1.0 / np.sqrt(head_dim)
    splits = cdiv(n_keys, chunk)
    part_o = np.full((t, n_heads, splits, head_dim), np.nan, F32)
    part_ml = np.full((t, n_heads, splits, 2), np.nan, F32)
    pos = np.array([p0], I32)
    launch(mod, "attention_partial", (n_heads, t, splits), (128,), q.reshape(-1), I32(ldq), k_cache, v_cache, pos,
           I32(t), I32(n_heads), I32(n_kv_heads), I32(head_dim), F32(scale), I32(chunk), part_o, part_ml)
    ldo = n_heads * head_dim + 1
    out = np.full((t, ldo), np.nan, F32)
    launch(mod, "attention_combine", (n_heads, t), (128,), part_o, part_ml, I32(t), I32(n_heads), I32(head_dim),
           I32(splits), out.reshape(-1), I32(ldo))
    want = ref.attention(q[:, : n_heads * head_dim], k_cache, v_cache, p0, n_heads, n_kv_heads, head_dim,
                         float(F32(scale)))
    ref.assert_close(out[:, : n_heads * head_dim], want, 1e-5, "attention")
    assert np.isnan(out[:, -1]).all()  # past the row: untouched
    return q, k_cache, v_cache, part_o, part_ml, scale


@pytest.mark.parametrize("n_heads,n_kv_heads,head_dim", [(6, 2, 8), (4, 4, 64), (2, 1, 40), (1, 1, 256)])
def test_attention_decode_long_context(mod, n_heads, n_kv_heads, head_dim):
    # one query at position 299: 300 keys over 5 splits of 64
    run_attention(mod, n_heads, n_kv_heads, head_dim, t=1, p0=299, chunk=64)


def test_attention_prefill_chunk_and_empty_split(mod):
    # rows at positions 255 and 256: row 0 has 256 keys, so its split 4 ([256, 320)) is empty
    n_heads, n_kv_heads, head_dim = 6, 2, 8
    q, k_cache, v_cache, part_o, part_ml, scale = run_attention(mod, n_heads, n_kv_heads, head_dim, t=2,
                                                                p0=255, chunk=64)
    assert (part_ml[0, :, 4, 0] == -np.inf).all() and (part_ml[0, :, 4, 1] == 0).all()
    assert (part_o[0, :, 4] == 0).all()
    # a split's partial: m = max score, l = Σ exp(score − m), o = Σ exp(score − m)·v
    h, s = 5, 2
    g = h // (n_heads // n_kv_heads)
    keys = slice(s * 64, (s + 1) * 64)
    kh = k_cache[keys, g * head_dim : (g + 1) * head_dim].astype(np.float64)
    vh = v_cache[keys, g * head_dim : (g + 1) * head_dim].astype(np.float64)
    sc = float(F32(scale)) * (kh @ q[1, h * head_dim : (h + 1) * head_dim].astype(np.float64))
    e = np.exp(sc - sc.max())
    assert abs(part_ml[1, h, s, 0] - sc.max()) <= 1e-5 * abs(sc).max()
    assert abs(part_ml[1, h, s, 1] - e.sum()) <= 1e-5 * e.sum()
    ref.assert_close(part_o[1, h, s], e @ vh, 1e-5, "partial o")


def test_attention_short_prefill_from_zero(mod):
    run_attention(mod, 4, 2, 64, t=5, p0=0, chunk=4)


# --- activations ------------------------------------------------------------------------------


def test_silu_mul(mod):
    rng = np.random.default_rng(5)
    t, ffn = 3, 300
    ldgu, ldout = 2 * ffn + 3, ffn + 1
    gu = (rng.standard_normal((t, ldgu)) * 6).astype(F32)
    gu[0, :5] = [-100.0, -30.0, 0.0, 30.0, 100.0]
    out = np.full((t, ldout), np.nan, F32)
    launch(mod, "silu_mul", (cdiv(ffn, 256), t), (256,), gu.reshape(-1), I32(ldgu), out.reshape(-1), I32(ldout),
           I32(t), I32(ffn))
    ref.assert_close(out[:, :ffn], ref.silu_mul(gu[:, :ffn], gu[:, ffn : 2 * ffn]), FP_REL, "silu_mul")
    assert np.isnan(out[:, ffn:]).all()


def test_gelu_tanh(mod):
    rng = np.random.default_rng(6)
    n = 1000
    x = (rng.standard_normal(n + 4) * 4).astype(F32)
    x[:6] = [-100.0, -10.0, -0.0, 0.0, 10.0, 100.0]
    want = ref.gelu_tanh(x[:n])
    tail = x[n:].copy()
    launch(mod, "gelu_tanh", (cdiv(n, 256),), (256,), x, I32(n))
    ref.assert_close(x[:n], want, FP_REL, "gelu_tanh")
    np.testing.assert_array_equal(x[n:], tail)


# --- greedy sampling ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 1024, 1500, 49157])
def test_argmax_is_the_first_largest_and_flags_what_the_host_must_decide(mod, n):
    rng = np.random.default_rng(n)
    out = np.full(2, -5, I32)

    def argmax(x):
        launch(mod, "argmax_f32", (1,), (1024,), x, I32(x.size), out)
        return int(out[0]), int(out[1])

    x = rng.standard_normal(n).astype(F32)
    assert argmax(x) == (int(np.argmax(x)), 0)
    if n > 1:
        x[n // 3] = x[n - 1] = np.float32(x.max() + 1)  # equal maxima: the first wins
        assert argmax(x) == (n // 3, 0)
        x[n // 2] = np.inf
        assert argmax(x) == (n // 2, 0)
        x[n - 1] = np.nan  # a NaN: the host decides (it raises)
        assert argmax(x)[1] == 1
    x = np.full(n, -np.inf, F32)  # nothing above -inf (every token suppressed)
    assert argmax(x)[1] == 1
    x[n - 1] = -3.0e38
    assert argmax(x) == (n - 1, 0)
