"""Typed reads of JSON config fields (adapter_config.json, quantization_config, ...): a value of
the wrong type is a ConfigError naming the file and the field, never a silent coercion (a
boolean given as a string, a number where a list belongs) or a bare TypeError later on."""

from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional, Tuple

from .errors import ConfigError

#: `default` of a required field.
MISSING: Any = object()


def _value(cfg: Mapping[str, Any], key: str, default: Any, where: str) -> Any:
    """The field's value; `default` when the key is absent. A JSON null is a value like any
    other (so `"bias": null` is not a string), except for fields whose default is None."""
    v = cfg.get(key, MISSING)
    if v is MISSING or (v is None and default is None):
        if default is MISSING:
            raise ConfigError(f"{where}: '{key}' is missing")
        return default
    return v


def _bad(where: str, key: str, want: str, v: Any) -> ConfigError:
    return ConfigError(f"{where}: '{key}' must be {want}, got {v!r}")


def get_bool(cfg: Mapping[str, Any], key: str, default: Any, where: str) -> bool:
    v = _value(cfg, key, default, where)
    if not isinstance(v, bool):
        raise _bad(where, key, "true or false", v)
    return v


def get_int(cfg: Mapping[str, Any], key: str, default: Any, where: str, *, low: int = 0, high: int = 2**31) -> Any:
    """An integer in [low, high] (or `default` when absent, None included)."""
    v = _value(cfg, key, default, where)
    if v is None and default is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise _bad(where, key, f"an integer in [{low}, {high}]", v)
    return v


def get_number(cfg: Mapping[str, Any], key: str, default: Any, where: str) -> float:
    """A finite number."""
    v = _value(cfg, key, default, where)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not (abs(v) < 1e300 and math.isfinite(float(v))):
        raise _bad(where, key, "a finite number", v)
    return float(v)


def get_str(cfg: Mapping[str, Any], key: str, default: Any, where: str) -> str:
    v = _value(cfg, key, default, where)
    if not isinstance(v, str):
        raise _bad(where, key, "a string", v)
    return v


def get_str_list(cfg: Mapping[str, Any], key: str, where: str) -> Tuple[str, ...]:
    """A string or a list of strings (null or absent: empty)."""
    v = _value(cfg, key, None, where)
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise _bad(where, key, "a string or a list of strings", v)
    return tuple(v)


def get_mapping(cfg: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """An object (null or absent: empty)."""
    v = _value(cfg, key, None, where)
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise _bad(where, key, "an object", v)
    return v


def get_id_list(cfg: Mapping[str, Any], key: str, where: str, vocab_size: int) -> Optional[List[int]]:
    """A token id or a list of them, each in [0, vocab_size) (None when absent)."""
    v = cfg.get(key)
    if v is None:
        return None
    ids = [v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in ids):
        raise _bad(where, key, f"a token id or a list of token ids in [0, {vocab_size})", v)
    return ids
