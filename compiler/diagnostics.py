"""Compiler diagnostics: what went wrong, where, and how to show it to a person.

A diagnostic prints as ``path:line:col: error: message``, then the source line
and a caret under the offending text, in the manner of gcc and clang. Notes
(``note:``) point at a related place, e.g. the first definition of a duplicated
module. ``suggest`` produces the "did you mean" hints.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

from polc.runtime.errors import PolcError

from .errors import EXIT_ERRORS

ERROR = "error"
WARNING = "warning"
NOTE = "note"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: str
    file: str
    line: int
    col: int
    message: str
    length: int = 1
    """How many characters to underline on ``line`` (at least 1)."""
    module: str | None = None
    """The module the problem belongs to; ``None`` when it belongs to the whole file."""
    notes: tuple[Diagnostic, ...] = ()
    """Related places (``note:``), e.g. where a conflicting declaration came first."""

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def header(self) -> str:
        return f"{self.location}: {self.severity}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_module(self, module: str | None) -> Diagnostic:
        return replace(self, module=module)

    def promoted(self) -> Diagnostic:
        """This warning as an error (``--strict``)."""
        if self.severity != WARNING:
            return self
        return replace(self, severity=ERROR, message=self.message + " [warning turned error by --strict]")


def sort_key(d: Diagnostic) -> tuple[str, int, int]:
    return (d.file, d.line, d.col)


def source_line(source: str, line: int) -> str | None:
    """Line ``line`` (1-based) of ``source``, without its line break."""
    start = 0
    for _ in range(line - 1):
        start = source.find("\n", start) + 1
        if start == 0:
            return None
    end = source.find("\n", start)
    text = source[start:] if end < 0 else source[start:end]
    return text.rstrip("\r")


Sources = Mapping[str, str] | Callable[[str], str | None] | None
"""Where a diagnostic's source text comes from: by path, a function of the path, or nowhere."""


def render(diag: Diagnostic, sources: Sources) -> str:
    """The diagnostic's header line, then the source line and a caret line; then its notes."""
    out = [_render_one(diag, sources)]
    out.extend(_render_one(n, sources) for n in diag.notes)
    return "\n".join(out)


def _shown(ch: str) -> str:
    """How one character of a file name, message or source line is printed."""
    if ch.isprintable():
        return ch
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else (f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")


def visible(text: str, *, tabs: bool = False) -> str:
    """``text`` with control, format and other invisible characters escaped (``\\x1b``, ``\\u202e``).

    A diagnostic is printed to a terminal: a hostile source or file name must
    not move the cursor, recolour it or reorder what follows (bidi controls).
    ``tabs`` keeps tabs as they are (for source lines, so carets line up).
    """
    if text.isprintable() or (tabs and text.replace("\t", " ").isprintable()):
        return text
    return "".join("\t" if tabs and ch == "\t" else _shown(ch) for ch in text)


def _render_one(diag: Diagnostic, sources: Sources) -> str:
    head = visible(diag.header())
    if sources is None or diag.line < 1:
        return head
    source = sources(diag.file) if callable(sources) else sources.get(diag.file)
    if source is None:
        return head
    text = source_line(source, diag.line)
    if text is None:
        return head
    col = min(max(diag.col, 1), len(text) + 1)
    length = max(1, min(diag.length, len(text) - col + 1))
    if len(text) > SHOWN_LINE_MAX:
        # a window of the line around the caret, so a megabyte line prints as one screen line
        start = max(0, col - 1 - SHOWN_LINE_MAX // 3)
        end = min(len(text), start + SHOWN_LINE_MAX)
        lead = "..." if start else ""
        text = lead + text[start:end] + ("..." if end < len(text) else "")
        col = col - start + len(lead)
        length = max(1, min(length, end - start + len(lead) - col + 1))
    shown = visible(text, tabs=True)
    if shown is not text:  # escapes are wider than what they stand for: the caret follows them
        before, under = text[: col - 1], text[col - 1 : col - 1 + length]
        col = len(visible(before, tabs=True)) + 1
        length = max(1, len(visible(under, tabs=True)))
        text = shown
    # Keep tabs so the caret lines up under the same characters.
    pad = "".join("\t" if ch == "\t" else " " for ch in text[: col - 1])
    caret = "^" + "~" * (length - 1)
    return f"{head}\n    {text}\n    {pad}{caret}"


SHOWN_LINE_MAX = 200
"""Longer source lines are shown as a window of this many characters around the caret."""


def render_all(diags: Iterable[Diagnostic], sources: Sources) -> str:
    return "\n".join(render(d, sources) for d in diags)


def suggest(
    word: str,
    candidates: Iterable[str],
    *,
    synonyms: Mapping[str, str] | None = None,
    cutoff: float = 0.6,
) -> str | None:
    """The candidate the user most likely meant by ``word``, or ``None``.

    Tries, in order: a synonym table (whole word, then the last dotted
    component under the same prefix: ``network.inbound`` -> ``network.listen``),
    a case-insensitive exact match, close spellings of the whole word, and close
    spellings of the last component among candidates that share the prefix.
    """
    cands = sorted(set(candidates))
    if not cands or not word:
        return None
    lower = {c.lower(): c for c in cands}
    if synonyms:
        target = synonyms.get(word.lower())
        if target in cands:
            return target
        prefix, _, last = word.rpartition(".")
        if prefix:
            target = synonyms.get(last.lower())
            if target is not None and f"{prefix}.{target}" in cands:
                return f"{prefix}.{target}"
    if word.lower() in lower and lower[word.lower()] != word:
        return lower[word.lower()]
    close = difflib.get_close_matches(word, cands, n=1, cutoff=cutoff)
    if close:
        return close[0]
    close = difflib.get_close_matches(word.lower(), list(lower), n=1, cutoff=cutoff)
    if close:
        return lower[close[0]]
    prefix, _, last = word.rpartition(".")
    if prefix:
        same_ns = {c.rpartition(".")[2]: c for c in cands if c.rpartition(".")[0] == prefix}
        close = difflib.get_close_matches(last, list(same_ns), n=1, cutoff=cutoff)
        if close:
            return same_ns[close[0]]
    return None


def did_you_mean(
    word: str, candidates: Iterable[str], *, synonyms: Mapping[str, str] | None = None, cutoff: float = 0.6
) -> str:
    """``"; did you mean 'x'?"`` or ``""``."""
    hit = suggest(word, candidates, synonyms=synonyms, cutoff=cutoff)
    return f"; did you mean '{hit}'?" if hit else ""


class CompileError(PolcError):
    """Raised by the in-memory API's ``check()`` when a source has errors (exit 1)."""

    exit_code: ClassVar[int] = EXIT_ERRORS

    def __init__(self, diagnostics: list[Diagnostic], text: str) -> None:
        super().__init__(text)
        self.diagnostics = diagnostics
