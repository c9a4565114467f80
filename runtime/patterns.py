"""Pattern syntax and matching for every argument type.

One module decides what a valid pattern is and what it matches. The compiler
calls the ``compile_*`` functions to validate and normalise rule arguments;
the artifact verifier accepts a constant only if ``compile_*`` returns it
unchanged; the enforcer builds its matchers from the same constants. So the
compiler, the verifier and the enforcer cannot disagree.

Semantics (docs/design.md):

- host: case-insensitive DNS names. In a pattern, a label ``*`` is exactly
  one label and ``**`` is one or more labels; wildcards are whole labels.
  IPv4/IPv6 literals and CIDR blocks match IP requests only. A requested
  address is matched as every address it reaches: an IPv4-mapped IPv6
  address is its IPv4 address, the NAT64, IPv4-compatible and
  IPv4-translated forms also count as the IPv4 address they embed, a zone id
  is dropped, and the unspecified addresses also count as loopback. Legacy
  IPv4 spellings the C library accepts (``0x7f000001``, ``127.1``,
  ``0177.0.0.1``, ``2130706433``) are refused as malformed.
- path: ``/``-separated, relative to the root argument. ``*`` and ``?``
  match within one segment, ``**`` matches any number of segments (zero
  included). Requests are normalised first; ``..`` that escapes the root,
  an absolute path or a NUL byte is refused.
- string: exact, or a glob where ``*`` is any run of characters and ``?``
  one character.
- command: the program of ``process.exec``; a path is compared as the file
  it names (lexically normalised, and resolved with ``realpath``), a bare
  name by name (see ``normalize_command`` and docs/design.md).
- port/int: inclusive ranges; ports are 0..65535.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import stat
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar, cast

from .catalog import INT, INT_MAX, INT_MIN, PORT, PORT_MAX, PORT_MIN
from .errors import PatternError
from .format.opcodes import HOST_CIDR, HOST_EXACT, HOST_WILD, STR_EXACT, STR_GLOB
from .memo import Memo

__all__ = [
    "RESOLVE_TTL",
    "Command",
    "HostAddresses",
    "PatternError",
    "check_range",
    "cidr_network",
    "command_index",
    "command_matcher",
    "command_of",
    "compile_command",
    "compile_host",
    "compile_path",
    "compile_string",
    "forget_resolutions",
    "host_wild_matcher",
    "normalize_command",
    "normalize_host",
    "normalize_path",
    "path_matcher",
    "root_relative",
    "string_matcher",
]

MAX_HOST_LEN = 253
MAX_LABEL_LEN = 63
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
# The last label of a name the C library reads as an IPv4 address in one of
# its legacy forms (inet_aton: decimal, octal with a leading 0, hex with 0x).
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)\Z")
_DECIMAL = re.compile(r"[0-9]{1,10}\Z")

# How much of a refused value a message shows (a reason must stay short
# whatever the caller passed).
SHOWN_MAX = 200


def shown(value: str, limit: int = SHOWN_MAX) -> str:
    """``repr(value)``, cut to about ``limit`` characters with an ellipsis."""
    if len(value) <= limit:
        return repr(value)
    return repr(value[:limit]) + f"... ({len(value)} characters)"


def type_name(value: object) -> str:
    """The name of ``value``'s type, read so that no method of the value or its class runs."""
    try:
        name: str = type.__dict__["__name__"].__get__(type(value))
    except Exception:  # pragma: no cover - a type always has a name
        return "?"
    return name if len(name) <= 60 else name[:60] + "..."


def _exact_str(value: object, what: str) -> str:
    """``value`` as an exact ``str`` (a subclass is copied without running its methods)."""
    if type(value) is str:
        return value
    t = type(value)
    if issubclass(t, str):
        return str.__str__(cast(str, value))
    raise ValueError(f"expected {what}, got {type_name(value)}")


# --------------------------------------------------------------------------
# hosts


def _check_label(label: str, text: str) -> None:
    if not label:
        raise PatternError(f"invalid host {shown(text)}: empty label")
    if len(label) > MAX_LABEL_LEN:
        raise PatternError(f"invalid host {shown(text)}: label longer than {MAX_LABEL_LEN} characters")
    if not _LABEL.match(label):
        if "*" in label:
            raise PatternError(f"invalid host pattern {shown(text)}: a wildcard must be a whole label ('*' or '**')")
        raise PatternError(f"invalid host {shown(text)}: bad label {shown(label, 60)}")


def _split_dns(text: str) -> list[str]:
    """Lower-case and split a DNS name or pattern; drops one trailing dot."""
    if len(text) > MAX_HOST_LEN + 1:
        raise PatternError(f"invalid host {shown(text)}: longer than {MAX_HOST_LEN} characters")
    name = text.lower()
    if name.endswith(".") and len(name) > 1:
        name = name[:-1]
    if not name:
        raise PatternError("invalid host: empty")
    if len(name) > MAX_HOST_LEN:
        raise PatternError(f"invalid host {shown(text)}: longer than {MAX_HOST_LEN} characters")
    return name.split(".")


