"""NumPy reference of the INT8 weight quantizer (rust/kernels/quant.rs): per row and group of 32,
the scale f16(max|w| / (127 + j)) (rounded to the nearest half, saturating at 65504), j in
SCALE_SEARCH, with the least squared error (the first on ties: j = 0, -1, ..., -16; a
candidate that rounds to 0 is skipped), and q = round(w / scale), half away from zero, in
[-127, 127]."""

from __future__ import annotations

import numpy as np

SCALE_SEARCH = list(range(0, -17, -1))


def squared_error(g: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Σ (clamp(round_half_even(w · (1/s))) · s − w)² over the last axis of g: [..., 32], in the
    core's float32 order (eight partial sums over elements l, l+8, l+16, l+24, then added in
    turn)."""
    inv = (np.float32(1) / s).astype(np.float32)
    q = np.clip(np.rint((g * inv[..., None]).astype(np.float32)), -127, 127).astype(np.float32)
    d = ((q * s[..., None]).astype(np.float32) - g).astype(np.float32)
    sq = (d * d).astype(np.float32).reshape(*g.shape[:-1], g.shape[-1] // 8, 8)
    acc = np.zeros(sq.shape[:-2] + (8,), np.float32)
    for c in range(sq.shape[-2]):
        acc = (acc + sq[..., c, :]).astype(np.float32)
    total = np.zeros(acc.shape[:-1], np.float32)
    for lane in range(8):
        total = (total + acc[..., lane]).astype(np.float32)
    return total


def to_f16(s: np.ndarray) -> np.ndarray:
    """The scales as the core stores them: nearest f16 (ties to even), saturating at 65504,
    widened back to float32."""
    return np.minimum(s, np.float32(65504)).astype(np.float16).astype(np.float32)


def quantize_int8(w: np.ndarray):
    """w: [rows, k] float32 (k a multiple of 32) -> (q: [rows, k] int8, scale: [rows, k/32]
    float32 holding f16 values, margin: [rows, k/32] float32). margin is the relative gap between the chosen
    scale's squared error and the next best candidate's: a group whose margin is tiny may pick
    the other scale when w differs in a last bit."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    rows, k = w.shape
    g = w.reshape(rows, k // 32, 32)
    amax = np.abs(g).max(axis=-1)
    safe = np.where(amax > 0, amax, np.float32(1))
    cands = np.stack([to_f16((safe / np.float32(127 + j)).astype(np.float32)) for j in SCALE_SEARCH])
    with np.errstate(divide="ignore", invalid="ignore"):
        errs = np.stack([np.where(c > 0, squared_error(g, c), np.float32(np.inf)) for c in cands])
    best = np.argmin(errs, axis=0)  # first minimum: the search order
    scale = np.where(amax > 0, np.take_along_axis(cands, best[None], axis=0)[0], np.float32(0))
    # the next best distinct scale (several j can round to the same f16 scale)
    first = np.take_along_axis(errs, best[None], axis=0)[0]
    other = np.where(cands == scale[None], np.float32(np.inf), errs).min(axis=0)
    margin = (other - first) / np.maximum(first, np.float32(1e-30))
    y = g / np.where(scale > 0, scale, np.float32(1))[..., None]
    q = np.clip(np.sign(y) * np.floor(np.abs(y) + np.float32(0.5)), -127, 127).astype(np.int8)
    return q.reshape(rows, k), scale.astype(np.float32), margin
