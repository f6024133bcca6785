"""Hostile values for every surface, and the tagged JSON form cases are journaled in.

A case must survive a round trip through JSON (it is journaled before it runs), so values that
JSON cannot hold are written as one-key tagged objects and rebuilt by `decode`:

    {"$rep": "ab", "n": 100000}          "ab" * 100000 (long strings without a long journal)
    {"$tuple": [...]}                    a tuple
    {"$bytes": "00ff"}                   bytes
    {"$np": "int64", "v": 3}             a numpy scalar, or an array when "v" is a list
    {"$intkeys": [[k, v], ...]}          a dict with non-string keys (e.g. logit_bias)
    {"$object": null}                    a plain object()

NaN and the infinities are plain floats: Python's json module writes and reads them.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

NAN, INF = math.nan, math.inf

#: Sizes and counts at and around every boundary a reader might trip on.
INTERESTING_INTS = [
    0, 1, -1, 2, 3, 7, 8, 16, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256, 1023, 1024, 4096, 65535, 65536,
    2**20, 2**24, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**40, 2**48, 2**53, 2**53 + 1, 2**62,
    2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, 10**30, -(2**31), -(2**31) - 1, -(2**63), -(2**63) - 1, -(2**64),
]  # fmt: skip
#: Floats at the edges of f32/f64 and the non-finite ones.
INTERESTING_FLOATS = [
    0.0, -0.0, 0.5, 1.0, -1.0, 1.5, 2.0, 1e-45, 1e-46, 5e-324, 1e-7, 1e-300, 3.4e38, 3.5e38, 1e39, 1e308,
    1.7976931348623157e308, NAN, INF, -INF, 2.0**31, 2.0**32, 2.0**64, 64.0, -64.0, 1e-5,
]  # fmt: skip
#: Strings that look like other things (numbers, booleans, module names, paths, markup).
INTERESTING_STRINGS = [
    "", " ", "0", "1", "-1", "64", "4096", "2147483648", "1e400", "nan", "NaN", "inf", "Infinity", "true",
    "false", "null", "none", "None", "q_proj", "LORA", "PROMPT_TUNING", "all-linear", "llama", "gpt2",
    "qwen2", "silu", "F32", "BF16", "../../etc/passwd", "/dev/zero", "\x00", "\ud7ff", "é", "日本",
    "<|endoftext|>", "{{ 1 }}", "%s%s%n", "a" * 300,
]  # fmt: skip


def weighted_choice(strategies: list, weights: list) -> st.SearchStrategy[Any]:
    """Strategy i with probability weights[i] / sum(weights)."""
    slots = [i for i, w in enumerate(weights) for _ in range(w)]
    return st.sampled_from(slots).flatmap(lambda i: strategies[i])


def ints() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(-(2**70), 2**70), st.integers(-4, 300))


def floats() -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(INTERESTING_FLOATS), st.floats(allow_nan=True, allow_infinity=True))


def texts(max_size: int = 24) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(INTERESTING_STRINGS),
        st.text(max_size=max_size),
        st.builds(lambda s, n: {"$rep": s or "x", "n": n}, st.text(min_size=1, max_size=3), st.sampled_from([1000, 20_000, 100_000])),
    )


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), ints(), floats(), texts())


def json_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    """Any JSON value (NaN/Infinity included), nested junk included."""
    return st.recursive(
        scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(st.sampled_from(["type", "content", "id", "rope_type", "0", ""]), st.text(max_size=6)), inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def near(value: Any) -> st.SearchStrategy[Any]:
    """Values close to a valid one: the same number scaled, shifted, negated, retyped."""
    out: list = [st.just(None), st.just([value]), st.just(str(value)), st.just({"value": value})]
    if isinstance(value, bool):
        out += [st.just(not value), st.just(int(value)), st.just(float(value)), st.sampled_from(["true", "false", "yes", 0, 1, 2])]
    elif isinstance(value, int):
        out += [
            st.sampled_from([value + 1, value - 1, -value, 2 * value, value * 1024, value * 2**20, value * 2**31, value + 2**32,
                             float(value), value + 0.5, bool(value % 2)]),
        ]
    elif isinstance(value, float):
        out += [st.sampled_from([-value, value * 1e30, value / 1e30, int(value) if math.isfinite(value) else 0, NAN, INF, -INF, 0.0])]
    elif isinstance(value, str):
        out += [st.sampled_from([value.upper(), value + "x", value[:1], value * 3, 0, True, [value, value]])]
    elif isinstance(value, list):
        out += [st.just(value[:1]), st.just(value + value), st.just([]), st.just([[v] for v in value]), st.just(len(value))]
    elif isinstance(value, dict):
        out += [st.just({}), st.just(list(value)), st.just(list(value.values()))]
    return st.one_of(*out)


def decode(v: Any) -> Any:
    """The Python value a journaled (tagged) value stands for."""
    if isinstance(v, list):
        return [decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    if len(v) == 2 and "$rep" in v and "n" in v:
        return str(v["$rep"]) * int(v["n"])
    if len(v) == 1:
        (tag, x), = v.items()
        if tag == "$tuple":
            return tuple(decode(i) for i in x)
        if tag == "$bytes":
            return bytes.fromhex(x)
        if tag == "$intkeys":
            return {decode(k): decode(val) for k, val in x}
        if tag == "$object":
            return object()
    if len(v) == 2 and "$np" in v and "v" in v:
        import numpy as np

        return np.array(decode(v["v"]), dtype=v["$np"]) if isinstance(v["v"], list) else np.dtype(v["$np"]).type(decode(v["v"]))
    return {k: decode(x) for k, x in v.items()}