def _looks_numeric(labels: list[str]) -> bool:
    # No top-level domain is a number; a name ending in one is an address in
    # some spelling (getaddrinfo reads 0x7f.1 as 127.0.0.1), never a DNS name.
    return _NUMERIC_LABEL.match(labels[-1]) is not None


def _ipv4_wildcard(labels: list[str], text: str) -> None:
    """Refuse a DNS wildcard shaped like an IPv4 pattern (``192.168.*.*``): name the CIDR block."""
    dec = _DECIMAL.match
    if not dec(labels[0]) or not all(dec(lab) or lab in ("*", "**") for lab in labels):
        return
    k = 0
    while k < len(labels) and dec(labels[k]):
        k += 1
    nums = labels[:k]
    tail = labels[k:]
    if k <= 3 and all(lab in ("*", "**") for lab in tail) and all(int(n) <= 255 for n in nums):
        block = ".".join(nums + ["0"] * (4 - k)) + f"/{8 * k}"
        raise PatternError(
            f"invalid host pattern {shown(text)}: wildcards match DNS names, never IP addresses; "
            f"for the addresses {'.'.join(nums)}.* write the CIDR block {block!r}"
        )
    raise PatternError(
        f"invalid host pattern {shown(text)}: wildcards match DNS names, never IP addresses; "
        f"IP addresses are matched by CIDR blocks such as '10.0.0.0/8'"
    )


