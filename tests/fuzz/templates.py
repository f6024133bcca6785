"""Random Jinja chat templates: a small grammar of statements and expressions over the names a
chat template sees, plus known sandbox-escape payloads and resource-exhaustion constructs.

`CANARY` in a payload is replaced by a path that must never come to exist, and payloads read the
environment variable `FERROLM_FUZZ_SECRET`, whose value must never appear in rendered text.
"""

from __future__ import annotations

from hypothesis import strategies as st

from .values import weighted_choice

ATOMS = [
    "messages", "message", "message['role']", "message['content']", "message.content", "m", "m.role",
    "loop.index", "loop.first", "loop.last", "bos_token", "eos_token", "unk_token", "add_generation_prompt",
    "tools", "documents", "x", "ns.v", "'abc'", '"q"', "''", "1", "0", "-1", "3.5", "none", "true", "false",
    "[1, 2]", "{'a': 1}", "messages[0]", "messages[-1]['content']", "messages[0]['role']", "range(3)",
    "namespace(v=1)", "(messages|length)", "lipsum(1, false, 1, 2)", "cycler(1, 2)", "joiner()",
    "dict(a=1)", "undefined_name", "undefined_name.attr", "message.tool_calls", "message['tool_calls'][0]",
    "strftime_now('%Y-%m-%d')", "(1, 2)", "messages[1:]", "messages[::-1]", "'%s'", "'{}'",
]  # fmt: skip
FILTERS = [
    "tojson", "length", "upper", "lower", "trim", "first", "last", "list", "string", "int", "float",
    "join(',')", "replace('a', 'b')", "default('d')", "safe", "e", "title", "capitalize", "wordcount",
    "reverse", "sort", "unique", "map(attribute='role')", "selectattr('role', 'equalto', 'user')", "items",
    "indent(2)", "center(9)", "truncate(3)", "round", "abs", "batch(2)", "slice(2)", "sum", "min", "max",
    "tojson(indent=2)", "format(1)", "striptags", "urlencode", "wordwrap(5)", "xmlattr", "dictsort",
    "groupby('role')", "attr('role')", "count", "select", "reject", "rejectattr('role')", "trim('x')",
    "map('upper')", "batch(0)", "slice(0)", "int('x')", "join(1)", "random", "pprint", "filesizeformat",
    "wordwrap(0)", "indent(-1)", "center(-5)", "truncate(-1)", "round(-2)", "format", "tojson(sort_keys=true)",
]  # fmt: skip
BINOPS = ["+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", ">", "and", "or", "in", "not in"]
TESTS = ["defined", "undefined", "none", "string", "number", "mapping", "iterable", "sequence", "even", "divisibleby(0)",
         "sameas(1)", "lower", "callable", "eq(1)", "in([1])"]  # fmt: skip

#: Attempts to leave the sandbox: reach os / builtins / subclasses, mutate inputs, read files.
ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.environ.FERROLM_FUZZ_SECRET }}",
    "{{ joiner.__init__.__globals__.os.popen('touch CANARY').read() }}",
    "{{ namespace.__init__.__globals__['os'].environ['FERROLM_FUZZ_SECRET'] }}",
    "{{ lipsum.__globals__['os'].environ['FERROLM_FUZZ_SECRET'] }}",
    "{{ raise_exception.__globals__['json'] }}",
    "{{ strftime_now.__globals__['datetime'] }}",
    "{{ self.__init__.__globals__.__builtins__.open('CANARY', 'w') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.environ }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{% set x = messages.append(1) %}{{ messages }}",
    "{% set _ = messages[0].update({'role': 'x'}) %}{{ messages }}",
    "{{ messages[0].__setitem__('role', 'x') }}",
    "{{ '{0.__class__.__init__.__globals__}'.format(cycler) }}",
    "{{ '%(a)s'|format(a=cycler.__init__) }}",
    "{{ messages|attr('__class__') }}",
    "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ (cycler|attr('__init__')|attr('__globals__'))['os'].environ['FERROLM_FUZZ_SECRET'] }}",
    "{% for c in ''.__class__.__base__.__subclasses__() %}{% if c.__name__ == 'Popen' %}{{ c(['touch', 'CANARY']) }}{% endif %}{% endfor %}",
    "{{ dict.__subclasses__() }}", "{{ range.__self__ }}", "{{ tojson.__code__.co_consts }}",
    "{{ messages.pop() }}", "{{ x.__dict__ }}", "{{ namespace(a=1).__dict__ }}",
    "{{ lipsum.func_globals }}", "{{ joiner.__call__.__func__.__globals__ }}",
    "{% include 'CANARY' %}", "{% import 'CANARY' as y %}", "{% extends 'CANARY' %}", "{% from 'x' import y %}",
]  # fmt: skip
#: Unbounded work or memory (the renderer must neither hang nor exhaust memory).
HEAVY = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10000000000 }}",
    "{{ 9 ** 9 ** 9 }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ messages|tojson(indent=1000000000) }}",
    "{{ 'a'|center(3000000000) }}",
    "{{ (range(100000)|list) * 100000 }}",
    "{{ '%0999999999d'|format(1) }}",
    "{{ 'ab'|wordwrap(1000000000) }}",
]  # fmt: skip
#: Run-time errors of ordinary templates.
BREAKERS = [
    "{{ 1 / 0 }}", "{{ 1 // 0 }}", "{{ 1 % 0 }}", "{{ 'a' + 1 }}", "{{ messages + 1 }}", "{{ 'a' - 1 }}",
    "{{ messages['x'] }}", "{{ raise_exception('no') }}", "{{ strftime_now(1) }}", "{{ strftime_now('%Q%') }}",
    "{{ 'abc'|int('x') }}", "{{ 1.5|round('x') }}", "{{ none|length }}", "{{ 1|first }}", "{{ 1|list }}",
    "{{ messages|join(none) }}", "{{ {}|dictsort(by='x') }}", "{{ [none, 1]|sort }}", "{{ ['a', 1]|max }}",
    "{{ messages|tojson(separators=1) }}", "{{ (1, 2)|tojson(indent='x') }}", "{{ range(-1, 5, 0) }}",
    "{{ x.y.z }}", "{{ undefined_name() }}", "{% for a, b in messages %}{% endfor %}", "{{ '%d'|format('x') }}",
    "{{ 10 ** 100000 }}", "{{ (10 ** 5000)|string }}", "{{ 'a'|indent(first=1, blank=2, width='x') }}",
    "{% break %}", "{{ loop.cycle() }}", "{{ caller() }}", "{{ super() }}", "{{ varargs }}",
]  # fmt: skip
SYNTAX = ["{{", "}}", "{%", "%}", "{% endfor %}", "{% if %}", "{{ }}", "{% for %}", "{# ", "{% raw %}", "{% macro %}", "{{ 'a }}", "{% set = %}"]


