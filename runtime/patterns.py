"""Pattern syntax and matching for every argument type.

One module decides what a valid pattern is and what it matches. The compiler
calls the ``compile_*`` functions to validate and normalise rule arguments;
the artifact verifier accepts a constant only if ``compile_*`` returns it
unchanged; the enforcer builds its matchers from the same constants. So the
compiler, the verifier and the enforcer cannot disagree.

Semantics (docs/design.md):

- host: case-insensitive DNS names. In a pattern, a label ``*`` is exactly
  one label and ``**`` is one or more labels; wildcards are whole labels.
  IPv4/IPv6 literals and CIDR blocks match IP requests only.
- path: ``/``-separated, relative to the root argument. ``*`` and ``?``
  match within one segment, ``**`` matches any number of segments (zero
  included). Requests are normalised first; ``..`` that escapes the root,
  an absolute path or a NUL byte is refused.
- string: exact, or a glob where ``*`` is any run of characters and ``?``
  one character.
- port/int: inclusive ranges; ports are 0..65535.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from .bytecode import HOST_CIDR, HOST_EXACT, HOST_WILD, STR_EXACT, STR_GLOB
from .catalog import INT, INT_MAX, INT_MIN, PORT, PORT_MAX, PORT_MIN

__all__ = [
    "PatternError",
    "compile_host",
    "compile_path",
    "compile_string",
    "check_range",
    "normalize_host",
    "normalize_path",
    "host_wild_matcher",
    "cidr_network",
    "path_matcher",
    "string_matcher",
]

MAX_HOST_LEN = 253
MAX_LABEL_LEN = 63
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


class PatternError(ValueError):
    """A rule argument that is not a valid pattern; the message is for people."""


# --------------------------------------------------------------------------
# hosts


def _check_label(label: str, text: str) -> None:
    if not label:
        raise PatternError(f"invalid host {text!r}: empty label")
    if len(label) > MAX_LABEL_LEN:
        raise PatternError(f"invalid host {text!r}: label longer than {MAX_LABEL_LEN} characters")
    if not _LABEL.match(label):
        if "*" in label:
            raise PatternError(
                f"invalid host pattern {text!r}: a wildcard must be a whole label ('*' or '**')"
            )
        raise PatternError(f"invalid host {text!r}: bad label {label!r}")


def _split_dns(text: str) -> list[str]:
    """Lower-case and split a DNS name or pattern; drops one trailing dot."""
    name = text.lower()
    if name.endswith(".") and len(name) > 1:
        name = name[:-1]
    if not name:
        raise PatternError("invalid host: empty")
    if len(name) > MAX_HOST_LEN:
        raise PatternError(f"invalid host {text!r}: longer than {MAX_HOST_LEN} characters")
    return name.split(".")


def _looks_numeric(labels: list[str]) -> bool:
    # No top-level domain is all digits; such a name is a mistyped address.
    return labels[-1].isdigit()


def compile_host(text: str) -> tuple[int, str]:
    """Validate a host pattern; return ``(opcode, normalised constant)``."""
    if not isinstance(text, str):
        raise PatternError("a host pattern must be a string")
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise PatternError(f"invalid CIDR block {text!r}: {exc}") from None
        return HOST_CIDR, str(net)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return HOST_CIDR, str(ipaddress.ip_network(addr))
    if ":" in text:
        raise PatternError(
            f"invalid host {text!r}: not an IPv6 address; a port goes in its own argument"
        )
    labels = _split_dns(text)
    wild = False
    for label in labels:
        if label in ("*", "**"):
            wild = True
        else:
            _check_label(label, text)
    if _looks_numeric(labels):
        raise PatternError(
            f"invalid host {text!r}: looks like an IP address; use an address or a CIDR "
            f"block such as 10.0.0.0/8"
        )
    return (HOST_WILD if wild else HOST_EXACT), ".".join(labels)


def normalize_host(value: object) -> str | ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Normalise a requested host: a lower-case DNS name, or an IP address.

    Raises ValueError with a reason for anything that is not a host.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a host name, got {type(value).__name__}")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        pass
    if value.startswith("[") and value.endswith("]"):
        try:
            return ipaddress.IPv6Address(value[1:-1])
        except ValueError:
            raise ValueError(f"malformed host {value!r}") from None
    try:
        labels = _split_dns(value)
        for label in labels:
            _check_label(label, value)
    except PatternError:
        raise ValueError(f"malformed host {value!r}") from None
    if _looks_numeric(labels):
        raise ValueError(f"malformed host {value!r}")
    return ".".join(labels)


def host_wild_matcher(const: str) -> Callable[[str], bool]:
    """Matcher for a HOST_WILD constant, applied to a normalised DNS name."""
    parts = []
    for label in const.split("."):
        if label == "*":
            parts.append(r"[^.]+")
        elif label == "**":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        else:
            parts.append(re.escape(label))
    return _full_matcher(r"\.".join(parts))


def cidr_network(const: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(const, strict=True)


# --------------------------------------------------------------------------
# paths


def compile_path(text: str) -> str:
    """Validate a path glob; return its normalised form."""
    if not isinstance(text, str):
        raise PatternError("a path pattern must be a string")
    if "\0" in text:
        raise PatternError("invalid path pattern: contains a NUL byte")
    if text.startswith("/"):
        raise PatternError(
            f"invalid path pattern {text!r}: paths are relative to the root argument; "
            f"drop the leading '/'"
        )
    segments: list[str] = []
    for seg in text.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            raise PatternError(f"invalid path pattern {text!r}: '..' is not allowed")
        if "**" in seg and seg != "**":
            raise PatternError(
                f"invalid path pattern {text!r}: '**' must be a whole path segment"
            )
        if seg == "**" and segments and segments[-1] == "**":
            continue  # '**/**' is '**'
        segments.append(seg)
    if not segments:
        raise PatternError(f"invalid path pattern {text!r}: empty; use \"**\" for any path")
    return "/".join(segments)


def normalize_path(value: object) -> str:
    """Normalise a requested path relative to its root ('' is the root itself).

    Raises ValueError for a non-string, a NUL byte, an absolute path, or a
    path whose ``..`` segments climb out of the root.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a path, got {type(value).__name__}")
    if "\0" in value:
        raise ValueError("path contains a NUL byte")
    if value.startswith("/"):
        raise ValueError(f"absolute path {value!r}: paths are relative to the root")
    out: list[str] = []
    for seg in value.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                raise ValueError(f"path {value!r} escapes its root")
            out.pop()
        else:
            out.append(seg)
    return "/".join(out)