def compile_host(text: str) -> tuple[int, str]:
    """Validate a host pattern; return ``(opcode, normalised constant)``.

    An address or a CIDR block is written in its ``ipaddress`` normal form.
    A block inside ``::ffff:0:0/96`` (IPv4-mapped) keeps its IPv6 spelling in
    the artifact but matches as the IPv4 block it denotes (``cidr_network``).
    """
    if not isinstance(text, str):
        raise PatternError("a host pattern must be a string")
    if "%" in text and ":" in text:
        raise PatternError(
            f"invalid host {shown(text)}: a zone id ('%...') names a local interface, not an "
            f"address; a rule matches the address on every interface, so drop it"
        )
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise PatternError(f"invalid CIDR block {shown(text)}: {exc}") from None
        return HOST_CIDR, str(net)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return HOST_CIDR, str(ipaddress.ip_network(addr))
    if ":" in text:
        raise PatternError(f"invalid host {shown(text)}: not an IPv6 address; a port goes in its own argument")
    labels = _split_dns(text)
    if "*" in text:
        _ipv4_wildcard(labels, text)
    wild = False
    for label in labels:
        if label in ("*", "**"):
            wild = True
        else:
            _check_label(label, text)
    if _looks_numeric(labels):
        raise PatternError(
            f"invalid host {shown(text)}: looks like an IP address; use an address in the form "
            f"a.b.c.d or a CIDR block such as 10.0.0.0/8"
        )
    return (HOST_WILD if wild else HOST_EXACT), ".".join(labels)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class HostAddresses(tuple[IPAddress, ...]):
    """The addresses one requested IP literal reaches, the literal's own first.

    ``normalize_host`` returns one for an address that also reaches an IPv4
    address it embeds (NAT64 ``64:ff9b::/96``, IPv4-compatible ``::a.b.c.d``,
    IPv4-translated ``::ffff:0:a.b.c.d``) and for the unspecified addresses,
    which connect to the local host (``0.0.0.0`` also counts as 127.0.0.1,
    ``::`` as ``::1``). A CIDR rule matches it when it contains any of them.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"HostAddresses({', '.join(map(str, self))})"


_V4_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
_V6_LOOPBACK = ipaddress.IPv6Address("::1")
_V4_ANY = ipaddress.IPv4Address("0.0.0.0")
_V6_ANY = ipaddress.IPv6Address("::")
_NAT64 = int(ipaddress.IPv6Address("64:ff9b::")) >> 32
_TRANSLATED = int(ipaddress.IPv6Address("::ffff:0:0:0")) >> 32
_MAPPED_NET = ipaddress.IPv6Network("::ffff:0:0/96")


def address_value(addr: IPAddress) -> IPAddress | HostAddresses:
    """A requested address as matched: canonical, with every address it also reaches."""
    if addr.version == 6:
        if addr.scope_id is not None:  # fe80::1%eth0: the address itself
            addr = ipaddress.IPv6Address(int(addr))
        mapped = addr.ipv4_mapped
        if mapped is not None:
            addr = mapped  # ::ffff:a.b.c.d is the IPv4 address, on every socket
        else:
            n = int(addr)
            hi = n >> 32
            if hi in (_NAT64, _TRANSLATED) or (hi == 0 and n > 1):
                return HostAddresses((addr, ipaddress.IPv4Address(n & 0xFFFFFFFF)))
            if n == 0:
                return HostAddresses((_V6_ANY, _V6_LOOPBACK))
            return addr
    if addr == _V4_ANY:
        return HostAddresses((_V4_ANY, _V4_LOOPBACK))
    return addr


def normalize_host(value: object) -> str | IPAddress | HostAddresses:
    """Normalise a requested host: a lower-case DNS name, or the address(es) it denotes.

    An IP literal (with or without brackets or a zone id) becomes an
    ``IPv4Address``/``IPv6Address``, or a :class:`HostAddresses` when it
    reaches more than one address (``address_value``). Anything the C library
    would read as an address in another spelling is refused. Raises
    ValueError with a reason for anything that is not a host.
    """
    value = _exact_str(value, "a host name")
    if len(value) > MAX_HOST_LEN + 2:  # the longest name, or a bracketed IPv6 address with a zone
        raise ValueError(f"malformed host {shown(value)}: longer than {MAX_HOST_LEN} characters")
    text = value
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        try:
            return address_value(ipaddress.IPv6Address(text))
        except ValueError:
            raise ValueError(f"malformed host {shown(value)}") from None
    try:
        return address_value(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        labels = _split_dns(text)
        for label in labels:
            _check_label(label, text)
    except PatternError:
        raise ValueError(f"malformed host {shown(value)}") from None
    if _looks_numeric(labels):
        raise ValueError(f"malformed host {shown(value)}: an IP address must be written a.b.c.d (or in IPv6 form)")
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
    """The network a HOST_CIDR constant matches: an IPv4-mapped block as its IPv4 block."""
    net = ipaddress.ip_network(const, strict=True)
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(_MAPPED_NET):
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


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
            f"invalid path pattern {shown(text)}: paths are relative to the root argument; drop the leading '/'"
        )
    segments: list[str] = []
    for seg in text.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            raise PatternError(f"invalid path pattern {shown(text)}: '..' is not allowed")
        if "**" in seg and seg != "**":
            raise PatternError(f"invalid path pattern {shown(text)}: '**' must be a whole path segment")
        if seg == "**" and segments and segments[-1] == "**":
            continue  # '**/**' is '**'
        segments.append(seg)
    if not segments:
        raise PatternError(f'invalid path pattern {shown(text)}: empty; use "**" for any path')
    return "/".join(segments)


def root_relative(path: str) -> str:
    """An absolute file path as the argument of a path parameter rooted at '/' (``native.load``):
    normalised, without the leading '/' (``/usr/lib/../lib/libc.so.6`` -> ``usr/lib/libc.so.6``).

    Lexical only (resolve symlinks first: ``os.path.realpath``). Raises ValueError for a
    non-string, a relative path, or a NUL byte; ``..`` at the top stays at the root, as in
    the file system.
    """
    value = _exact_str(path, "a path")
    if "\0" in value:
        raise ValueError("path contains a NUL byte")
    if not value.startswith("/"):
        raise ValueError(f"relative path {shown(value)}: a path rooted at '/' must be absolute")
    out: list[str] = []
    for seg in value.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
        else:
            out.append(seg)
    return "/".join(out)


def normalize_path(value: object) -> str:
    """Normalise a requested path relative to its root ('' is the root itself).

    Raises ValueError for a non-string, a NUL byte, an absolute path, or a
    path whose ``..`` segments climb out of the root.
    """
    value = _exact_str(value, "a path")
    if "\0" in value:
        raise ValueError("path contains a NUL byte")
    if value.startswith("/"):
        raise ValueError(f"absolute path {shown(value)}: paths are relative to the root")
    out: list[str] = []
    for seg in value.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                raise ValueError(f"path {shown(value)} escapes its root")
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
# commands (the program of process.exec)
#
# A command is a path (it contains a '/') or a bare name (looked up through
# PATH when it is run). Rule patterns: an absolute path or path glob, or a
# bare name or name glob; '*' is any run of characters, '?' one character.
# A request is matched through all its spellings (``Command``): for a path,
# the lexically normalised absolute path and its real path
# (``os.path.realpath``); for a bare name, the name and the file PATH gives
# for it (and its real path); and the identity (device, inode) of the file
# it runs, when that exists. A path rule matches a request when the
# constant, or the real path of a glob's literal directories, matches one of
# the request's paths, or when the constant names the very file the request
# runs. A bare-name deny matches a request whose text as given, or any of
# its names (the final component of every path), matches; a bare-name
# entitle matches a bare request of that name only. A bare name without
# wildcards, deny or entitle, also matches a request for the very file the
# name resolves to through PATH. So another spelling of a denied file never
# slips past the deny, and an entitled name never allows another program
# that merely has the same name.

MAX_COMMAND_LEN = 4096  # PATH_MAX


def _lexical(path: str) -> str:
    """An absolute path, normalised without touching the file system (``//`` is ``/``)."""
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


def compile_command(text: str) -> tuple[int, str]:
    """Validate a command pattern; return ``(STR_EXACT | STR_GLOB, normalised constant)``."""
    if not isinstance(text, str):
        raise PatternError("a command pattern must be a string")
    if not text:
        raise PatternError('invalid command pattern "": empty; use * for any command')
    if "\0" in text:
        raise PatternError("invalid command pattern: contains a NUL byte")
    if len(text) > MAX_COMMAND_LEN:
        raise PatternError(f"invalid command pattern: longer than {MAX_COMMAND_LEN} characters")
    if "/" in text:
        if not text.startswith("/"):
            name = text.rstrip("/").rpartition("/")[2] or text
            raise PatternError(
                f"invalid command pattern {shown(text)}: a command path in a rule must be absolute "
                f"(a bare name such as {shown(name, 60)} matches that program in any directory)"
            )
        norm = _lexical(text)
    elif text in (".", ".."):
        raise PatternError(f"invalid command pattern {shown(text)}: not a program")
    else:
        norm = text
    return (STR_GLOB if "*" in norm or "?" in norm else STR_EXACT), norm


FileId = tuple[int, int]


class Command:
    """A requested command with every spelling it is matched through (``normalize_command``).

    ``text``: the request as given; ``bare``: no ``/`` in it; ``paths``: the
    absolute paths it names (lexical form or the PATH lookup of a bare name,
    then real paths); ``names``: the bare name and the final component of
    every path; ``file``: (device, inode) of the file it runs, None when
    there is none. ``deny_names``: what a bare-name deny is tested against
    (the names and the text as given).
    """

    __slots__ = ("bare", "deny_names", "file", "names", "paths", "text")

    def __init__(
        self, text: str, bare: bool, paths: tuple[str, ...], names: tuple[str, ...], file: FileId | None
    ) -> None:
        self.text = text
        self.bare = bare
        self.paths = paths
        self.names = names
        self.file = file
        self.deny_names = names if text in names else (text, *names)

    def _key(self) -> tuple[Any, ...]:
        return (self.text, self.bare, self.paths, self.names, self.file)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Command:
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # equal by value, and mutable: not hashable

    def __repr__(self) -> str:
        return f"Command({self.text!r}, paths={self.paths!r}, names={self.names!r}, file={self.file!r})"


# What the file system says about a path or a PATH lookup is reused for at most
# RESOLVE_TTL seconds (bounded, process-wide): a process.exec check costs a few
# dict probes instead of a dozen system calls, and a change of a symlink or of
# PATH is seen within that time. A path can change between any check and the
# exec anyway; what the memo adds is at most RESOLVE_TTL of that.
RESOLVE_TTL = 1.0
_RESOLVED_MAX = 4096
_resolved: Memo[tuple[Any, ...], tuple[object, float]] = Memo("file-system answers", _RESOLVED_MAX)
_resolved_get = _resolved.get  # bound once: as cheap as a plain dict's .get
_UNSET = object()
_T = TypeVar("_T")


def _remembered(key: tuple[Any, ...]) -> object:
    hit = _resolved_get(key)
    if hit is not None and hit[1] > time.monotonic():
        return hit[0]
    return _UNSET


def _remember(key: tuple[Any, ...], value: _T) -> _T:
    if len(key[1]) <= MAX_COMMAND_LEN:
        _resolved.put(key, (value, time.monotonic() + RESOLVE_TTL))
    return value


# PATH as os.environ holds it (os.environ["PATH"] = ... updates it; execvp reads
# it), read without decoding: os.environ keeps the encoded bytes in ``_data``.
_ENVIRON_DATA = getattr(os.environ, "_data", None)
try:
    _PATH_KEY: object = os.environ.encodekey("PATH")
except AttributeError:  # pragma: no cover - not CPython's os._Environ
    _ENVIRON_DATA = None
    _PATH_KEY = "PATH"


def _path_token() -> object:
    """Something that changes whenever PATH does (the raw value), cheaply."""
    if _ENVIRON_DATA is not None:
        return _ENVIRON_DATA.get(_PATH_KEY)
    return os.environ.get("PATH")


# Bumped by forget_resolutions(): what a command index derived from remembered answers
# (command_index's file identities) is dropped with them.
_epoch = 0


def forget_resolutions() -> None:
    """Drop every remembered file-system answer (the next check looks again)."""
    global _epoch
    _epoch += 1
    _resolved.clear()
    _COMMANDS.clear()
    _BY_NAMES.clear()


def _file_id(path: str) -> FileId | None:
    """(device, inode) of the file ``path`` leads to now; None when there is none."""
    key = ("id", path)
    hit = _remembered(key)
    if hit is not _UNSET:
        return hit  # type: ignore[return-value]  # the memo holds object: no cast() call on the check path
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return _remember(key, None)
    return _remember(key, (st.st_dev, st.st_ino))


def _path_dirs() -> tuple[tuple[str, ...], object]:
    """PATH's directories and a memo key for what a lookup in them finds (None: do not remember)."""
    token = _path_token()
    hit = _path_split_get(token)
    if hit is None:
        path_env = os.environ.get("PATH")
        if path_env is None:
            path_env = os.defpath
        dirs = tuple(path_env.split(os.pathsep))
        hit = (dirs, any(not d.startswith("/") for d in dirs))
        _PATH_SPLIT.put(token, hit)
    dirs, relative = hit
    if not relative:
        return dirs, token
    try:  # "" or "." entries: the working directory counts too
        return dirs, (token, os.getcwd())
    except OSError:
        return dirs, None


_PATH_SPLIT: Memo[object, tuple[tuple[str, ...], bool]] = Memo("PATH split", 64)
_path_split_get = _PATH_SPLIT.get


def _which(name: str) -> tuple[str, FileId] | None:
    """What ``execvp`` would run for a bare name: the first executable regular file on PATH."""
    dirs, where = _path_dirs()
    key = ("which", name, where)
    hit = _remembered(key) if where is not None else _UNSET
    if hit is not _UNSET:
        return hit  # type: ignore[return-value]  # the memo holds object: no cast() call on the check path
    for d in dirs:
        p = posixpath.join(d or ".", name)
        try:
            st = os.stat(p)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode) and os.access(p, os.X_OK):
            return _remember(key, (_lexical(os.path.abspath(p)), (st.st_dev, st.st_ino)))
    return _remember(key, None)


