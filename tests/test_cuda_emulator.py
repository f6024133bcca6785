"""The CPU emulator of the CUDA execution model (ferrolm.backends.cuda.emulator) on the test kernels
of tests/cuda_kernels: barriers, shared memory, warp functions, numerics, geometry, fault reports,
argument checks and the build cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import ferrolm
from ferrolm.backends.cuda.emulator import EmulatedModule

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator needs g++")

KERNELS = Path(__file__).parent / "cuda_kernels"
FULL = 0xFFFFFFFF


def source() -> str:
    return "".join(f'#line 1 "{f.name}"\n{f.read_text()}' for f in sorted(KERNELS.glob("*.cu")))


@pytest.fixture(scope="module")
def mod():
    return EmulatedModule(source(), [KERNELS], name="emu_tests")


def launch(mod, name, grid, block, *args, shared_mem=0):
    mod.get_function(name)(grid, block, args, shared_mem=shared_mem)


# ---- barriers and shared memory ------------------------------------------------------------------


def test_tree_reduction_needs_a_real_barrier(mod):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(8 * 256).astype(np.float32)
    out = np.zeros(8, np.float32)
    launch(mod, "tree_sum", (8,), (256,), x, out)
    np.testing.assert_allclose(out, x.reshape(8, 256).astype(np.float64).sum(1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n", [1, 33, 100, 1024])
def test_write_then_read_across_threads(mod, n):
    out = np.zeros(n, np.int32)
    launch(mod, "neighbour", (1,), (n,), out)
    t = np.arange(n)
    # slot t ends as 2·(((t+1) mod n)² + 1) and is read back by thread t+1
    expect = 2 * (t**2 + 1)
    np.testing.assert_array_equal(out, expect)


def test_syncthreads_count_and_or(mod):
    flags = np.zeros(96, np.int32)
    flags[[3, 40, 95]] = 1
    out = np.zeros(3, np.int32)
    launch(mod, "vote_block", (1,), (96,), flags, out)
    assert out.tolist() == [3, 0, 1]
    launch(mod, "vote_block", (1,), (96,), np.ones(96, np.int32), out)
    assert out.tolist() == [96, 1, 1]


def test_dynamic_shared_memory(mod):
    x = np.arange(3 * 200, dtype=np.float32)
    y = np.zeros_like(x)
    align = np.full(3, -1, np.int32)
    launch(mod, "reverse_dynamic", (3,), (200,), x, y, align, shared_mem=200 * 4)
    np.testing.assert_array_equal(y, x.reshape(3, 200)[:, ::-1].ravel())
    assert align.tolist() == [0, 0, 0]


# ---- warps ---------------------------------------------------------------------------------------


def shuffle_reference(values, op, arg, width):
    """PTX shfl.sync per lane (see scheduler.cpp), with -1 for a source lane that does not exist."""
    n = len(values)
    out = np.empty(n, np.int64)
    for t in range(n):
        lane, base = t % 32, t - t % 32
        seg = 32 - width
        lo = lane & seg
        hi = lo | (31 & ~seg)
        b = arg & 0xFFFFFFFF
        if op == 0:
            j, ok = lo | (b & 31 & ~seg), True
        elif op == 1:
            j = lane - b
            ok = j >= lo
        elif op == 2:
            j = lane + b
            ok = j <= hi
        else:
            j = lane ^ b
            ok = j <= hi
        if not ok:
            j = lane
        out[t] = values[base + j] if base + j < n else -1
    return out


@pytest.mark.parametrize("block", [64, 48])
@pytest.mark.parametrize("width", [32, 16, 8, 4, 1])
@pytest.mark.parametrize("op,args", [(0, [0, 5, 31, 37, -3]), (1, [1, 3, 16]), (2, [1, 4, 16, 31]), (3, [1, 6, 16, 31])])
def test_shuffles(mod, block, width, op, args):
    values = (np.arange(block, dtype=np.int32) * 7 + 100).astype(np.int32)
    out = np.zeros(block, np.int32)
    for arg in args:
        launch(mod, "shuffle_int", (1,), (block,), values, out, np.int32(op), np.int32(arg), np.int32(width))
        np.testing.assert_array_equal(out, shuffle_reference(values, op, arg, width), err_msg=f"op {op} arg {arg}")


def test_shuffle_cases_from_the_cuda_guide(mod):
    """Literal cases of the CUDA programming guide's rules, independent of the reference above."""
    values = np.arange(32, dtype=np.int32) + 100
    out = np.zeros(32, np.int32)

    def run(op, arg, width):
        launch(mod, "shuffle_int", (1,), (32,), values, out, np.int32(op), np.int32(arg), np.int32(width))
        return out

    assert run(0, 37, 32)[0] == 105  # srcLane beyond the width: taken modulo the width
    assert run(0, 5, 8)[10] == 113  # idx within the lane's 8-wide segment (lanes 8..15)
    up = run(1, 3, 8)
    assert up[10] == 110 and up[13] == 110  # seg lane 2 < 3: own value; seg lane 5 reads lane 10
    down = run(2, 4, 8)
    assert down[13] == 113 and down[9] == 113  # lane 13 + 4 leaves its segment: own; lane 9 reads 13
    xor = run(3, 16, 8)
    assert xor[3] == 103 and xor[19] == 103  # a later segment is out of reach, an earlier one is not


