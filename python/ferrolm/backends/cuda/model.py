"""The forward pass on the device: the same steps as the core's `forward.rs`, as kernel
launches (docs/cuda.md lists the kernels, their arguments and launch geometry).

    x = embed(ids) (+ wpe)                                  [t, d]
    per layer:  xn = norm(x); qkv = xn·Wqkvᵀ; RoPE q, k; k, v → cache
                att = attention(q, cache)                   (split along the keys, combined)
                x += att·Woᵀ; xn = norm(x); up = xn·Wupᵀ
                h = silu(gate)·up | gelu(up);  x += h·Wdownᵀ
    logits = norm(x[last])·Wheadᵀ                          [vocab] (or every row)

Every launch reads the chunk's first position from a device int (`pos`), so the decode step
(one token) is captured once per session and replayed (a CUDA graph on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional

import numpy as np

from ...errors import DeviceError, MemoryLimitError
from .weights import BufferStore, DeviceLinear, DeviceNorm, upload_model

if TYPE_CHECKING:
    from ... import _core
    from .runtime import Runtime

#: Tokens per prefill step (as on the CPU).
PREFILL_CHUNK = 256
#: Decode attention splits the keys into chunks of at least this many positions, and into at
#: most MAX_SPLITS chunks.
KEY_CHUNK_MIN = 128
MAX_SPLITS = 64
#: GEMV kernels take at most this many activation rows; more rows use the GEMM kernels.
GEMV_ROWS = 4
#: The attention kernels' largest head (docs/cuda.md).
MAX_HEAD_DIM = 256

i32, f32 = np.int32, np.float32


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class Shape:
    arch: str
    vocab: int
    d: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    max_positions: int

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def qkv_dim(self) -> int:
        return self.q_dim + 2 * self.kv_dim


class DeviceModel:
    """A core model's weights on the device, and the launches of a forward pass."""

    def __init__(self, core: "_core.Model", runtime: "Runtime", store: BufferStore) -> None:
        self.core = core
        self.rt = runtime
        self.shape = Shape(core.arch, core.vocab_size, core.hidden_size, core.num_layers, core.num_heads,
                           core.num_kv_heads, core.head_dim, core.intermediate_size, core.max_position_embeddings)
        if self.shape.head_dim % 2 or not 2 <= self.shape.head_dim <= MAX_HEAD_DIM:
            raise DeviceError(f"head_dim {self.shape.head_dim} has no CUDA attention kernel (even, at most {MAX_HEAD_DIM})")
        self.m: Dict[str, Any] = upload_model(core, store)
        inv = core.rope_inv_freq
        self.inv_freq = runtime.upload(np.asarray(inv, dtype=np.float64)) if inv is not None else None
        self.lm_head: DeviceLinear = self.m.get("lm_head") or self.m["embed"]
        self.up_out = self.m["layers.0.up"].n if self.shape.n_layers else 0
        self.max_rank = max((r for v in self.m.values() if isinstance(v, DeviceLinear) for _, _, r, _, _, _ in v.lora), default=0)
        s = self.shape
        #: inputs of the widest matmul, rounded up to whole groups of 32 (a row of x16)
        self.max_kp = 32 * _cdiv(max(s.d, s.q_dim, s.ffn), 32)

    # -- per-session buffers ---------------------------------------------------------------------
    def key_chunk(self, context: int) -> int:
        return max(KEY_CHUNK_MIN, _cdiv(context, MAX_SPLITS))

    def state_bytes(self, context: int) -> int:
        s, rows = self.shape, PREFILL_CHUNK
        splits = _cdiv(context, self.key_chunk(context))
        floats = (
            2 * s.n_layers * context * s.kv_dim
            + rows * (2 * s.d + s.qkv_dim + s.q_dim + self.up_out + s.ffn + self.max_rank)
            + max(rows, splits) * s.n_heads * (s.head_dim + 2)
            + rows * self.max_kp // 32
            + s.vocab
        )
        return 4 * floats + 2 * rows * self.max_kp + 4 * (rows + 1)

    def new_state(self, context: int) -> "DeviceState":
        need = self.state_bytes(context)
        free = self.rt.free_bytes()
        if need > free:
            raise MemoryLimitError(
                f"a CUDA session of {context} positions needs {need / 2**20:.1f} MiB of device memory "
                f"(KV cache and activations); {free / 2**20:.1f} MiB are free"
            )
        return DeviceState(self, context)

    # -- the forward pass --------------------------------------------------------------------------
    def forward(self, st: "DeviceState", t: int, from_embeds: bool, all_rows: bool, splits: Optional[int]) -> None:
        """Runs the `t` rows staged in `st` (ids in st.ids, or embeddings already in st.x) at
        the position in st.pos; writes the last row's logits to st.logits, or every row's to
        st.all_logits when `all_rows`. `splits`: the key splits of attention (None: one)."""
        s, rt, m = self.shape, self.rt, self.m
        d = s.d
        embed = m["embed"]
        wpe = m.get("pos_embed")
        if from_embeds:
            if wpe is not None:
                rt.launch("add_pos_embed", (t,), (256,), (wpe, st.pos, st.x, i32(d)))
        elif embed.precision == "int8":
            rt.launch("embed_q8", (t,), (256,), (st.ids, embed.weight, embed.scales, i32(embed.group), wpe, st.pos, st.x, i32(d)))
        else:
            name = "embed_bf16" if embed.precision == "bf16" else "embed_f32"
            rt.launch(name, (t,), (256,), (st.ids, embed.weight, wpe, st.pos, st.x, i32(d)))

        n_splits = splits or 1
        chunk = st.key_chunk if splits else st.context
        scale = f32(1.0) / np.sqrt(f32(s.head_dim), dtype=np.float32)
        inv_freq = self.inv_freq
        for li in range(s.n_layers):
            p = f"layers.{li}."
            kc, vc = st.layer_cache(li)
            self.norm(m[p + "attn_norm"], st.x, d, st.xn, t)
            self.matmul(st, m[p + "qkv"], st.xn, d, t, st.qkv, s.qkv_dim, accumulate=False)
            rt.launch("rope_store_kv", (t,), (128,), (st.qkv, i32(s.qkv_dim), i32(t), st.pos, inv_freq, i32(s.n_heads),
                                                     i32(s.n_kv_heads), i32(s.head_dim), kc, vc))
            rt.launch("attention_partial", (s.n_heads, t, n_splits), (128,),
                      (st.qkv, i32(s.qkv_dim), kc, vc, st.pos, i32(t), i32(s.n_heads), i32(s.n_kv_heads), i32(s.head_dim),
                       scale, i32(chunk), st.part_o, st.part_ml))
            rt.launch("attention_combine", (s.n_heads, t), (128,),
                      (st.part_o, st.part_ml, i32(t), i32(s.n_heads), i32(s.head_dim), i32(n_splits), st.att, i32(s.q_dim)))
            self.matmul(st, m[p + "o"], st.att, s.q_dim, t, st.x, d, accumulate=True)
            self.norm(m[p + "mlp_norm"], st.x, d, st.xn, t)
            self.matmul(st, m[p + "up"], st.xn, d, t, st.up, self.up_out, accumulate=False)
            if s.arch == "llama":
                rt.launch("silu_mul", (_cdiv(s.ffn, 256), t), (256,), (st.up, i32(self.up_out), st.act, i32(s.ffn), i32(t), i32(s.ffn)))
                h = st.act
            else:
                rt.launch("gelu_tanh", (_cdiv(t * s.ffn, 256),), (256,), (st.up, i32(t * s.ffn)))
                h = st.up
            self.matmul(st, m[p + "down"], h, s.ffn, t, st.x, d, accumulate=True)

        if all_rows:
            self.norm(m["final_norm"], st.x, d, st.xn, t)
            self.matmul(st, self.lm_head, st.xn, d, t, st.all_logits, s.vocab, accumulate=False)
        else:
            self.norm(m["final_norm"], st.x[(t - 1) * d:], d, st.xn, 1)
            self.matmul(st, self.lm_head, st.xn, d, 1, st.logits, s.vocab, accumulate=False)

    def norm(self, n: DeviceNorm, x: Any, ldx: int, out: Any, t: int) -> None:
        d = self.shape.d
        if n.bias is None:
            self.rt.launch("rms_norm", (t,), (256,), (x, i32(ldx), n.weight, out, i32(d), f32(n.eps)))
        else:
            self.rt.launch("layer_norm", (t,), (256,), (x, i32(ldx), n.weight, n.bias, out, i32(d), f32(n.eps)))

    def matmul(self, st: "DeviceState", lin: DeviceLinear, x: Any, ldx: int, m: int, y: Any, ldy: int, *, accumulate: bool) -> None:
        """y[:m, :n] (+)= x[:m, :k]·wᵀ + bias, then each unmerged adapter adds scale·(x·aᵀ)·bᵀ
        to its rows. INT8 is W8A16: x quantized to 16 bits per group of 32 (`quantize_a16`), then
        the integer matmul."""
        rt, k, n = self.rt, lin.k, lin.n
        gemv = m <= GEMV_ROWS
        grid = (_cdiv(n, 4),) if gemv else (_cdiv(n, 64), _cdiv(m, 64))
        block = (128,) if gemv else (256,)
        kind = "gemv" if gemv else "gemm"
        acc = i32(1 if accumulate else 0)
        if lin.precision == "int8":
            rt.launch("quantize_a16", (_cdiv(_cdiv(k, 32), 4), m), (128,), (x, i32(ldx), st.x16, st.xs, i32(m), i32(k)))
            rt.launch(f"{kind}_w8a16", grid, block, (st.x16, st.xs, lin.weight, lin.scales, lin.bias, y, i32(ldy),
                                                    i32(m), i32(k), i32(n), f32(1.0), acc))
        else:
            name = f"{kind}_bf16" if lin.precision == "bf16" else f"{kind}_f32"
            rt.launch(name, grid, block, (x, i32(ldx), lin.weight, lin.bias, y, i32(ldy), i32(m), i32(k), i32(n), f32(1.0), acc))
        for row0, rows, rank, scale, a, b in lin.lora:
            self.f32_matmul(x, ldx, a, st.lora_tmp, rank, m, k, rank, 1.0, False)
            self.f32_matmul(st.lora_tmp, rank, b, y[row0:], ldy, m, rank, rows, scale, True)

    def f32_matmul(self, x: Any, ldx: int, w: Any, y: Any, ldy: int, m: int, k: int, n: int, alpha: float, accumulate: bool) -> None:
        gemv = m <= GEMV_ROWS
        grid = (_cdiv(n, 4),) if gemv else (_cdiv(n, 64), _cdiv(m, 64))
        self.rt.launch("gemv_f32" if gemv else "gemm_f32", grid, (128,) if gemv else (256,),
                       (x, i32(ldx), w, None, y, i32(ldy), i32(m), i32(k), i32(n), f32(alpha), i32(1 if accumulate else 0)))