def _realpath(path: str) -> str:
    """``os.path.realpath`` of an absolute path (remembered like the rest)."""
    key = ("real", path)
    hit = _remembered(key)
    if hit is not _UNSET:
        return hit  # type: ignore[return-value]  # the memo holds object: no cast() call on the check path
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"command {shown(path)} cannot be resolved ({type_name(exc)})") from None
    return _remember(key, real)


def normalize_command(value: object, *, resolve: bool = True) -> Command:
    """A requested command with its spellings; ``resolve=False`` leaves the file system alone.

    Raises ValueError for a non-string, an empty command, a NUL byte, one
    longer than 4096 characters, or a path that cannot be resolved.
    """
    text = _exact_str(value, "a command")
    if not text:
        raise ValueError("empty command")
    if "\0" in text:
        raise ValueError("command contains a NUL byte")
    if len(text) > MAX_COMMAND_LEN:
        raise ValueError(f"command longer than {MAX_COMMAND_LEN} characters")
    bare = "/" not in text
    paths: list[str] = []
    file: FileId | None = None
    if not bare:
        if text.startswith("/"):
            paths.append(_lexical(text))
        elif resolve:
            try:
                cwd = os.getcwd()
            except OSError:
                raise ValueError(f"relative command {shown(text)}: the working directory is gone") from None
            paths.append(_lexical(posixpath.join(cwd, text)))
        if resolve and paths:
            file = _file_id(paths[0])
    elif resolve:
        found = _which(text)
        if found is not None:
            paths.append(found[0])
            file = found[1]
    if resolve and paths:
        real = _realpath(paths[0])
        if real != paths[0]:
            paths.append(real)
    names: list[str] = [text] if bare else []
    for p in paths:
        n = posixpath.basename(p)
        if n not in names:
            names.append(n)
    return Command(text, bare, tuple(paths), tuple(names), file)


