"""File formats the fuzzer mutates: JSON documents, safetensors files and GGUF files.

Every mutation is a small JSON-able op (journaled with the case) applied to the fixture's parsed
structure and/or to the serialized bytes, so a case is reproduced from its journal entry alone.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .values import decode

# -- JSON documents -----------------------------------------------------------------------------

_MISSING = object()


def json_paths(doc: Any, max_depth: int = 3, max_items: int = 12) -> List[List[Any]]:
    """Paths (lists of keys / indexes) into `doc`, up to `max_depth` deep; long lists and dicts
    contribute their first `max_items` entries."""
    out: List[List[Any]] = []

    def walk(node: Any, path: List[Any]) -> None:
        if len(path) >= max_depth:
            return
        if isinstance(node, dict):
            items = list(node.items())[:max_items]
        elif isinstance(node, list):
            items = list(enumerate(node))[:max_items]
        else:
            return
        for k, v in items:
            out.append(path + [k])
            walk(v, path + [k])

    walk(doc, [])
    return out


def _parent(doc: Any, path: List[Any]) -> Tuple[Any, Any]:
    node = doc
    for k in path[:-1]:
        if isinstance(node, dict) and k in node:
            node = node[k]
        elif isinstance(node, list) and isinstance(k, int) and 0 <= k < len(node):
            node = node[k]
        else:
            return None, None
    return node, path[-1]


def apply_json_ops(doc: Any, ops: List[Dict[str, Any]]) -> Any:
    """Applies structural ops to a deep copy of `doc`: set / delete / append at a path, or
    replace the root."""
    doc = json.loads(json.dumps(doc))
    for op in ops:
        kind = op["op"]
        if kind == "root":
            doc = decode(op["value"])
            continue
        path = op["path"]
        if not path:
            continue
        parent, key = _parent(doc, path)
        if isinstance(parent, dict):
            if kind == "set":
                parent[key] = decode(op["value"])
            elif kind == "del":
                parent.pop(key, None)
            elif kind == "append" and isinstance(parent.get(key), list):
                parent[key].append(decode(op["value"]))
        elif isinstance(parent, list) and isinstance(key, int) and 0 <= key < len(parent):
            if kind == "set":
                parent[key] = decode(op["value"])
            elif kind == "del":
                del parent[key]
            elif kind == "append" and isinstance(parent[key], list):
                parent[key].append(decode(op["value"]))
    return doc


def apply_text_ops(blob: bytes, ops: List[Dict[str, Any]]) -> bytes:
    """Byte-level ops on a serialized document: truncate, splice, deep nesting."""
    for op in ops:
        kind = op["op"]
        n = len(blob)
        if kind == "truncate":
            blob = blob[: op["at"] % (n + 1)]
        elif kind == "splice":
            at = op["at"] % (n + 1)
            blob = blob[:at] + bytes.fromhex(op["insert"]) + blob[at + op.get("delete", 0):]
        elif kind == "nest":
            d = op["depth"]
            blob = (op.get("open", "[") * d + op.get("close", "]") * d).encode()
        elif kind == "bom":
            blob = b"\xef\xbb\xbf" + blob
    return blob


def dump_json(doc: Any) -> bytes:
    return json.dumps(doc, indent=1).encode("utf-8", "surrogatepass")


# -- safetensors --------------------------------------------------------------------------------

ST_NUMPY = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1"}


@dataclass
class SafeTensors:
    header: Dict[str, Any]  # insertion-ordered; may hold "__metadata__"
    data: bytes

    @classmethod
    def parse(cls, blob: bytes) -> "SafeTensors":
        n = int.from_bytes(blob[:8], "little")
        return cls(json.loads(blob[8 : 8 + n]), blob[8 + n :])

    def names(self) -> List[str]:
        return [k for k in self.header if k != "__metadata__"]

    def serialize(self, pad: bool = True) -> bytes:
        blob = json.dumps(self.header, separators=(",", ":")).encode("utf-8", "surrogatepass")
        if pad:
            blob += b" " * (-len(blob) % 8)
        return len(blob).to_bytes(8, "little") + blob + self.data


def _encode(values: np.ndarray, dtype: str) -> bytes:
    v = np.asarray(values, dtype=np.float64)
    if dtype == "BF16":
        bits = np.asarray(v, dtype=np.float32).view(np.uint32)
        return (bits >> 16).astype("<u2").tobytes()
    if dtype == "I8":
        return np.clip(np.nan_to_num(np.round(v)), -128, 127).astype("i1").tobytes()
    with np.errstate(over="ignore", invalid="ignore"):
        return v.astype(ST_NUMPY[dtype]).tobytes()


def _rebuild(st: SafeTensors, arrays: Dict[str, Tuple[bytes, str, List[int]]]) -> SafeTensors:
    """A consistent file from (bytes, dtype, shape) per tensor, offsets recomputed in order."""
    header: Dict[str, Any] = {}
    if "__metadata__" in st.header:
        header["__metadata__"] = st.header["__metadata__"]
    data = bytearray()
    for name, (raw, dtype, shape) in arrays.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return SafeTensors(header, bytes(data))


def mutate_safetensors(blob: bytes, semantic: List[Dict[str, Any]], raw_ops: List[Dict[str, Any]]) -> bytes:
    """Applies `semantic` ops (on the parsed header and values) then `raw_ops` (on the bytes).

    Semantic ops refer to tensors by position (`t`, taken modulo the tensor count):
      convert {t, dtype}            re-encode a tensor's values in another float dtype (consistent)
      values {t, fill, every}       overwrite every n-th value with nan/inf/-inf/huge/tiny/zero
      reshape {t, shape}            a consistent new shape (same element count)
      set {t, field, value}         any header field of a tensor to any value (inconsistent)
      del_field {t, field}; rename {t, to}; drop {t}; add {name, entry}; metadata {value}
      add_empty {name, shape, dtype}  a zero-element tensor (a 0 dim next to any other) at the data's end
    Raw ops: header_len {value}, byte {region, off, value}, truncate {region, off}, append {hex},
      splice_header {off, insert}; regions are "len", "header", "data" or "any".
    """
    st = SafeTensors.parse(blob)
    names = st.names()
    arrays = None
    edited = False  # after a header edit the values are no longer re-encoded
    for op in semantic:
        kind = op["op"]
        if kind in ("convert", "values", "reshape"):
            if edited:
                continue
            if arrays is None:
                arrays = {n: (st.data[st.header[n]["data_offsets"][0] : st.header[n]["data_offsets"][1]], st.header[n]["dtype"], list(st.header[n]["shape"])) for n in names}
            name = names[op["t"] % len(names)]
            raw, dtype, shape = arrays[name]
            if kind == "convert":
                vals = _decode_raw(raw, dtype)
                arrays[name] = (_encode(vals, op["dtype"]), op["dtype"], shape)
            elif kind == "values":
                vals = _decode_raw(raw, dtype).astype(np.float64)
                fill = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 3.0e38, "tiny": 1e-45, "zero": 0.0, "big": 1e30}[op["fill"]]
                vals[:: max(1, op["every"])] = fill
                arrays[name] = (_encode(vals, dtype), dtype, shape)
            else:
                arrays[name] = (raw, dtype, list(op["shape"]))
            st = _rebuild(st, arrays)
            continue
        edited = True
        if kind == "set":
            name = names[op["t"] % len(names)]
            entry = st.header.get(name)
            if isinstance(entry, dict):
                entry[op["field"]] = decode(op["value"])
        elif kind == "del_field":
            entry = st.header.get(names[op["t"] % len(names)])
            if isinstance(entry, dict):
                entry.pop(op["field"], None)
        elif kind == "rename":
            old = names[op["t"] % len(names)]
            if old in st.header:
                st.header = {(op["to"] if k == old else k): v for k, v in st.header.items()}
                names = st.names()
        elif kind == "drop":
            st.header.pop(names[op["t"] % len(names)], None)
            names = st.names() or names
        elif kind == "add":
            st.header[op["name"]] = decode(op["entry"])
            names = st.names()
        elif kind == "add_empty":  # a consistent zero-element tensor at the end of the data
            end = len(st.data)
            st.header[op["name"]] = {"dtype": op.get("dtype", "F32"), "shape": list(op["shape"]), "data_offsets": [end, end]}
            names = st.names()
        elif kind == "metadata":
            st.header["__metadata__"] = decode(op["value"])
    out = bytearray(st.serialize(pad=not any(o["op"] == "nopad" for o in semantic)))
    header_end = 8 + int.from_bytes(out[:8], "little")
    for op in raw_ops:
        kind = op["op"]
        regions = {"len": (0, 8), "header": (8, header_end), "data": (header_end, len(out)), "any": (0, len(out))}
        lo, hi = regions.get(op.get("region", "any"), (0, len(out)))
        pos = lo + (op.get("off", 0) % max(1, hi - lo))
        if kind == "header_len":
            out[:8] = (op["value"] % 2**64).to_bytes(8, "little")
        elif kind == "byte" and pos < len(out):
            out[pos] = op["value"] & 0xFF
        elif kind == "truncate":
            del out[pos:]
        elif kind == "append":
            out += bytes.fromhex(op["hex"])
        elif kind == "splice_header":
            ins = bytes.fromhex(op["insert"])
            out[pos:pos] = ins
            out[:8] = ((int.from_bytes(out[:8], "little") + len(ins)) % 2**64).to_bytes(8, "little")
    return bytes(out)


def _decode_raw(raw: bytes, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, ST_NUMPY[dtype]).astype(np.float32)


# -- GGUF ---------------------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"
# value type codes
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}


@dataclass
class Gguf:
    """A GGUF file as lists that mutations edit, and its serializer."""

    version: int
    kvs: List[List[Any]]  # [key (str or {"$bytes"}), type code, value]; arrays: {"atype", "items"}
    tensors: List[List[Any]]  # [name, dims (GGUF order), type code, offset]
    data: bytes  # from the start of the data section
    alignment: int = 32
    fields: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # set by serialize: name -> (offset, width)

    @classmethod
    def parse(cls, blob: bytes) -> "Gguf":
        pos = 4
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", blob, pos)
        pos += 20

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", blob, pos)
            s = blob[pos + 8 : pos + 8 + n].decode("utf-8")
            pos += 8 + n
            return s

        def value(t: int) -> Any:
            nonlocal pos
            if t == STRING:
                return string()
            if t == ARRAY:
                at, count = struct.unpack_from("<IQ", blob, pos)
                pos += 12
                return {"atype": at, "items": [value(at) for _ in range(count)]}
            fmt = _SCALAR_FMT[t]
            (v,) = struct.unpack_from(fmt, blob, pos)
            pos += struct.calcsize(fmt)
            return bool(v) if t == BOOL else v

        kvs = []
        for _ in range(n_kv):
            key = string()
            (t,) = struct.unpack_from("<I", blob, pos)
            pos += 4
            kvs.append([key, t, value(t)])
        tensors = []
        for _ in range(n_tensors):
            name = string()
            (nd,) = struct.unpack_from("<I", blob, pos)
            pos += 4
            dims = list(struct.unpack_from(f"<{nd}Q", blob, pos))
            pos += 8 * nd
            t, off = struct.unpack_from("<IQ", blob, pos)
            pos += 12
            tensors.append([name, dims, t, off])
        align = next((v for k, t, v in kvs if k == "general.alignment"), 32)
        start = pos + (-pos % align)
        return cls(version, kvs, tensors, blob[start:], align)

    def serialize(self) -> bytes:
        out = bytearray(GGUF_MAGIC)
        fields: Dict[str, Tuple[int, int]] = {}

        def put(fmt: str, v: Any, name: Optional[str] = None) -> None:
            if name is not None:
                fields[name] = (len(out), struct.calcsize(fmt))
            out.extend(_pack(fmt, v))

        def put_str(s: Any, name: str) -> None:
            raw = decode(s) if isinstance(s, dict) else s
            raw = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "surrogatepass")
            put("<Q", len(raw), name + ".len")
            out.extend(raw)

        def put_value(t: int, v: Any, name: str) -> None:
            if t == STRING:
                put_str(v, name)
            elif t == ARRAY:
                v = v if isinstance(v, dict) else {"atype": U32, "items": []}
                at = v.get("atype", U32)
                items = v.get("items", [])
                put("<I", at, name + ".atype")
                put("<Q", len(items), name + ".count")
                for j, it in enumerate(items):
                    put_value(at, it, f"{name}[{j}]" if j < 4 else name + "[]")
            elif t in _SCALAR_FMT:
                put(_SCALAR_FMT[t], v, name + ".value")
            else:  # an unknown type code: 8 bytes of payload follow
                put("<Q", v if isinstance(v, int) else 0, name + ".value")

        put("<I", self.version, "version")
        put("<Q", len(self.tensors), "n_tensors")
        put("<Q", len(self.kvs), "n_kv")
        for i, (key, t, v) in enumerate(self.kvs):
            put_str(key, f"kv{i}.key")
            put("<I", t, f"kv{i}.type")
            put_value(t, v, f"kv{i}")
        for i, (name, dims, t, off) in enumerate(self.tensors):
            put_str(name, f"t{i}.name")
            put("<I", len(dims), f"t{i}.n_dims")
            for j, d in enumerate(dims):
                put("<Q", d, f"t{i}.dim{j}")
            put("<I", t, f"t{i}.type")
            put("<Q", off, f"t{i}.offset")
        # padding as declared, up to 64 KiB (a larger declared alignment puts the data, as a
        # reader computes it, past the end of the file)
        align = self.alignment if isinstance(self.alignment, int) and 0 < self.alignment <= 65536 else 32
        out.extend(b"\0" * (-len(out) % align))
        fields["data"] = (len(out), 0)
        out.extend(self.data)
        self.fields = fields
        return bytes(out)

    def kv_index(self, key: str) -> Optional[int]:
        return next((i for i, kv in enumerate(self.kvs) if kv[0] == key), None)


def _pack(fmt: str, v: Any) -> bytes:
    """struct.pack that wraps integers to the field's width and saturates floats to +-inf."""
    code = fmt[-1]
    if code in "fd":
        try:
            v = float(v)
        except (TypeError, ValueError):
            v = 0.0
        if code == "f":
            with np.errstate(over="ignore"):
                return np.array([v], dtype="<f4").tobytes()
        return struct.pack(fmt, v)
    if isinstance(v, bool):
        v = int(v)
    if not isinstance(v, int):
        try:
            v = int(v)
        except (TypeError, ValueError, OverflowError):
            v = 0
    bits = struct.calcsize(fmt) * 8
    v %= 2**bits
    if code in "bhiq" and v >= 2 ** (bits - 1):
        v -= 2**bits
    return struct.pack(fmt, v)


