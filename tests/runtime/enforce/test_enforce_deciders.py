"""The generated deciders: written through one code writer, loading only names of their
explicit namespace, and registered with linecache so a traceback through one shows its code."""

from __future__ import annotations

import itertools
import traceback
from types import FunctionType

import pytest

from polc.runtime.catalog import HOST, INT, PATH, PORT, STRING
from polc.runtime.enforce import deciders, link
from polc.runtime.enforce.deciders import NAMESPACE, CodeWriter, decider_code, source_of
from polc.runtime.enforce.index import HOST_INDEX, KEY_INDEX, SCAN
from polc.runtime.enforce.plan import Plan
from polc.runtime.format.reader import read_artifact

from support.agent import artifact_bytes

MOD = [
    ("entitle", "network.outbound", ("api.acme.com", 443)),
    ("entitle", "network.outbound", ("*.acme.com", (8000, 8009))),
    ("deny", "network.outbound", ("admin.acme.com",)),
]


def _plan() -> Plan:
    m = link(read_artifact(artifact_bytes("tenant.acme", MOD), expected_module="tenant.acme"))
    plan = Plan("tenant.acme", "network.outbound", m, None)
    assert plan.fn != plan.decide  # fused
    return plan


def test_code_writer_indents_blocks_and_fills_empty_ones():
    w = CodeWriter()
    with w.block("def f(x):"):
        with w.block("if x:"):
            pass
        w.line("return x")
    assert w.source() == "def f(x):\n    if x:\n        pass\n    return x\n"


def test_a_deciders_source_is_registered_and_shown():
    plan = _plan()
    src = source_of(plan.fn)
    assert src is not None and src.startswith("def decide(args, arity, plan, no_ent, decisions")
    assert "b = exact.get(k)" in src and "sfx = suffixes_get(k)" in src
    assert source_of(plan.decide) is None  # the sequential evaluation is no generated code
    assert plan.fn.__code__.co_filename.startswith("<polc decider (host, port) host@0 ")


def test_a_traceback_inside_a_decider_shows_the_generated_line():
    plan = _plan()
    fn = plan.fn
    names = fn.__code__.co_varnames[1 : fn.__code__.co_argcount]
    assert isinstance(fn, FunctionType) and fn.__defaults__ is not None

    class Broken(dict):
        def get(self, key, default=None):
            raise RuntimeError("broken index")

    defaults = tuple(Broken() if n == "exact" else v for n, v in zip(names, fn.__defaults__, strict=True))
    broken = FunctionType(fn.__code__, fn.__globals__, "decide", defaults)
    with pytest.raises(RuntimeError) as info:
        broken(("api.acme.com", 443))
    text = "".join(traceback.format_exception(info.value))
    assert fn.__code__.co_filename in text
    assert "b = exact.get(k)" in text  # the generated source line, from linecache


def test_deciders_run_in_their_namespace_only():
    assert _plan().fn.__globals__ is NAMESPACE


SHAPES = [
    (types, kind, pos, flags)
    for types in [(HOST, PORT), (STRING, PATH), (INT,), (STRING, INT, STRING), ("command",), ()]
    for kind, pos in [(SCAN, 0), (HOST_INDEX, 0), (KEY_INDEX, 0)]
    if kind == SCAN or (types and (kind == HOST_INDEX) == (types[0] == HOST))
    for flags in itertools.product((False, True), repeat=6)
]


def test_every_name_each_shape_loads_is_in_its_namespace():
    for shape in SHAPES:
        decider_code(shape)  # compiling checks every LOAD_GLOBAL against NAMESPACE


def test_a_name_missing_from_the_namespace_fails_when_the_code_is_compiled(monkeypatch):
    monkeypatch.delitem(NAMESPACE, "suffixes")
    shape = ((HOST, PORT), HOST_INDEX, 0, (True, True, False, False, False, True))
    with pytest.raises(RuntimeError, match="loads 'suffixes', which NAMESPACE lacks"):
        deciders._compile(shape)


def test_sources_leave_linecache_with_their_code():
    import linecache

    shape = ((STRING,), KEY_INDEX, 0, (True, False, False, True, False, True))
    code, _names = decider_code(shape)
    assert code.co_filename in linecache.cache
    deciders._CODES.clear()
    assert code.co_filename not in linecache.cache
    again, _names = decider_code(shape)
    assert again.co_filename == code.co_filename and code.co_filename in linecache.cache