# command_of's own memo, keyed by the command alone: (Command, token, expiry), where the
# token is PATH's raw value (the very object) for a bare name, _ABSOLUTE for an absolute
# path, and the expiry the one of the Command's entry in _resolved (never later). A bare
# name under a PATH with relative entries, or a relative path, depends on the working
# directory too and is not kept here.
_COMMANDS: Memo[str, tuple[Command, object, float]] = Memo("commands", _RESOLVED_MAX)
_commands_get = _COMMANDS.get
_ABSOLUTE = object()


def command_of(value: object) -> Command:
    """``normalize_command(value)``, remembered for RESOLVE_TTL seconds like the lookups it makes."""
    if type(value) is not str or len(value) > MAX_COMMAND_LEN:
        return normalize_command(value)
    fast = _commands_get(value)
    if (
        fast is not None
        and fast[2] > time.monotonic()
        and fast[1] is (_ABSOLUTE if value.startswith("/") else _path_token())
    ):
        return fast[0]
    token: object = None
    if value.startswith("/"):
        key: tuple[Any, ...] = ("cmd", value)
        token = _ABSOLUTE
    elif "/" in value:
        try:
            key = ("cmd", value, os.getcwd())
        except OSError:
            return normalize_command(value)
    else:
        where = _path_dirs()[1]
        if where is None:
            return normalize_command(value)
        key = ("cmd", value, where)
        if type(where) is not tuple:  # PATH alone decides (no relative entries)
            token = where
    entry = _resolved_get(key)
    if entry is None or entry[1] <= time.monotonic():
        _remember(key, normalize_command(value))
        entry = _resolved_get(key)
        if entry is None:  # pragma: no cover - _remember keeps every command of at most MAX_COMMAND_LEN
            return normalize_command(value)
    cmd = entry[0]
    assert isinstance(cmd, Command)
    if token is not None:
        _COMMANDS.put(value, (cmd, token, entry[1]))
    return cmd


