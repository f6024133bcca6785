"""The committed _core.pyi describes the native module exactly (names and parameters)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import ferrolm
from ferrolm import _core

STUB = Path(ferrolm.__file__).parent / "_core.pyi"


def stub_api():
    tree = ast.parse(STUB.read_text())
    api = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            api[node.name] = [a.arg for a in node.args.args]
        elif isinstance(node, ast.ClassDef):
            members = {}
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members[item.name] = [a.arg for a in item.args.args]
            api[node.name] = members
        elif isinstance(node, ast.AnnAssign):
            api[node.target.id] = None
    return api


def runtime_params(obj):
    try:
        return list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return None


def test_stub_is_shipped_with_py_typed():
    assert STUB.is_file()
    assert (STUB.parent / "py.typed").is_file()


def test_stub_matches_module():
    api = stub_api()
    public = {n for n in dir(_core) if not n.startswith("_")} | {"__version__"}
    assert set(api) == public
    for name, spec in api.items():
        obj = getattr(_core, name)
        if spec is None:
            continue
        if isinstance(spec, list):
            assert runtime_params(obj) == spec, name
            continue
        runtime_members = {n for n in dir(obj) if not n.startswith("_")}
        stub_members = {n for n in spec if not n.startswith("_")}
        assert stub_members == runtime_members, name
        for member, params in spec.items():
            attr = inspect.getattr_static(obj, member)
            if isinstance(attr, property) or type(attr).__name__ == "getset_descriptor":
                continue
            got = runtime_params(getattr(obj, member) if member != "__init__" else obj)
            want = params if member != "__init__" else params[1:]
            if member != "__init__":
                want = params
                got = ["self"] + got if got is not None and got[:1] != ["self"] else got
            assert got == want, f"{name}.{member}: runtime {got} != stub {want}"