def _glob_regex(text: str, star: str, one: str) -> str:
    """``text`` as a regex: ``*`` becomes ``star``, ``?`` becomes ``one``, the rest is literal."""
    return "".join(star if ch == "*" else one if ch == "?" else re.escape(ch) for ch in text)


def _full_matcher(regex: str) -> Callable[[str], bool]:
    """A predicate: does the whole value match ``regex``?"""
    fullmatch = re.compile(regex, re.DOTALL).fullmatch

    def match(value: str) -> bool:
        return fullmatch(value) is not None

    return match


def _segment_regex(seg: str) -> str:
    if seg == "*":
        return r"[^/]+"  # a lone '*' is one whole, non-empty segment
    return _glob_regex(seg, r"[^/]*", r"[^/]")


def _path_regex(const: str) -> str:
    segs = const.split("/")
    if segs == ["**"]:
        return r"(?:[^/]+(?:/[^/]+)*)?"
    out: list[str] = []
    need_sep = False
    last = len(segs) - 1
    for i, seg in enumerate(segs):
        if seg == "**":
            if i == last:
                out.append(r"(?:/[^/]+)*")
            else:
                if need_sep:
                    out.append("/")
                out.append(r"(?:[^/]+/)*")
                need_sep = False
            continue
        if need_sep:
            out.append("/")
        out.append(_segment_regex(seg))
        need_sep = True
    return "".join(out)


def path_matcher(const: str) -> Callable[[str], bool]:
    """Matcher for a PATH_GLOB constant, applied to a normalised path."""
    return _full_matcher(_path_regex(const))


# --------------------------------------------------------------------------
# strings and numbers


def compile_string(text: str) -> tuple[int, str]:
    if not isinstance(text, str):
        raise PatternError("a string pattern must be a string")
    if "*" in text or "?" in text:
        return STR_GLOB, text
    return STR_EXACT, text


def string_matcher(const: str) -> Callable[[str], bool]:
    """Matcher for a STR_GLOB constant."""
    return _full_matcher(_glob_regex(const, ".*", "."))


def check_range(type_name: str, lo: int, hi: int) -> None:
    """Validate an inclusive range for a ``port`` or ``int`` parameter."""
    if type_name == PORT:
        low, high, what = PORT_MIN, PORT_MAX, "port"
    elif type_name == INT:
        low, high, what = INT_MIN, INT_MAX, "integer"
    else:
        raise PatternError(f"a range is not valid for a {type_name} parameter")
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, int):
            raise PatternError(f"{what} bounds must be integers")
        if not low <= v <= high:
            raise PatternError(f"{what} {v} out of range ({low}..{high})")
    if lo > hi:
        raise PatternError(f"bad range {lo}..{hi}: the lower bound is greater than the upper bound")