def _exprs() -> st.SearchStrategy[str]:
    atom = st.sampled_from(ATOMS)
    return st.recursive(
        atom,
        lambda e: st.one_of(
            st.builds(lambda a, f: f"{a}|{f}", e, st.sampled_from(FILTERS)),
            st.builds(lambda a, o, b: f"({a} {o} {b})", e, st.sampled_from(BINOPS), e),
            st.builds(lambda a: f"(not {a})", e),
            st.builds(lambda a, t: f"({a} is {t})", e, st.sampled_from(TESTS)),
            st.builds(lambda a, b: f"{a}[{b}]", e, e),
            st.builds(lambda a, c, b: f"({a} if {c} else {b})", e, e, e),
            st.builds(lambda a: f"raise_exception({a})", e),
        ),
        max_leaves=5,
    )


def _statements() -> st.SearchStrategy[str]:
    expr = _exprs()
    text = st.one_of(st.sampled_from(["<|im_start|>", "<|im_end|>\n", "\n", ": ", "user", " "]), st.text(max_size=8))
    leaf = st.one_of(
        text,
        st.builds(lambda e: "{{ " + e + " }}", expr),
        st.builds(lambda v, e: "{% set " + v + " = " + e + " %}", st.sampled_from(["x", "m", "ns.v", "messages", "loop"]), expr),
        st.builds(lambda e: "{% set ns = namespace(v=" + e + ") %}", expr),
        st.sampled_from(["{# c #}", "{% raw %}{{ x }}{% endraw %}", "{{ bos_token }}", "{{ eos_token }}", "{% break %}"]),
    )

    def blocks(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        body = st.lists(inner, min_size=0, max_size=3).map("".join)
        return st.one_of(
            st.builds(lambda c, a, b: "{% if " + c + " %}" + a + "{% else %}" + b + "{% endif %}", expr, body, body),
            st.builds(lambda v, it, b: "{% for " + v + " in " + it + " %}" + b + "{% endfor %}", st.sampled_from(["message", "m", "x", "i"]),
                      st.one_of(st.just("messages"), expr), body),
            st.builds(lambda b, e: "{% macro mac(a) %}" + b + "{% endmacro %}{{ mac(" + e + ") }}", body, expr),
            st.builds(lambda b: "{% generation %}" + b + "{% endgeneration %}", body),
            st.builds(lambda b: "{% filter upper %}" + b + "{% endfilter %}", body),
            st.builds(lambda b: "{% with x = 1 %}" + b + "{% endwith %}", body),
        )

    return st.recursive(leaf, blocks, max_leaves=8)


#: The fixture's template, so that mutations start from something that renders.
BASE = "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"


def templates() -> st.SearchStrategy[str]:
    statements = _statements()
    parts = weighted_choice([statements, st.sampled_from(BREAKERS), st.sampled_from(ESCAPES), st.sampled_from(SYNTAX)], [8, 1, 1, 1])
    generated = st.lists(parts, min_size=1, max_size=5).map("".join)
    normal = weighted_choice([
        generated,
        st.builds(lambda a, b: a + BASE + b, generated, generated),
        st.builds(lambda at, s: BASE[: at % len(BASE)] + s + BASE[at % len(BASE):], st.integers(0, 10**6), st.sampled_from(SYNTAX + BREAKERS + ESCAPES)),
    ], [2, 1, 1])
    # resource exhaustion: about one template in 400, since each costs a timeout or an
    # allocation failure (a residue, not a small integer: hypothesis favours small ones)
    return st.integers(0, 2**24).flatmap(lambda n: st.sampled_from(HEAVY) if n % 400 == 137 else normal)