def _glob_dirs(const: str) -> tuple[str, str]:
    """``(literal directories, rest)`` of an absolute glob: ``/usr/bin/py*`` -> (``/usr/bin``, ``py*``)."""
    segs = const.split("/")
    i = next(k for k, seg in enumerate(segs) if "*" in seg or "?" in seg)
    return "/".join(segs[:i]) or "/", "/".join(segs[i:])


def command_matcher(
    op: int, const: str, *, deny: bool, glob_matcher: Callable[[str], Callable[[str], bool]] | None = None
) -> Callable[[Command], bool]:
    """Matcher for a command rule constant (STR_EXACT or STR_GLOB), applied to a ``Command``.

    What the constant names on this machine is looked up when it is needed
    (remembered for RESOLVE_TTL seconds). ``deny`` selects how a bare name
    matches (see the comment above). ``glob_matcher`` builds the test of a
    glob (``string_matcher`` semantics; the enforcer passes its faster one).
    """
    glob = op == STR_GLOB
    if glob_matcher is None:
        glob_matcher = string_matcher
    test: Callable[[str], bool] = glob_matcher(const) if glob else const.__eq__
    if const.startswith("/"):
        if glob:
            head, rest = _glob_dirs(const)

            def path_glob(cmd: Command) -> bool:
                paths = cmd.paths
                for p in paths:
                    if test(p):
                        return True
                try:
                    real = _realpath(head)
                except ValueError:
                    return False
                if real == head:
                    return False
                alt = _string_matcher_cached(real.rstrip("/") + "/" + rest)
                for p in paths:  # noqa: SIM110 - a check path: a loop is cheaper than any() of a generator
                    if alt(p):
                        return True
                return False

            return path_glob

        def path_exact(cmd: Command) -> bool:
            if const in cmd.paths:
                return True
            return cmd.file is not None and _file_id(const) == cmd.file

        return path_exact

    def same_file(cmd: Command) -> bool:
        if glob or cmd.file is None:
            return False
        found = _which(const)
        return found is not None and found[1] == cmd.file

    if deny:

        def deny_name(cmd: Command) -> bool:
            for n in cmd.deny_names:
                if test(n):
                    return True
            return same_file(cmd)

        return deny_name

    def entitle_name(cmd: Command) -> bool:
        return (cmd.bare and test(cmd.text)) or same_file(cmd)

    return entitle_name


def _glob_shape(const: str) -> tuple[int, str] | None:
    """A name glob ``P*``, ``*S`` or ``*X*`` (no other wildcard) as ``(shape, literal)``:
    0 starts with, 1 ends with, 2 contains; None for any other glob."""
    core = const.strip("*")
    if not core or "*" in core or "?" in core or len(const) - len(core) > 2:
        return None
    lead, trail = const[0] == "*", const[-1] == "*"
    return (2 if lead and trail else 0 if trail else 1), core


# A command rule of command_index: (key, deny, opcode, constant, its command_matcher).
CommandRule = tuple[int, bool, int, str, Callable[[Command], bool]]
# Up to this many name-glob literals of one kind are probed with one regex (the longest
# literal the name starts or ends with); more, with one dict probe per distinct length.
_AFFIX_REGEX_MAX = 32


_Keys = tuple[int, int]  # (smallest deny key, smallest entitle key)


def _affix_table(
    deny: dict[str, int], entitle: dict[str, int], suffix: bool, none: int
) -> tuple[Callable[[str], re.Match[str] | None] | None, dict[str, _Keys], tuple[int, ...]]:
    """How to find the smallest keys of the name globs ``P*`` (``*S`` when ``suffix``) a name
    matches, given each side's literal -> smallest key.

    ``(find, chain, lengths)``: ``chain`` maps every literal to the smallest deny and entitle
    keys of the literals it starts (ends) with itself, so only the longest literal a name
    starts (ends) with counts; ``find`` is a regex that finds that literal, or None (too many
    literals for one regex): probe ``chain`` at each of ``lengths``, longest first."""
    lits = set(deny) | set(entitle)
    lengths = sorted({len(k) for k in lits})
    chain: dict[str, _Keys] = {}
    for lit in lits:
        d = e = none
        for k in lengths:
            if k > len(lit):
                break
            part = lit[-k:] if suffix else lit[:k]
            d = min(d, deny.get(part, none))
            e = min(e, entitle.get(part, none))
        chain[lit] = (d, e)
    find = None
    if 0 < len(lits) <= _AFFIX_REGEX_MAX:
        # alternatives longest first: the first that matches is the longest literal the name
        # starts with; for a suffix, the leftmost match that ends the name is the longest one
        alts = "|".join(re.escape(lit) for lit in sorted(lits, key=lambda x: (-len(x), x)))
        find = re.compile(f"(?:{alts})\\Z", re.DOTALL).search if suffix else re.compile(alts, re.DOTALL).match
    return find, chain, tuple(reversed(lengths))


