"""Rendering of diagnostics and the "did you mean" helper."""

from __future__ import annotations

from polc.compiler.diagnostics import ERROR, NOTE, WARNING, Diagnostic, render, suggest


def test_render_caret_keeps_tabs_and_underlines():
    src = "a\n\tdeny  module to x.y;\n"
    d = Diagnostic(ERROR, "f.pol", 2, 18, "unknown capability 'x.y'", 3)
    assert render(d, {"f.pol": src}).splitlines() == [
        "f.pol:2:18: error: unknown capability 'x.y'",
        "    \tdeny  module to x.y;",
        "    \t" + " " * 16 + "^~~",
    ]


def test_render_without_source_or_past_the_end():
    d = Diagnostic(ERROR, "f.pol", 9, 1, "boom")
    assert render(d, {"f.pol": "one line"}) == "f.pol:9:1: error: boom"
    assert render(d, None) == "f.pol:9:1: error: boom"


def test_render_notes_from_other_files():
    note = Diagnostic(NOTE, "b.pol", 1, 1, "first declared here", 3)
    d = Diagnostic(ERROR, "a.pol", 1, 5, "conflict", 1, "m", (note,))
    out = render(d, {"a.pol": "abcdefg", "b.pol": "xyz"}).splitlines()
    assert out[3] == "b.pol:1:1: note: first declared here"
    assert out[5] == "    ^~~"


def test_render_escapes_what_would_drive_the_terminal():
    # a hostile source or file name must not recolour, move or reorder the terminal's text
    src = 'x\n\t\x1b[2J\u202edeny module to x.y; \r\x07\n'
    d = Diagnostic(ERROR, "a\nb\x1b.pol", 2, 22, "unknown capability 'x.y\u2066'", 3)
    assert render(d, {"a\nb\x1b.pol": src}).splitlines() == [
        "a\\x0ab\\x1b.pol:2:22: error: unknown capability 'x.y\\u2066'",
        "    \t\\x1b[2J\\u202edeny module to x.y; \\x0d\\x07",
        "    \t" + " " * 28 + "^~~",
    ]
    # the caret covers the escaped form of what it underlines
    d = Diagnostic(ERROR, "f.pol", 1, 3, "unexpected character", 1)
    assert render(d, {"f.pol": "ab\x00cd"}).splitlines()[1:] == ["    ab\\x00cd", "      ^~~~"]


def test_render_shows_a_window_of_a_long_line():
    src = "y" * 5000 + " bad " + "z" * 5000
    d = Diagnostic(ERROR, "f.pol", 1, 5002, "here", 3)
    head, line, caret = render(d, {"f.pol": src}).splitlines()
    assert len(line) < 220 and line.startswith("    ...y") and line.endswith("z...")
    assert line[caret.index("^"):caret.index("^") + 3] == "bad"


def test_promoted():
    w = Diagnostic(WARNING, "f", 1, 1, "dup")
    e = w.promoted()
    assert e.severity == ERROR and e.message.startswith("dup")
    assert Diagnostic(ERROR, "f", 1, 1, "x").promoted().message == "x"


def test_suggest():
    caps = ["network.outbound", "network.listen", "fs.read", "fs.write", "process.exec"]
    assert suggest("network.inbound", caps, synonyms={"inbound": "listen"}) == "network.listen"
    assert suggest("network.inbound", caps) == "network.outbound"  # difflib alone
    assert suggest("FS.READ", caps) == "fs.read"
    assert suggest("fs.wirte", caps) == "fs.write"
    assert suggest("qqqq", caps) is None
    assert suggest("", caps) is None