class DeviceState:
    """One session's device buffers: the KV cache, activations for a prefill chunk, the
    attention partials, logits, and the staged token ids and position."""

    def __init__(self, model: DeviceModel, context: int) -> None:
        rt, s, rows = model.rt, model.shape, PREFILL_CHUNK
        self.context = context
        self.key_chunk = model.key_chunk(context)
        self.max_splits = _cdiv(context, self.key_chunk)
        self.cache_k = rt.zeros(s.n_layers * context * s.kv_dim, np.float32)
        self.cache_v = rt.zeros(s.n_layers * context * s.kv_dim, np.float32)
        self.x = rt.zeros(rows * s.d, np.float32)
        self.xn = rt.zeros(rows * s.d, np.float32)
        self.qkv = rt.zeros(rows * s.qkv_dim, np.float32)
        self.att = rt.zeros(rows * s.q_dim, np.float32)
        self.up = rt.zeros(rows * max(model.up_out, 1), np.float32)
        self.act = rt.zeros(rows * max(s.ffn, 1), np.float32)
        self.x16 = rt.zeros(rows * model.max_kp, np.int16)  # INT8's x: [rows, kp] (16-byte aligned)
        self.xs = rt.zeros(rows * model.max_kp // 32, np.float32)
        self.lora_tmp = rt.zeros(rows * max(model.max_rank, 1), np.float32)
        parts = max(rows, self.max_splits) * s.n_heads
        self.part_o = rt.zeros(parts * s.head_dim, np.float32)
        self.part_ml = rt.zeros(parts * 2, np.float32)
        self.logits = rt.zeros(s.vocab, np.float32)
        self.all_logits: Any = None
        self.ids = rt.zeros(rows, np.int32)
        self.pos = rt.zeros(1, np.int32)
        self.token = rt.zeros(2, np.int32)  # argmax_f32's (token, host decides)
        self._layer = s.n_layers and context * s.kv_dim

    def layer_cache(self, li: int) -> "tuple[Any, Any]":
        at = li * self._layer
        return self.cache_k[at:], self.cache_v[at:]