def _longest(n: str, chain: dict[str, _Keys], lengths: tuple[int, ...], suffix: bool) -> _Keys | None:
    """``chain``'s keys of the longest literal ``n`` starts (ends) with, None when none."""
    for k in lengths:
        if k <= len(n):
            got = chain.get(n[-k:] if suffix else n[:k])
            if got is not None:
                return got
    return None


# command_index's answers from a request's spellings alone (names, globs of names, exact
# paths): (index token, command as given) -> (the Command they were found for, key). An entry
# counts only for that very Command object, which command_of's memo hands out while the
# lookups it was made from hold; the file identities and path globs are looked at every time.
_BY_NAMES: Memo[tuple[object, str], tuple[Command, int]] = Memo("command index names", _RESOLVED_MAX)


def command_index(rules: list[CommandRule], any_key: int, none: int) -> Callable[[object], int]:
    """One matcher for many command rules: ``first(value)`` normalises a requested command
    as :func:`command_of` does (the same memo, probed inline; ValueError for a malformed
    one) and returns the smallest key of a rule whose ``command_matcher`` accepts it
    (``any_key`` counts as a rule that accepts every command), ``none`` when no rule does.

    Exactly what the rules' matchers decide, with probes instead of one call per rule:
    exact names by name (a deny against every name of the request, an entitle against a
    bare request's text), name globs ``P*``/``*S`` by the longest literal the name starts
    or ends with, exact paths by path, and the exact constants that lead to the request's
    file (``path_exact``'s ``_file_id``, ``same_file``'s ``_which``) through one map of file
    identities. That map is built from the remembered lookups those matchers make, and used
    until the first of them expires (so never longer than RESOLVE_TTL), for the PATH (and
    working directory) ``_which`` remembered them for; ``forget_resolutions`` drops it.
    ``*X*`` and other name globs, and path globs (through their own matcher), are scanned,
    only those ranked before the best match so far.
    """
    exact: dict[str, _Keys] = {}
    path_exact: dict[str, int] = {}
    affix: list[dict[str, int]] = [{}, {}, {}, {}]  # deny starts, deny ends, entitle starts, entitle ends
    deny_in: list[tuple[int, str]] = []
    ent_in: list[tuple[int, str]] = []
    deny_glob: list[tuple[int, Callable[[str], bool]]] = []
    ent_glob: list[tuple[int, Callable[[str], bool]]] = []
    path_glob: list[tuple[int, Callable[[Command], bool]]] = []
    file_paths: list[tuple[str, int]] = []
    file_names: list[tuple[str, int]] = []
    for key, deny, op, const, fn in sorted(rules, key=lambda r: r[0]):
        if const.startswith("/"):
            if op == STR_GLOB:
                path_glob.append((key, fn))
            else:
                path_exact[const] = min(key, path_exact.get(const, none))
                file_paths.append((const, key))
        elif op != STR_GLOB:
            d, e = exact.get(const, (none, none))
            exact[const] = (min(d, key), e) if deny else (d, min(e, key))
            file_names.append((const, key))
        else:
            shape = _glob_shape(const)
            if shape is None:
                (deny_glob if deny else ent_glob).append((key, _string_matcher_cached(const)))
            elif shape[0] == 2:
                (deny_in if deny else ent_in).append((key, shape[1]))
            else:
                lits = affix[shape[0] + (0 if deny else 2)]
                lits[shape[1]] = min(key, lits.get(shape[1], none))
    pre_find, pre, pre_lens = _affix_table(affix[0], affix[2], False, none)
    suf_find, suf, suf_lens = _affix_table(affix[1], affix[3], True, none)
    file_min = min([k for _, k in file_paths + file_names], default=none)
    # the smallest key of each part: a part that cannot beat the best match so far is skipped
    exact_min = min([min(k) for k in exact.values()], default=none)
    pre_min = min([min(k) for k in pre.values()], default=none)
    suf_min = min([min(k) for k in suf.values()], default=none)
    path_min = min(path_exact.values(), default=none)
    by_name = bool(file_names)
    inf = float("inf")
    # (epoch, PATH's memo key, expiry, file identity -> key): the file map in use
    state: list[tuple[int, object, float, dict[FileId, int]] | None] = [None]
    environ_get = _ENVIRON_DATA.get if _ENVIRON_DATA is not None else None
    path_key = _PATH_KEY
    token = object()  # this index's part of its keys in _BY_NAMES
    _names_get = _BY_NAMES.get

    def files() -> dict[FileId, int]:
        """File identity -> smallest key of an exact constant that leads to that file."""
        now = time.monotonic()
        st = state[0]
        if st is not None and st[2] > now and st[0] == _epoch:
            # kept for this very PATH value (one without relative entries: _path_dirs' key is
            # the value itself), or the map needs no PATH
            w = st[1]
            if w is _ABSOLUTE or w is (environ_get(path_key) if environ_get is not None else _path_token()):
                return st[3]
        where = _path_dirs()[1] if by_name else _ABSOLUTE
        if st is not None and st[2] > now and st[0] == _epoch and where is not None and st[1] == where:
            return st[3]
        epoch = _epoch
        expiry = inf
        out: dict[FileId, int] = {}
        for const, key in file_paths:
            fid = _file_id(const)
            entry = _resolved_get(("id", const))
            # the expiry of the very answer used: another thread may have looked again since
            expiry = min(expiry, entry[1]) if entry is not None and entry[0] == fid else now
            if fid is not None and out.get(fid, none) > key:
                out[fid] = key
        for const, key in file_names:
            found = _which(const)
            entry = _resolved_get(("which", const, where)) if where is not None else None
            expiry = min(expiry, entry[1]) if entry is not None and entry[0] == found else now
            if found is not None and out.get(found[1], none) > key:
                out[found[1]] = key
        if where is not None and expiry > now:
            state[0] = (epoch, where, expiry, out)
        return out

    def by_names(cmd: Command) -> int:
        """The smallest key among the parts decided by the command's own spellings alone."""
        best = any_key
        names = cmd.deny_names  # a bare request's text first: denies and entitles test it
        bare = cmd.bare
        for n in names:
            if exact_min < best:
                e = exact.get(n)
                if e is not None:
                    if e[0] < best:
                        best = e[0]
                    if bare and e[1] < best:
                        best = e[1]
            if pre_min < best:
                if pre_find is not None:
                    m = pre_find(n)
                    e = pre[m[0]] if m is not None else None
                else:
                    e = _longest(n, pre, pre_lens, False)
                if e is not None:
                    if e[0] < best:
                        best = e[0]
                    if bare and e[1] < best:
                        best = e[1]
            if suf_min < best:
                if suf_find is not None:
                    m = suf_find(n)
                    e = suf[m[0]] if m is not None else None
                else:
                    e = _longest(n, suf, suf_lens, True)
                if e is not None:
                    if e[0] < best:
                        best = e[0]
                    if bare and e[1] < best:
                        best = e[1]
            bare = False  # the other names: denies only
        for r, core in deny_in:
            if r >= best:
                break
            for n in names:
                if core in n:
                    best = r
                    break
        for r, test in deny_glob:
            if r >= best:
                break
            for n in names:
                if test(n):
                    best = r
                    break
        if cmd.bare and (ent_in or ent_glob):
            t = cmd.text
            for r, core in ent_in:
                if r >= best:
                    break
                if core in t:
                    best = r
                    break
            for r, test in ent_glob:
                if r >= best:
                    break
                if test(t):
                    best = r
                    break
        if path_min < best:
            for p in cmd.paths:
                hit = path_exact.get(p)
                if hit is not None and hit < best:
                    best = hit
        return best

    def first(value: object) -> int:
        # command_of(value), its memo probed inline (a Command kept for a PATH or for good)
        cmd: Command | None = None
        if type(value) is str:
            fast = _commands_get(value)
            if fast is not None and fast[2] > time.monotonic():
                # command_of keeps _ABSOLUTE for a value starting with "/" and PATH's value for
                # a bare name, so either token is current exactly when command_of's test holds
                tok = fast[1]
                if tok is _ABSOLUTE or tok is (environ_get(path_key) if environ_get is not None else _path_token()):
                    cmd = fast[0]
        if cmd is None:
            cmd = command_of(value)
        # the parts decided by the Command alone, remembered for this very Command object
        # (a new lookup, a PATH change or forget_resolutions makes a new one: a miss)
        if type(value) is str and len(value) <= MAX_COMMAND_LEN:
            memo_key = (token, value)
            known = _names_get(memo_key)
            if known is not None and known[0] is cmd:
                best = known[1]
            else:
                best = by_names(cmd)
                _BY_NAMES.put(memo_key, (cmd, best))
        else:
            best = by_names(cmd)
        f = cmd.file
        if f is not None and file_min < best:
            hit = files().get(f)
            if hit is not None and hit < best:
                best = hit
        for r, match in path_glob:
            if r >= best:
                break
            if match(cmd):
                best = r
                break
        return best

    return first


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


_string_matcher_cached = lru_cache(maxsize=1024)(string_matcher)


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