def test_shuffles_of_each_type(mod):
    n = 64
    rng = np.random.default_rng(1)
    f = rng.standard_normal(n).astype(np.float32)
    d = rng.standard_normal(n)
    q = rng.integers(-(2**62), 2**62, n, dtype=np.int64)
    u = rng.integers(0, 2**32, n, dtype=np.uint32)
    fo, do, qo, uo = np.zeros_like(f), np.zeros_like(d), np.zeros_like(q), np.zeros_like(u)
    launch(mod, "shuffle_types", (1,), (n,), f, d, q, u, fo, do, qo, uo)
    lane, base = np.arange(n) % 32, np.arange(n) - np.arange(n) % 32
    np.testing.assert_array_equal(fo, f[base + (lane ^ 1)])
    np.testing.assert_array_equal(do, d[np.where(lane + 3 < 32, np.arange(n) + 3, np.arange(n))])
    np.testing.assert_array_equal(qo, q[np.where(lane >= 2, np.arange(n) - 2, np.arange(n))])
    np.testing.assert_array_equal(uo, u[base + 5])


def test_warp_sum_and_partial_warp(mod):
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(2, np.float32)
    launch(mod, "warp_sum", (1,), (64,), x, out)
    assert out.tolist() == [sum(range(32)), sum(range(32, 64))]
    # 48 threads: the second warp has 16 lanes; reads of the missing lanes give NaN, visibly.
    out[:] = 0
    launch(mod, "warp_sum", (1,), (48,), x, out)
    assert out[0] == sum(range(32)) and np.isnan(out[1])


@pytest.mark.parametrize("block", [64, 48])
def test_ballot_any_all(mod, block):
    rng = np.random.default_rng(2)
    pred = (rng.random(block) < 0.5).astype(np.int32)
    pred[32:] = 1  # second warp: all set
    ballot, anyv, allv, even = (np.zeros(block, t) for t in (np.uint32, np.int32, np.int32, np.uint32))
    launch(mod, "votes", (1,), (block,), pred, ballot, anyv, allv, even)
    for w in range(0, block, 32):
        lanes = pred[w : w + 32]
        bits = sum(int(p) << i for i, p in enumerate(lanes))
        even_bits = sum(int(p) << i for i, p in enumerate(lanes) if i % 2 == 0)
        assert set(ballot[w : w + 32].tolist()) == {bits}
        assert set(anyv[w : w + 32].tolist()) == {int(lanes.any())}
        assert set(allv[w : w + 32].tolist()) == {int(lanes.all())}
        assert even[w : w + 32 : 2].tolist() == [even_bits] * len(lanes[::2])
    assert allv[32] == 1 and ballot[32] == (FULL if block == 64 else 0xFFFF)


