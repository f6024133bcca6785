"""Chat templates: Jinja2 templates rendered the way transformers' apply_chat_template does it
(sandboxed environment, trim_blocks + lstrip_blocks, loop controls, its tojson/raise_exception/
strftime_now helpers, special tokens as variables)."""

from __future__ import annotations

import functools
import json
import re
import sys
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .errors import CheckpointError, InvalidArgumentError

#: A template comes with the checkpoint and is untrusted: one render may run at most this many
#: template lines (a real template runs a few per message) and build no string or list longer
#: than MAX_TEMPLATE_ITEMS, so a hostile one fails instead of hanging or eating memory.
MAX_TEMPLATE_STEPS = 1_000_000
MAX_TEMPLATE_ITEMS = 1_000_000

# Tokens that end an assistant turn in common templates; the ones a vocabulary has stop chat.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


def _jinja():
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError:  # pragma: no cover - jinja2 is a dependency
        raise CheckpointError("chat templates need the 'jinja2' package: pip install jinja2") from None
    return jinja2


def _compile(source: str):
    jinja2 = _jinja()

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text; it renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Bounded(jinja2.sandbox.ImmutableSandboxedEnvironment):
        """Refuses `*` and `**` whose result would be huge (the sandbox bounds range() alone)."""

        intercepted_binops = frozenset(["*", "**", "%"])

        def call_binop(self, context, operator, left, right):
            if operator == "**":
                if isinstance(right, (int, float)) and abs(right) > 64 and isinstance(left, (int, float)) and abs(left) > 1:
                    raise jinja2.exceptions.SecurityError(f"{left!r} ** {right!r} is too large for a chat template")
                return left**right
            if operator == "%":
                _check_sizes(jinja2, (left, right))
                return left % right
            sizes = [len(x) for x in (left, right) if isinstance(x, (str, list, tuple))]
            counts = [x for x in (left, right) if isinstance(x, int) and not isinstance(x, bool)]
            if sizes and counts and sizes[0] * max(counts[0], 0) > MAX_TEMPLATE_ITEMS:
                raise jinja2.exceptions.SecurityError("a repeated string or list in the chat template is too long")
            return left * right

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
    # Filters run at compile time too (constant folding): every one refuses sizes past the
    # bound (center(3000000000), indent(10**9), "%0999999999d"|format) before doing any work.
    env.filters = {name: _bounded(f, jinja2) for name, f in env.filters.items()}
    env.filters["tojson"] = _bounded(tojson, jinja2)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise CheckpointError(f"the chat template is not valid Jinja: {e}") from None
    except (SyntaxError, ValueError, TypeError, AssertionError, RecursionError, MemoryError,
            jinja2.exceptions.TemplateError) as e:
        # what the parser lets through but Python refuses to compile ({% break %} outside a loop)
        raise CheckpointError(f"the chat template cannot be compiled: {type(e).__name__}: {e}") from None


def _plain(value: Any) -> Any:
    """Rebuilds template inputs from plain JSON types (the sandbox then sees nothing else)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    raise InvalidArgumentError(f"chat messages may hold only JSON-like values, got {type(value).__name__}")


class ChatTemplate:
    """A chat template plus the special tokens it may refer to (bos_token, eos_token, ...).

    The template is compiled on its first render, not when the model loads: Jinja is about
    4.5 MiB resident that a program which never chats need not pay, and a model whose template
    is broken still loads and generates text (its chat calls raise CheckpointError)."""

    def __init__(self, source: str, special_tokens: Optional[Mapping[str, str]] = None) -> None:
        if not isinstance(source, str) or not source.strip():
            raise CheckpointError("the chat template is empty")
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self._compiled: Any = None

    def _template(self) -> Any:
        """The compiled template (compiled once; two threads may both compile it, to the same)."""
        if self._compiled is None:
            self._compiled = _compile(self.source)
        return self._compiled

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Optional[List[dict]] = None,
        documents: Optional[List[dict]] = None,
        **kwargs: Any,
    ) -> str:
        check_messages(messages)
        jinja2 = _jinja()
        template = self._template()
        variables = dict(
            messages=_plain(list(messages)),
            tools=_plain(tools),
            documents=_plain(documents),
            add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens, **_plain(kwargs)},
        )
        try:
            return _with_step_budget(lambda: template.render(**variables), jinja2)
        except jinja2.exceptions.SecurityError as e:
            raise CheckpointError(f"the chat template is not allowed to do this: {e}") from None
        except jinja2.exceptions.TemplateError as e:
            raise InvalidArgumentError(f"the chat template rejected the messages: {e}") from None
        except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError, AssertionError, RecursionError,
                MemoryError) as e:
            raise CheckpointError(f"the chat template failed while rendering: {type(e).__name__}: {e}") from None


_WIDE = re.compile(r"\d{7,}")


def _check_sizes(jinja2, values) -> None:
    """Refuses an integer past MAX_TEMPLATE_ITEMS or a format string with such a width."""
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_TEMPLATE_ITEMS:
            raise jinja2.exceptions.SecurityError(f"{v} is too large a size for a chat template")
        if isinstance(v, str) and ("%" in v or "{" in v) and _WIDE.search(v):
            raise jinja2.exceptions.SecurityError("a format width in the chat template is too large")


def _bounded(f, jinja2):
    """Filter `f`, refusing oversized arguments (its jinja attributes, e.g. pass_context, kept)."""

    @functools.wraps(f)
    def filter_(*args, **kwargs):
        _check_sizes(jinja2, list(args) + list(kwargs.values()))
        return f(*args, **kwargs)

    return filter_


def _with_step_budget(render, jinja2):
    """Runs `render()` counting the lines executed by template code (compiled templates are
    Python functions of the file "<template>"); past MAX_TEMPLATE_STEPS it raises SecurityError.
    Only this thread is traced, and any trace function already set is restored afterwards."""
    steps = 0

    def line(frame, event, arg):
        nonlocal steps
        if event == "line":
            steps += 1
            if steps > MAX_TEMPLATE_STEPS:
                raise jinja2.exceptions.SecurityError(f"the chat template ran more than {MAX_TEMPLATE_STEPS} steps")
        return line

    def call(frame, event, arg):
        return line if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(call)
    try:
        return render()
    finally:
        sys.settrace(previous)


def check_messages(messages: Any) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidArgumentError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise InvalidArgumentError(f"message {i} must be a dict with a string 'role', got {m!r}")
        if "content" in m and not isinstance(m["content"], (str, list, type(None))):
            raise InvalidArgumentError(f"message {i} has content of type {type(m['content']).__name__}")


def special_tokens_from_config(tok_config: Mapping[str, Any]) -> Dict[str, str]:
    """bos_token, eos_token, unk_token, pad_token... as strings, from tokenizer_config.json."""
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        v = tok_config.get(key)
        if isinstance(v, Mapping):
            v = v.get("content")
        if isinstance(v, str):
            out[key] = v
    return out


def template_from_config(tok_config: Mapping[str, Any], jinja_file_text: Optional[str]) -> Optional[str]:
    """The default chat template of an HF folder: chat_template.jinja, else tokenizer_config.json's
    chat_template (a string, or a list of named templates of which 'default' is used)."""
    if jinja_file_text:
        return jinja_file_text
    t = tok_config.get("chat_template")
    if isinstance(t, str):
        return t
    if isinstance(t, list):
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, Mapping)}
        return named.get("default") or next(iter(named.values()), None)
    return None
