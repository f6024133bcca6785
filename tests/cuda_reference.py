"""NumPy references of the CUDA kernels (python/ferrolm/cuda/*.cu), written to mirror the CPU
core's math (rust/kernels/*.rs)."""

from __future__ import annotations

import numpy as np


# --- number formats ---------------------------------------------------------------------------


def to_bf16(x: np.ndarray) -> np.ndarray:
    """f32 → bf16 bits (uint16), round to nearest even (finite inputs), as quant.rs."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


#: The CPU core's 16-bit activation range and smallest quantized group max
#: (matmul_int8_kernels.rs: A16_MAX, MIN_AMAX).
A16_MAX = np.float32(32639.0)
MIN_AMAX = np.float32(1e-30)


def quantize_x16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W8A16 activation quantization of the rows of x: [m, k] (f32), exactly as the CPU core's
    quantize_rows_a16_impl: (x16: [m, kp] int16, zero from k on; xs: [m, ng] f32), groups of
    32, ng = ceil(k / 32), kp = 32·ng."""
    x = np.asarray(x, dtype=np.float32)
    m, k = x.shape
    ng = -(-k // 32)
    x16 = np.zeros((m, 32 * ng), np.int16)
    xs = np.zeros((m, ng), np.float32)
    for i in range(m):
        for g in range(ng):
            xg = x[i, 32 * g : 32 * g + 32]
            abits = int((xg.view(np.uint32) & 0x7FFFFFFF).max())
            if abits >= 0x7F800000:
                xs[i, g] = np.float32(np.nan)
                continue
            amax = np.uint32(abits).view(np.float32)
            if amax < MIN_AMAX:
                continue
            inv = A16_MAX / amax
            x16[i, 32 * g : 32 * g + len(xg)] = np.clip(np.rint(xg * inv), -A16_MAX, A16_MAX).astype(np.int16)
            xs[i, g] = amax / A16_MAX
    return x16, xs


def f16_scales(rng, shape, lo: float = 0.001, hi: float = 0.02):
    """INT8 weight scales as the core stores them: IEEE halves. Returns (bits: uint16, the
    same values as f32)."""
    h = rng.uniform(lo, hi, shape).astype(np.float16)
    return h.view(np.uint16), h.astype(np.float32)


def w8a16(x16: np.ndarray, xs: np.ndarray, wq: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """Σ_g (xs·ws in f32) · (exact integer group sum), summed in float64: y: [m, n]. x16: [m, kp]
    (zero past k), wq: [n, k], ws: [n, ng] (f32 values), groups of 32."""
    n, k = wq.shape
    ng = ws.shape[1]
    y = np.zeros((x16.shape[0], n), np.float64)
    xi, wi = x16[:, :k].astype(np.int64), wq.astype(np.int64)
    for g in range(ng):
        sl = slice(32 * g, min(k, 32 * g + 32))
        isum = xi[:, sl] @ wi[:, sl].T  # exact
        d = (xs[:, g : g + 1] * ws[:, g][None, :]).astype(np.float32)
        y += isum.astype(np.float64) * d.astype(np.float64)
    return y


# --- model steps ------------------------------------------------------------------------------


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    inv = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    return w * (x * inv)


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """rope.rs Rope::new: theta^(−2i / head_dim) in float64 (theta as f32)."""
    t = float(np.float32(theta))
    return np.array([t ** (-(2 * i) / head_dim) for i in range(head_dim // 2)], np.float64)


def rope(x: np.ndarray, pos: int, freqs: np.ndarray, head_dim: int) -> np.ndarray:
    """rotate_half RoPE of the heads of one row x: [heads·head_dim] at position pos, in f32 as
    rope.rs (angles in float64, cos/sin rounded to f32)."""
    half = head_dim // 2
    a = pos * freqs
    c, s = np.cos(a).astype(np.float32), np.sin(a).astype(np.float32)
    h = x.astype(np.float32).reshape(-1, head_dim).copy()
    x1, x2 = h[:, :half].copy(), h[:, half:].copy()
    h[:, :half] = x1 * c - x2 * s
    h[:, half:] = x2 * c + x1 * s
    return h.reshape(-1)


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int, n_heads: int,
              n_kv_heads: int, head_dim: int, scale: float) -> np.ndarray:
    """Causal GQA attention of q: [t, n_heads·head_dim] (row i at position pos + i) over the
    cache [·, n_kv_heads·head_dim], float64 softmax: out: [t, n_heads·head_dim]."""
    t = q.shape[0]
    rep = n_heads // n_kv_heads
    out = np.zeros((t, n_heads * head_dim), np.float64)
    for i in range(t):
        n_ctx = pos + i + 1
        for h in range(n_heads):
            g = h // rep
            qh = q[i, h * head_dim : (h + 1) * head_dim].astype(np.float64)
            kh = k_cache[:n_ctx, g * head_dim : (g + 1) * head_dim].astype(np.float64)
            vh = v_cache[:n_ctx, g * head_dim : (g + 1) * head_dim].astype(np.float64)
            s = scale * (kh @ qh)
            p = np.exp(s - s.max())
            out[i, h * head_dim : (h + 1) * head_dim] = (p / p.sum()) @ vh
    return out


def silu_mul(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    g = g.astype(np.float64)
    return g / (1.0 + np.exp(-g)) * u


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


# --- comparison -------------------------------------------------------------------------------


def assert_close(got: np.ndarray, want: np.ndarray, rel: float, what: str = "") -> None:
    """max |got − want| ≤ rel · max |want| (the tolerance relative to the output's scale)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.all(np.isfinite(got)), f"{what}: non-finite output"
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-30)
    err = float(np.abs(got - want).max(initial=0.0))
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:g} × scale {scale:.3g}"