# ---- numerics ------------------------------------------------------------------------------------


def bf16_reference(x: np.ndarray) -> np.ndarray:
    u = x.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FFF), r)


def test_bf16_round_to_nearest_even(mod):
    rng = np.random.default_rng(3)
    special = np.array(
        [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, -np.nan, 3.4028235e38, -3.4028235e38, 1e-45, -1e-45, 1e-40,
         1.1754944e-38],
        np.float32,
    )
    ties = np.array([0x3F808000, 0x3F818000, 0x3F80C000, 0x3F807FFF, 0x7F7F8000, 0x7F7FFFFF, 0x00008000, 0x00018000,
                     0x80008000, 0xBF818000], np.uint32).view(np.float32)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    normal = rng.standard_normal(5000).astype(np.float32) * np.float32(1e3)
    x = np.concatenate([special, ties, bits, normal])
    n = len(x)
    rn, plain, back = np.zeros(n, np.uint16), np.zeros(n, np.uint16), np.zeros(n, np.float32)
    launch(mod, "to_bf16", ((n + 255) // 256,), (256,), x, rn, plain, back, np.int32(n))
    expect = bf16_reference(x)
    np.testing.assert_array_equal(rn, expect)
    np.testing.assert_array_equal(plain, expect)
    np.testing.assert_array_equal(back.view(np.uint32), expect.astype(np.uint32) << 16)
    assert rn[special.tolist().index(np.inf)] == 0x7F80
    assert rn[len(special) + 4] == 0x7F80  # 0x7F7F8000 is a tie that rounds up to infinity
    assert rn[len(special) + 5] == 0x7F80
    pairs = np.zeros(n - n % 2, np.float32)
    launch(mod, "bf16_pairs", ((n // 2 + 255) // 256,), (256,), x, pairs, np.int32(n // 2))
    np.testing.assert_array_equal(pairs.view(np.uint32), expect[: len(pairs)].astype(np.uint32) << 16)


def test_dp4a(mod):
    rng = np.random.default_rng(4)
    n = 4096
    a = rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32)
    b = rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32)
    c = rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32)
    a[:4] = np.array([0x7F7F7F7F, 0x80808080, 0xFFFFFFFF, 0], np.uint32).view(np.int32)
    b[:4] = np.array([0x7F7F7F7F, 0x80808080, 0xFFFFFFFF, 0x01020304], np.uint32).view(np.int32)
    c[:4] = np.array([2**31 - 1, 0, 0, -5], np.int32)
    s, u = np.zeros(n, np.int32), np.zeros(n, np.uint32)
    launch(mod, "dp4a", ((n + 255) // 256,), (256,), a, b, c, s, u, np.int32(n))
    sa, sb = a.view(np.int8).reshape(n, 4).astype(np.int64), b.view(np.int8).reshape(n, 4).astype(np.int64)
    ua, ub = a.view(np.uint8).reshape(n, 4).astype(np.int64), b.view(np.uint8).reshape(n, 4).astype(np.int64)
    want_s = ((sa * sb).sum(1) + c.astype(np.int64)) & 0xFFFFFFFF
    want_u = ((ua * ub).sum(1) + c.view(np.uint32).astype(np.int64)) & 0xFFFFFFFF
    np.testing.assert_array_equal(s.view(np.uint32), want_s.astype(np.uint32))
    np.testing.assert_array_equal(u, want_u.astype(np.uint32))


def dp2a_reference(a, b, c):
    """PTX dp2a.{lo,hi}: c + Σ_i a.half[i]·b.byte[i + 2·hi], wrapped to 32 bits; signed
    (.s32.s32) and unsigned (.u32.u32) forms: ([n, 2] int32 bits, [n, 2] uint32)."""
    n = len(a)
    sa, ua = a.view(np.int16).reshape(n, 2).astype(np.int64), a.view(np.uint16).reshape(n, 2).astype(np.int64)
    sb, ub = b.view(np.int8).reshape(n, 4).astype(np.int64), b.view(np.uint8).reshape(n, 4).astype(np.int64)
    cs, cu = c.astype(np.int64), c.view(np.uint32).astype(np.int64)
    s = np.stack([(sa * sb[:, 0:2]).sum(1) + cs, (sa * sb[:, 2:4]).sum(1) + cs], 1) & 0xFFFFFFFF
    u = np.stack([(ua * ub[:, 0:2]).sum(1) + cu, (ua * ub[:, 2:4]).sum(1) + cu], 1) & 0xFFFFFFFF
    return s.astype(np.uint32), u.astype(np.uint32)


def test_dp2a(mod):
    rng = np.random.default_rng(5)
    n = 4096
    a = rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32)
    b = rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32)
    c = rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32)
    # extremes: -32768·-128 pairs, 32767·127, all-ones, byte order (halves 1, 2 against bytes 1..4),
    # and an accumulator at the edge of wrapping
    a[:6] = np.array([0x80008000, 0x7FFF7FFF, 0xFFFFFFFF, 0x00020001, 0x80008000, 0], np.uint32).view(np.int32)
    b[:6] = np.array([0x80808080, 0x7F7F7F7F, 0xFFFFFFFF, 0x04030201, 0x7F7F7F7F, 0x01020304], np.uint32).view(np.int32)
    c[:6] = np.array([2**31 - 1, -(2**31), 0, -5, 0, 7], np.int32)
    want_s, want_u = dp2a_reference(a, b, c)
    assert want_s[3].view(np.int32).tolist() == [-5 + 1 * 1 + 2 * 2, -5 + 1 * 3 + 2 * 4]
    for kernel, args in (("dp2a", (a, b, c)), ("dp2a_vec", (a.view(np.int16).copy(), b.view(np.int8).copy(), c))):
        s, u = np.zeros(2 * n, np.int32), np.zeros(2 * n, np.uint32)
        launch(mod, kernel, ((n + 255) // 256,), (256,), *args, s, u, np.int32(n))
        np.testing.assert_array_equal(s.view(np.uint32).reshape(n, 2), want_s, err_msg=kernel)
        np.testing.assert_array_equal(u.reshape(n, 2), want_u, err_msg=kernel)


def test_float_to_int_rounding(mod):
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999998, 2.5000002, -7.7, 1e10, -1e10, np.nan, 8388609.0],
                 np.float32)
    rn, rz = np.zeros(len(x), np.int32), np.zeros(len(x), np.int32)
    launch(mod, "float_to_int", (1,), (len(x),), x, rn, rz, np.int32(len(x)))
    assert rn.tolist() == [0, 2, 2, 0, -2, -2, 2, 3, -8, 2**31 - 1, -(2**31), 0, 8388609]
    assert rz.tolist() == [0, 1, 2, 0, -1, -2, 2, 2, -7, 2**31 - 1, -(2**31), 0, 8388609]


def test_flush_to_zero(mod):
    x = np.array([1e-30, 1e-38, 3.0], np.float32)
    y = np.ones_like(x)
    launch(mod, "scale", (1,), (3,), x, y, np.float32(1e-10), np.int32(3))
    assert y[0] == 0.0 and y[1] == 0.0  # 1e-40 and 1e-48 are subnormal or below: flushed
    assert y[2] == np.float32(3.0) * np.float32(1e-10)


def test_math_intrinsics(mod):
    x = np.array([-2.0, -0.25, 0.0, 0.5, 1.0, 7.0], np.float32)
    n = len(x)
    y, bits = np.zeros(6 * n, np.float32), np.zeros(2 * n, np.int32)
    launch(mod, "math_mix", (1,), (n,), x, y, bits, np.int32(n))
    y = y.reshape(n, 6)
    np.testing.assert_array_equal(y[:, 0], 0)  # __expf is computed precisely
    np.testing.assert_allclose(y[:, 1], np.tanh(x), rtol=1e-6)
    np.testing.assert_allclose(y[:, 2], 1 / np.sqrt(np.abs(x) + 1), rtol=1e-6)
    np.testing.assert_array_equal(y[:, 3], np.clip(x, 0, 1))
    np.testing.assert_allclose(y[:, 4], x / 3, rtol=1e-6)
    i = np.arange(n)
    np.testing.assert_array_equal(y[:, 5], np.maximum(x, 0) + np.maximum(i, 2) - np.minimum(i, 2))
    u = x.view(np.uint32)
    assert bits[0::2].tolist() == [bin(int(v)).count("1") for v in u]
    assert bits[1::2].tolist() == [32 - int(v).bit_length() for v in u]


# ---- geometry and blocks on several OS threads ---------------------------------------------------


@pytest.mark.parametrize("grid,block", [((3,), (5,)), ((2, 3), (4, 2)), ((2, 2, 3), (3, 2, 4)), ((1, 1, 2), (1, 1, 64))])
def test_indices(mod, grid, block):
    g = (tuple(grid) + (1, 1))[:3]
    b = (tuple(block) + (1, 1))[:3]
    nb, nt = int(np.prod(g)), int(np.prod(b))
    out = np.zeros(12 * nb * nt, np.uint32)
    launch(mod, "indices", grid, block, out)
    out = out.reshape(nb, nt, 12)
    for bi in range(nb):
        bx, by, bz = bi % g[0], bi // g[0] % g[1], bi // (g[0] * g[1])
        for ti in range(nt):
            tx, ty, tz = ti % b[0], ti // b[0] % b[1], ti // (b[0] * b[1])
            assert out[bi, ti].tolist() == [tx, ty, tz, bx, by, bz, *b, *g]


def test_blocks_on_several_os_threads(mod, monkeypatch):
    blocks, threads, iters = 48, 128, 10
    results, runners = [], []
    for workers in ("1", "3"):
        monkeypatch.setenv("FERROLM_EMU_THREADS", workers)
        # __shared__ storage is per OS thread, so its address tells which thread ran a block. A
        # loaded machine may wake the pool late and leave every block to the caller: try again.
        for _ in range(20):
            acc = np.zeros(blocks * threads, np.float32)
            where = np.zeros(blocks, np.uint64)
            launch(mod, "barrier_loop", (blocks,), (threads,), np.int32(iters), acc, where)
            results.append(acc)
            if workers == "1" or len(set(where.tolist())) > 1:
                break
        runners.append(len(set(where.tolist())))
    assert runners[0] == 1 and runners[1] > 1
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    # the same values as a direct computation of the recurrence
    v = (np.arange(blocks)[:, None] + np.arange(threads)[None, :]).astype(np.float32)
    for _ in range(iters):
        v = np.float32(0.5) * (v + np.roll(v, -1, axis=1))
    np.testing.assert_array_equal(results[0], v.ravel())


def test_atomics_across_blocks(mod, monkeypatch):
    monkeypatch.setenv("FERROLM_EMU_THREADS", "4")
    count, fsum, imax, usum = np.zeros(1, np.int32), np.zeros(1, np.float32), np.full(1, -1, np.int32), np.zeros(1, np.uint64)
    launch(mod, "atomics", (64,), (96,), count, fsum, imax, usum)
    n = 64 * 96
    assert (count[0], fsum[0], imax[0], usum[0]) == (n, n * 0.5, n - 1, n * (n - 1) // 2)


def test_kernel_without_barriers(mod):
    n = 1000
    x, y = np.arange(n, dtype=np.float32), np.ones(n, np.float32)
    launch(mod, "axpy", ((n + 127) // 128,), (128,), np.float32(2.0), x, y, np.int32(n))
    np.testing.assert_array_equal(y, 2 * np.arange(n) + 1)


# ---- faults --------------------------------------------------------------------------------------


def test_divergent_barrier_is_an_error(mod):
    with pytest.raises(ferrolm.DeviceError, match=r"kernel 'early_exit'.*barrier divergence: 10 of 64 threads .*barriers.cu:"):
        launch(mod, "early_exit", (1,), (64,), np.zeros(64, np.int32), np.int32(10))
    out = np.zeros(64, np.int32)
    launch(mod, "early_exit", (1,), (64,), out, np.int32(64))  # everyone reaches it: fine
    assert out.sum() == 64


def test_different_barriers_are_an_error(mod):
    with pytest.raises(ferrolm.DeviceError, match=r"split_barrier.*different __syncthreads: thread \(0,0,0\) at barriers.cu:\d+, thread \(16,0,0\)"):
        launch(mod, "split_barrier", (1,), (32,), np.zeros(32, np.int32))


@pytest.mark.parametrize("mode,what", [(0, r"__trap\(\)"), (1, r"assertion 'out\[0\] == 12345' failed")])
def test_trap_and_assert_are_errors(mod, mode, what):
    out = np.zeros(8 * 32, np.int32)
    with pytest.raises(ferrolm.DeviceError, match=rf"kernel 'faulty', block \(5,0,0\), thread \(7,0,0\): {what}.* at barriers.cu:\d+"):
        launch(mod, "faulty", (8,), (32,), out, np.int32(5), np.int32(7), np.int32(mode))
    launch(mod, "faulty", (8,), (32,), out, np.int32(-1), np.int32(0), np.int32(0))  # the module still works
    assert (out == 7).all()


def test_shuffle_with_exited_lane_is_an_error(mod):
    with pytest.raises(ferrolm.DeviceError, match=r"__shfl_xor_sync with mask 0xffffffff names lane 3, thread \(3,0,0\), which has exited"):
        launch(mod, "shuffle_after_exit", (1,), (32,), np.zeros(32, np.int32))


def test_shuffle_against_barrier_is_a_deadlock(mod):
    with pytest.raises(ferrolm.DeviceError, match=r"deadlock: thread \(0,0,0\) waits in __shfl_sync .* for lane 1, thread \(1,0,0\), which waits at __syncthreads"):
        launch(mod, "shuffle_vs_barrier", (1,), (32,), np.zeros(32, np.int32))


# ---- arguments and launch checks -----------------------------------------------------------------


def test_scalar_arguments_round_trip(mod):
    out = np.zeros(5, np.float64)
    launch(mod, "scalars", (1,), (1,), np.int32(-3), np.uint32(4000000000), np.int64(-(2**40)), np.float32(0.25),
           np.float64(1e300), out)
    assert out.tolist() == [-3, 4000000000, -(2**40), 0.25, 1e300]


@pytest.mark.parametrize(
    "index,value,match",
    [
        (0, 3, r"parameter 0: expects np.int32, got Python int"),
        (0, np.int64(3), r"parameter 0: expects np.int32, got np.int64"),
        (1, np.int32(3), r"parameter 1: expects np.uint32, got np.int32"),
        (3, 0.5, r"parameter 3: expects np.float32, got Python float"),
        (4, np.float32(1), r"parameter 4: expects np.float64, got np.float32"),
        (2, np.zeros(1, np.int64), r"parameter 2: expects a 8-byte signed integer scalar, got an array"),
        (5, np.int32(0), r"parameter 5: expects a pointer"),
        (5, np.zeros((4, 4))[:, 1], r"parameter 5: the array must be C-contiguous"),
    ],
)
def test_argument_checks(mod, index, value, match):
    args = [np.int32(1), np.uint32(2), np.int64(3), np.float32(4), np.float64(5), np.zeros(5)]
    args[index] = value
    with pytest.raises(ferrolm.DeviceError, match=r"kernel 'scalars', " + match):
        launch(mod, "scalars", (1,), (1,), *args)


def test_launch_checks(mod):
    k = mod.get_function("axpy")
    args = (np.float32(1), np.zeros(4, np.float32), np.zeros(4, np.float32), np.int32(4))
    with pytest.raises(ferrolm.DeviceError, match="takes 4 arguments, got 3"):
        k((1,), (4,), args[:3])
    with pytest.raises(ferrolm.DeviceError, match=r"block.x = 1025 exceeds 1024"):
        k((1,), (1025,), args)
    with pytest.raises(ferrolm.DeviceError, match=r"block \(32, 33, 1\) has 1056 threads, more than 1024"):
        k((1,), (32, 33), args)
    with pytest.raises(ferrolm.DeviceError, match=r"grid must be a tuple"):
        k("1", (4,), args)
    with pytest.raises(ferrolm.DeviceError, match="must hold positive ints"):
        k((0,), (4,), args)
    with pytest.raises(ferrolm.DeviceError, match="shared_mem"):
        k((1,), (4,), args, shared_mem=228 * 1024)
    with pytest.raises(ferrolm.DeviceError, match="no kernel named 'nope'"):
        mod.get_function("nope")
    with pytest.raises(ferrolm.DeviceError, match="not aligned to the 16 bytes"):
        mod.get_function("copy4")((1,), (1,), (np.zeros(9, np.float32)[1:], np.zeros(8, np.float32)))


# ---- building ------------------------------------------------------------------------------------


def test_build_is_cached(mod):
    again = EmulatedModule(source(), [KERNELS], name="emu_tests")
    assert not again.compiled and again.path == mod.path
    # comments do not change what the compiler sees, so the key is the same
    assert not EmulatedModule(source() + "\n// a comment\n", [KERNELS], name="emu_tests").compiled


def test_compile_error_names_the_file(mod):
    code = source() + '#line 1 "broken_kernel.cu"\n#include "emu_test.cuh"\nextern "C" __global__ void k(int* p) { p[0] = undefined_name; }\nFL_EXPORT(k)\n'
    with pytest.raises(ferrolm.DeviceError, match=r"(?s)compiling CUDA kernels.*broken_kernel.cu:2:.*undefined_name"):
        EmulatedModule(code, [KERNELS], name="emu_tests_broken")


def test_stack_overflow_is_an_error(mod):
    out = np.zeros(4, np.int32)
    launch(mod, "recurse", (1,), (4,), np.int32(20), out)  # 20 KiB of frames fit in 64 KiB
    assert out.tolist() == [sum(range(21))] * 4
    with pytest.raises(ferrolm.DeviceError, match=r"kernel 'recurse', block \(0,0,0\), thread \(0,0,0\): stack overflow \(64 KiB"):
        launch(mod, "recurse", (1,), (4,), np.int32(200), out)


def test_wild_pointer_is_an_error(mod):
    out = np.zeros(32, np.int32)
    with pytest.raises(ferrolm.DeviceError, match=r"thread \(5,0,0\): invalid memory access at address 0x10 \(SIGSEGV\)"):
        launch(mod, "wild_write", (1,), (32,), np.uint64(16), np.int32(5), out)
    launch(mod, "wild_write", (1,), (32,), np.uint64(0), np.int32(-1), out)  # the process and module go on
    assert (out == 2).all()


def test_missing_compiler_is_an_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-x")
    with pytest.raises(ferrolm.DeviceError, match=r"needs a C\+\+17 compiler \(g\+\+\).*'no-such-compiler-x' was not found"):
        EmulatedModule(source(), [KERNELS])
