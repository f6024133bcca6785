"""Tokenizer wrapper over the `tokenizers` library, with incremental (streaming) decoding."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Callable, Hashable, List, Sequence, TypeVar

from .errors import CheckpointError, TokenizerError

T = TypeVar("T")


class Tokenizer:
    """Text <-> token ids, as Hugging Face's fast tokenizer does it for the same tokenizer.json."""

    def __init__(self, tok) -> None:  # tok: tokenizers.Tokenizer
        self._tok = tok

    @classmethod
    def from_file(cls, path: Path) -> "Tokenizer":
        """The tokenizer of a tokenizer.json file; loads of the same content share one."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise CheckpointError(f"cannot read tokenizer {path}: {e}") from None
        # The key only has to tell contents apart within this process: Python's own keyed 64-bit
        # hash of the bytes with their length does, without hashlib (OpenSSL is about 3.5 MiB
        # resident, which a model load does not otherwise need).
        return shared(("tokenizer.json", len(data), hash(data)), lambda: cls._parse(path, data))

    @classmethod
    def _parse(cls, path: Path, data: bytes) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return cls(HFTokenizer.from_str(data.decode("utf-8")))
        except Exception as e:  # the library raises a bare Exception on malformed files
            raise CheckpointError(f"cannot load tokenizer {path}: {e}") from None
        except BaseException as e:
            # a panic inside the tokenizers library surfaces as pyo3's PanicException, which
            # derives from BaseException; a damaged file must not take the caller down with it
            if type(e).__name__ != "PanicException":
                raise
            raise CheckpointError(f"cannot load tokenizer {path}: the tokenizers library failed on it ({e})") from None

    def save(self, path: Path) -> None:
        """Writes the tokenizer as a tokenizer.json file."""
        self._tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def kind(self) -> str:
        """The tokenization model, e.g. "BPE" or "Unigram"."""
        return type(self._tok.model).__name__

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        return _guarded("encode", lambda: self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return _guarded("decode", lambda: self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str):
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int):
        return self._tok.id_to_token(token_id)


_shared: "weakref.WeakValueDictionary[Hashable, Tokenizer]" = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


def shared(key: Hashable, build: Callable[[], Tokenizer]) -> Tokenizer:
    """One Tokenizer per `key` while any model holds it. The tokenizers library keeps some state
    per tokenizer and per thread that encodes with it, until that thread ends: a process that
    loads the same model again and again from long-lived threads would otherwise grow with
    every load."""
    with _shared_lock:
        tok = _shared.get(key)
        if tok is None:
            tok = build()
            _shared[key] = tok
        return tok


def _guarded(what: str, call: Callable[[], T]) -> T:
    """Runs a tokenizers call; a failure or a panic inside the library (pyo3's PanicException,
    a BaseException) becomes a TokenizerError instead of escaping to the caller."""
    try:
        return call()
    except Exception as e:
        raise TokenizerError(f"the tokenizer failed to {what}: {e}") from None
    except BaseException as e:
        if type(e).__name__ != "PanicException":
            raise
        raise TokenizerError(f"the tokenizer failed to {what}: {e}") from None


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas. Decodes a short window with a little
    left context, so that decoders that strip or merge at the edges (byte fallback, leading
    spaces, multi-byte characters) give the same text as decoding the whole list at once."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        self.ids: List[int] = []
        self._prefix = 0  # start of the context window
        self._read = 0  # end of what has been emitted

    def push(self, token_id: int) -> str:
        """Adds one token; returns the newly completed text (may be empty)."""
        self.ids.append(token_id)
        prefix_text = self._tok.decode(self.ids[self._prefix : self._read])
        new_text = self._tok.decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Text still held back at the end (e.g. an incomplete multi-byte character)."""
        prefix_text = self._tok.decode(self.ids[self._prefix : self._read])
        new_text = self._tok.decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""