def mutate_gguf(blob: bytes, semantic: List[Dict[str, Any]], raw_ops: List[Dict[str, Any]]) -> bytes:
    """Applies semantic ops to the parsed file, serializes it, then applies byte ops.

    Semantic ops:
      set_kv {key, type, value}        set or add a metadata key with any type code and value
      del_kv {key}
      array {key, mode, n, value}      truncate to n items / set item n / append / retype (atype)
      tensor {t, dims | type | offset | name}; drop_tensor {t}; dup_tensor {t}
      version {value}; alignment {value} (general.alignment as the writer's padding too)
      data {off, value}                a byte of tensor data
    Byte ops: field {name, value} writes a serialized field (see Gguf.fields: "n_kv",
      "kv3.len", "kv21.count", "t0.dim1", "t5.offset", ...; an index past the end wraps),
      byte {off, value}, truncate {off}, append {hex}.
    """
    g = Gguf.parse(blob)
    for op in semantic:
        kind = op["op"]
        if kind == "set_kv":
            i = g.kv_index(op["key"])
            entry = [op["key"], op["type"], decode(op["value"])]
            if i is None:
                g.kvs.append(entry)
            else:
                g.kvs[i] = entry
        elif kind == "del_kv":
            i = g.kv_index(op["key"])
            if i is not None:
                del g.kvs[i]
        elif kind == "array":
            i = g.kv_index(op["key"])
            if i is None or g.kvs[i][1] != ARRAY:
                continue
            arr = g.kvs[i][2]
            items = arr["items"]
            mode = op["mode"]
            if mode == "truncate":
                arr["items"] = items[: op["n"] % (len(items) + 1)]
            elif mode == "set" and items:
                items[op["n"] % len(items)] = decode(op["value"])
            elif mode == "append":
                items.append(decode(op["value"]))
            elif mode == "atype":
                arr["atype"] = op["value"]
        elif kind == "tensor" and g.tensors:
            t = g.tensors[op["t"] % len(g.tensors)]
            if "dims" in op:
                t[1] = list(op["dims"])
            if "type" in op:
                t[2] = op["type"]
            if "offset" in op:
                t[3] = op["offset"]
            if "name" in op:
                t[0] = op["name"]
        elif kind == "drop_tensor" and g.tensors:
            del g.tensors[op["t"] % len(g.tensors)]
        elif kind == "dup_tensor" and g.tensors:
            g.tensors.append(list(g.tensors[op["t"] % len(g.tensors)]))
        elif kind == "version":
            g.version = op["value"]
        elif kind == "alignment":
            i = g.kv_index("general.alignment")
            entry = ["general.alignment", U32, op["value"]]
            if i is None:
                g.kvs.append(entry)
            else:
                g.kvs[i] = entry
            g.alignment = op["value"] % 2**32
        elif kind == "data" and g.data:
            d = bytearray(g.data)
            d[op["off"] % len(d)] = op["value"] & 0xFF
            g.data = bytes(d)
    out = bytearray(g.serialize())
    for op in raw_ops:
        kind = op["op"]
        if kind == "field":
            name = _wrap_field(op["name"], g.fields)
            if name is None:
                continue
            off, width = g.fields[name]
            if width in (1, 2, 4, 8):
                out[off : off + width] = _pack({1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[width], op["value"])
        elif kind == "byte" and out:
            out[op["off"] % len(out)] = op["value"] & 0xFF
        elif kind == "truncate":
            del out[op["off"] % (len(out) + 1) :]
        elif kind == "append":
            out += bytes.fromhex(op["hex"])
    return bytes(out)


def _wrap_field(name: str, fields: Dict[str, Tuple[int, int]]) -> Optional[str]:
    """`name` if serialized, else the same field of the last kv/tensor that has one."""
    if name in fields:
        return name
    import re

    m = re.fullmatch(r"(kv|t)(\d+)\.(.+)", name)
    if not m:
        return None
    kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
    have = sorted({int(k[len(kind):].split(".")[0]) for k in fields if re.match(rf"{kind}\d+\.{re.escape(rest)}$", k)})
    if not have:
        return None
    return f"{kind}{have[i % len(have)]}.{rest}"
