"""The audit events the guard handles and the capability request each becomes.

Each handler is ``handler(guard, args, frame, tid)``: ``args`` are the
event's arguments, ``frame`` the Python frame that called the operation. It
returns to let the operation go on, or raises
:class:`~polc.runtime.PolicyDenied` (through :meth:`Guard.apply`) to stop it
before it happens. :data:`HANDLERS` is the table docs/guard.md prints.
"""

from __future__ import annotations

import _socket
import ipaddress
import os
import posixpath
import stat
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..enforce.decision import Decision
from ..enforce.snapshot import Snapshot
from ..patterns import RESOLVE_TTL
from .core import Found, Guard
from .effects import ALLOWED
from .paths import Undecidable, as_text

__all__ = ["ALWAYS", "HANDLERS", "MEMO_EVENTS", "OPEN_EXEMPT", "deny_self", "executable_of", "module_name"]

Handler = Callable[[Guard, tuple[Any, ...], FrameType, int], None]

_dict_get = dict.get
_NET_OUT = "network.outbound"
_EXEC = "process.exec"
_FOREVER = float("inf")  # an allowed address holds for the snapshot's life
_ACCMODE = os.O_ACCMODE
_WRITE_FLAGS = os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITES = os.O_WRONLY | os.O_RDWR | _WRITE_FLAGS  # any of them: the open may write
_family_of = _socket.socket.__dict__["family"].__get__  # the C getter: no Python property, no enum
_INET = (_socket.AF_INET, _socket.AF_INET6)
_UNIX = getattr(_socket, "AF_UNIX", None)

# The import system reading (and caching) modules on its own behalf.
_IMPORT_SYSTEM = frozenset({"_frozen_importlib", "_frozen_importlib_external", "zipimport", "importlib._bootstrap",
                            "importlib._bootstrap_external", "importlib.machinery", "importlib.util"})
_IMPORT_SUFFIXES = (".py", ".pyc", ".pyw", ".so", ".pth", ".zip", ".egg", ".whl")
_NULL_DEVICE = "/dev/null"


def module_name(f: FrameType | None) -> str | None:
    """The frame's module name; None for none, or for a name that is not a plain str (forged globals)."""
    name = _dict_get(f.f_globals, "__name__") if f is not None else None
    return name if type(name) is str else None


def _import_file(path: object) -> bool:
    """A file the import system reads or caches: sources, bytecode (and its temporary), extensions, dirs."""
    try:
        text = as_text(path)
    except Undecidable:
        return False
    name = text.rstrip("/").rpartition("/")[2]
    if name == "__pycache__" or text.rstrip("/").endswith("/__pycache__"):
        return True
    if name.endswith(_IMPORT_SUFFIXES) or ".cpython-" in name:
        return True
    # importlib's atomic .pyc write: '<name>.pyc.<id>' in __pycache__
    return "/__pycache__/" in text and ".pyc." in name


def _bytecode_file(path: object) -> bool:
    """What the import system writes: a __pycache__ directory, bytecode in it (and its temporary)."""
    try:
        text = as_text(path).rstrip("/")
    except Undecidable:
        return False
    head, _, name = text.rpartition("/")
    if name == "__pycache__":
        return True
    return head.endswith("/__pycache__") and (name.endswith(".pyc") or ".pyc." in name)


# importlib._bootstrap's entry points of an import the interpreter runs (an import statement,
# importlib.import_module, importlib.reload): the bytecode written under one of them is the
# import's own cache of a source file.
_IMPORT_ENTRIES = frozenset({"_find_and_load", "_find_and_load_unlocked", "_load_unlocked", "_load", "_exec"})
_BOOTSTRAP = frozenset({"importlib._bootstrap", "_frozen_importlib"})


def _inside_import(f: FrameType | None) -> bool:
    """Is the innermost run of import-system frames, from ``f`` outwards, part of an import
    (it reaches an entry point of importlib._bootstrap before any other module's frame)? A
    governed package calling importlib's writers itself, or through a loader of its own (its
    frame sits in between), is not: its writes are checked like any other."""
    while f is not None:
        name = module_name(f)
        if name not in _IMPORT_SYSTEM:
            return False
        if name in _BOOTSTRAP and f.f_code.co_name in _IMPORT_ENTRIES:
            return True
        f = f.f_back
    return False


def _import_write(f: FrameType | None, path: object) -> bool:
    """Bytecode the import system caches during an import (the only files it writes)."""
    return module_name(f) in _IMPORT_SYSTEM and _bytecode_file(path) and _inside_import(f)


def _on_behalf_of_interpreter(f: FrameType, path: object, write: bool = False) -> bool:
    """Reads the interpreter makes for itself: imports, and linecache reading a source for a
    traceback; ``write``: bytecode the import system caches during an import."""
    name = module_name(f)
    if name in _IMPORT_SYSTEM:
        return _import_write(f, path) if write else _import_file(path)
    if name == "tokenize" and module_name(f.f_back) == "linecache":
        try:
            return as_text(path).endswith(".py")
        except Undecidable:
            return False
    return False


# -- the file system -----------------------------------------------------------


def _fs(guard: Guard, f: FrameType, tid: int, capability: str, path: object, dir_fd: object, follow: bool) -> None:
    if type(path) is int or path is None:
        return  # an open descriptor (or the working directory): what it reaches was checked when opened
    found, polc_inner = guard.attribute(f, tid)
    if not found:
        return
    absolute = guard.paths.absolute(as_text(path), dir_fd)
    real = guard.paths.resolve(absolute, follow=follow)
    if real == _NULL_DEVICE:
        return
    if polc_inner and guard.in_policy_dir(real):
        return  # the agent reading its own policy directory
    guard.fs(found, capability, real)


def _fs_two(guard: Guard, f: FrameType, tid: int, requests: tuple[tuple[str, object, object, bool], ...]) -> None:
    """Several paths of one operation (rename, link): attributed once, each decided."""
    found, polc_inner = guard.attribute(f, tid)
    if not found:
        return
    for capability, path, dir_fd, follow in requests:
        if type(path) is int or path is None:
            continue
        if type(dir_fd) is int and dir_fd < 0:
            dir_fd = None
        real = guard.paths.resolve(guard.paths.absolute(as_text(path), dir_fd), follow=follow)
        if real == _NULL_DEVICE or (polc_inner and guard.in_policy_dir(real)):
            continue
        guard.fs(found, capability, real)


def _open(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    path, _mode, flags = args
    if type(path) is int:
        return
    if f is not None:
        caller = _dict_get(f.f_globals, "__name__")
        interpreter = type(caller) is str and (caller in _IMPORT_SYSTEM or caller == "tokenize")
        if interpreter and _on_behalf_of_interpreter(f, path, type(flags) is not int or bool(flags & _WRITES)):
            return
    found, polc_inner = guard.attribute(f, tid)
    if not found:
        return
    if type(flags) is not int:
        raise Undecidable("open flags are not an integer")
    access = flags & _ACCMODE
    write = access != os.O_RDONLY or bool(flags & _WRITE_FLAGS)
    read = access != os.O_WRONLY
    paths = guard.paths
    remember: tuple[str, int, float, int] | None = None
    if type(path) is str and path.startswith("/") and "\0" not in path:
        real, until, generation = paths.real_until(path)  # the common case, without the general conversions
        if guard.observer is None:
            # allowed: remembered by the path as given and the flags while the resolution holds
            remember = (path, flags, until, generation)
    else:
        real = paths.resolve(paths.absolute(as_text(path)), follow=True)
    if real == _NULL_DEVICE or (polc_inner and guard.in_policy_dir(real)):
        return
    if read:
        guard.fs(found, "fs.read", real, remember)
    if write:
        guard.fs(found, "fs.write", real, remember)


def _listing(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    path = args[0]
    if module_name(f) in _IMPORT_SYSTEM:
        return  # the path finder listing a directory of sys.path
    _fs(guard, f, tid, "fs.read", "." if path is None else path, None, True)


def _writes(position: int, dir_fd: int | None, follow: bool, changes: bool = False) -> Handler:
    """A handler for an operation on one path; ``changes``: it can change how paths resolve."""

    def handler(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
        if changes:
            guard.paths_changed()
        if _import_write(f, args[position]):
            return  # an import writing bytecode into __pycache__
        fd = args[dir_fd] if dir_fd is not None and len(args) > dir_fd else None
        if type(fd) is int and fd < 0:
            fd = None  # no dir_fd given (the event carries AT_FDCWD's stand-in)
        _fs(guard, f, tid, "fs.write", args[position], fd, follow)

    return handler


def _rename(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    src, dst, src_fd, dst_fd = args
    guard.paths_changed()
    if _import_write(f, dst):
        return
    _fs_two(guard, f, tid, (("fs.write", src, src_fd, False), ("fs.write", dst, dst_fd, False)))


def _link(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    src, dst, src_fd, dst_fd = args
    # a hard link to a symlink (follow_symlinks=False) is a new symlink: a relative one points
    # elsewhere from its new name, as a symlink made with os.symlink does
    guard.paths_changed()
    # a hard link gives the file a second name: reading the source is needed, writing where the link goes
    _fs_two(guard, f, tid, (("fs.read", src, src_fd, True), ("fs.write", dst, dst_fd, False)))


def _symlink(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    _src, dst, dir_fd = args
    guard.paths_changed()
    if type(dir_fd) is int and dir_fd < 0:
        dir_fd = None
    _fs(guard, f, tid, "fs.write", dst, dir_fd, False)


def _chdir(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    guard.paths.chdir()  # the working directory is read again when next needed
    guard.paths_changed()  # and /proc/self/cwd (an absolute path) now leads elsewhere


# -- the network -----------------------------------------------------------------

_IP_CACHE: dict[str, bool] = {}


def _is_ip(host: str) -> bool:
    hit = _IP_CACHE.get(host)
    if hit is None:
        try:
            ipaddress.ip_address(host.partition("%")[0].strip("[]"))
            hit = True
        except ValueError:
            hit = False
        if len(_IP_CACHE) >= 4096:
            _IP_CACHE.clear()
        _IP_CACHE[host] = hit
    return hit


def _host_text(host: object) -> str:
    if type(host) is str:
        return str.__str__(host).lower().rstrip(".")
    if type(host) is bytes:
        try:
            return bytes.decode(host, "ascii").lower().rstrip(".")
        except UnicodeDecodeError:
            raise Undecidable("a host name that is not ASCII") from None
    raise Undecidable(f"a host of type {type(host).__name__}")


def _port_number(port: object) -> int:
    """A lookup's port as a number; a lookup without a port is checked as port 0."""
    if port is None:
        return 0
    if type(port) is int:
        return int.__index__(port)
    if type(port) in (str, bytes):
        text = port.decode("ascii", "replace") if type(port) is bytes else str.__str__(port)
        if text.isdigit():
            return int(text)
        try:
            return _socket.getservbyname(text, "tcp")
        except OSError:
            raise Undecidable(f"unknown service {text[:40]!r}") from None
    raise Undecidable(f"a port of type {type(port).__name__}")


def _lookup(guard: Guard, host: object, port: object, f: FrameType, tid: int) -> None:
    if host is None or host in ("", b""):
        return  # the local host's wildcard: a listening socket's lookup
    found, _ = guard.attribute(f, tid)
    if not found:
        return
    name = _host_text(host)
    if _is_ip(name):
        return  # no name is resolved; the connect is checked
    guard.decide(found, _NET_OUT, (name, _port_number(port)))
    guard.pending_lookups[tid] = (host, name, tuple(found))


def _getaddrinfo(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    _lookup(guard, args[0], args[1], f, tid)


def _gethostbyname(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    _lookup(guard, args[0], None, f, tid)


def _connect_decision(
    guard: Guard, snap: Snapshot, module: str, host: str, port: int
) -> tuple[Decision, tuple[object, ...]]:
    d = snap.check(module, _NET_OUT, host, port)
    if d.effect == "allow":
        return d, (host, port)
    if d.rule is not None or not _is_ip(host):
        return d, (host, port)
    for name in guard.names_for(module, host):
        dn = snap.check(module, _NET_OUT, name, port)
        if dn.effect == "allow":
            return dn, (name, port)
    reason = f"no entitlement: no name entitled to it resolved to {host} here"
    return Decision(d.allowed, "deny", reason, None, module, d.revision, d.audit), (host, port)


def _address(guard: Guard, sock: object, address: object, f: FrameType, tid: int, listen: bool) -> None:
    try:
        family = _family_of(sock)
    except TypeError:
        return  # not a socket object: the operation fails by itself
    if family in _INET:
        found, _ = guard.attribute(f, tid)
        if not found:
            return
        if type(address) is not tuple or len(address) < 2:
            raise Undecidable("a malformed socket address")
        host, port = address[0], address[1]
        if type(port) is not int:
            raise Undecidable("a socket address whose port is not an integer")
        if listen:
            guard.decide(found, "network.listen", (int.__index__(port),))
            return
        number = int.__index__(port)
        quiet = guard.observer is None
        memo_get = guard.memo.get
        plain = type(host) is str  # the address as given keys what this snapshot allowed before
        name: str | None = None
        snap = guard.snapshot()  # what is decided below is remembered as this snapshot's only
        for module, (package, where) in found.items():
            if quiet and plain:
                hit = memo_get((_NET_OUT, module, package, host, number))
                if hit is not None:  # the common case: counted (the C hook answers it by itself)
                    next(hit[0])
                    continue
            if name is None:
                name = _host_text(host)
            d, shown = _connect_decision(guard, snap, module, name, number)
            if quiet and d.effect == "allow":
                if plain and not d.audit and shown[0] == name:  # the snapshot alone allowed it
                    guard.remember(snap, _NET_OUT, module, package, host, number, _FOREVER)
                guard.counters.add(package, _NET_OUT, ALLOWED)
                continue
            guard.apply(module, package, where, _NET_OUT, (name, number), d, shown)
    elif family == _UNIX and type(address) in (str, bytes):
        text = as_text(address)
        if not text or text.startswith("\0"):
            return  # the abstract namespace has no file (docs/guard.md, "Limits")
        _fs(guard, f, tid, "fs.write", text, None, not listen)


def _connect(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    _address(guard, args[0], args[1], f, tid, False)


def _sendto(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    if args[1] is not None:
        _address(guard, args[0], args[1], f, tid, False)


def _bind(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    _address(guard, args[0], args[1], f, tid, True)


# -- processes ---------------------------------------------------------------------


def _search_path(env: object) -> str:
    """The PATH an exec of a bare name searches: the new environment's, else this process's."""
    if env is not None:
        if type(env) is not dict:
            raise Undecidable(f"an environment of type {type(env).__name__}")
        for key in ("PATH", b"PATH"):
            value = _dict_get(env, key)
            if value is not None:
                if type(value) not in (str, bytes):
                    raise Undecidable("a PATH that is not a string")
                return os.fsdecode(value)
        return os.defpath
    environ = os.environ
    data = getattr(environ, "_data", None) if isinstance(environ, os._Environ) else None
    if type(data) is dict:  # os.environ's own bytes, without its (guarded) item read
        raw = data.get(b"PATH")
        if type(raw) is bytes:
            return os.fsdecode(raw)
    value = environ.get("PATH")  # what os.get_exec_path() reads, without its warnings filter
    return value if value is not None else os.defpath


_FOUND: dict[tuple[str, str], tuple[str, float]] = {}  # (name, PATH) -> (what a lookup found, reusable until)


def executable_of(
    program: object, cwd: object = None, env: object = None, *, search: bool = True, path: str | None = None
) -> str:
    """The program an exec runs, as an absolute path when it can be found (a bare name otherwise).

    ``path``: the PATH a bare name is looked up on, when the caller read it already (default:
    :func:`_search_path` of ``env``). A lookup on PATH is reused for ``patterns.RESOLVE_TTL``
    seconds at most, as the runtime's own command lookups are (a PATH with relative entries: never).
    """
    text = as_text(program)
    if not text:
        raise Undecidable("an empty program name")
    if "/" in text:
        if text.startswith("/"):
            return text
        base = as_text(cwd) if cwd is not None else os.getcwd()
        return posixpath.join(base, text)
    if not search:
        return text
    if path is None:
        path = _search_path(env)
    key = (text, path)
    now = time.monotonic()
    hit = _FOUND.get(key)
    if hit is not None and hit[1] > now:
        return hit[0]
    found = text
    directories = path.split(os.pathsep)
    for directory in directories:
        candidate = posixpath.join(directory or ".", text)
        try:
            st = os.stat(candidate)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            found = os.path.abspath(candidate)
            break
    if all(d.startswith("/") for d in directories):
        if len(_FOUND) >= 4096:
            _FOUND.clear()
        _FOUND[key] = (found, now + RESOLVE_TTL)
    return found


def _exec(guard: Guard, f: FrameType, tid: int, program: str) -> None:
    found, _ = guard.attribute(f, tid)
    if found:
        guard.decide(found, "process.exec", (program,))


def _environ_path() -> tuple[bool, bytes | None]:
    """os.environ's own PATH bytes (None: unset), as :func:`_search_path` reads them and the C
    hook keys a remembered exec by; ``(False, None)`` when os.environ is not the usual mapping."""
    environ = os.environ
    data = getattr(environ, "_data", None) if isinstance(environ, os._Environ) else None
    if type(data) is not dict:
        return False, None
    raw = data.get(b"PATH")
    if raw is not None and type(raw) is not bytes:
        return False, None
    return True, raw


def _lookup_until(program: str, now: float, path: str) -> float | None:
    """Until when the program ``executable_of(program, path=path)`` just gave holds (None: not
    to be remembered): an absolute path, RESOLVE_TTL; a bare name, its lookup's own expiry on
    ``path``; a relative path depends on the working directory and is never remembered."""
    if program.startswith("/"):
        return now + RESOLVE_TTL
    if "/" in program:
        return None
    hit = _FOUND.get((program, path))
    return hit[1] if hit is not None else None


def _popen(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    executable, argv, cwd, env = args
    if executable is None:
        executable = argv[0] if type(argv) in (list, tuple) and argv else argv
    found, _ = guard.attribute(f, tid)
    if not found:
        return
    # a program named as a plain str, this process's working directory and environment, no
    # observer: an allow is remembered (keyed by os.environ's PATH as it is), and a repeat
    # counted without being decided again (the C hook does that by itself)
    quiet = guard.observer is None and cwd is None and env is None and type(executable) is str
    keyed, raw = _environ_path() if quiet else (False, None)
    now = time.monotonic()
    if keyed:
        memo_get = guard.memo.get
        hits = []
        for module, (package, _where) in found.items():
            hit = memo_get((_EXEC, module, package, executable, raw))
            if hit is None or not hit[1] > now:
                break
            hits.append(hit[0])
        else:
            for counter in hits:
                next(counter)
            return
    if keyed:
        # looked up on the very PATH the allow is keyed by (os.environ may change meanwhile: the
        # package's other threads), as os.get_exec_path() reads it (unset: os.defpath)
        path = os.fsdecode(raw) if raw is not None else os.defpath
        program = executable_of(executable, cwd, env, path=path)
        until = _lookup_until(executable, now, path)
    else:
        program = executable_of(executable, cwd, env)
        until = None
    snap = guard.snapshot()
    for module, (package, where) in found.items():
        d = snap.check(module, _EXEC, program)
        if until is not None and d.effect == "allow" and not d.audit:
            guard.remember(snap, _EXEC, module, package, executable, raw, until)
            guard.counters.add(package, _EXEC, ALLOWED)
            continue
        guard.apply(module, package, where, _EXEC, (program,), d)


def _system(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    _exec(guard, f, tid, "/bin/sh")  # os.system runs its command line with the shell


def _os_exec(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    # os.execvp tries each PATH directory with execv: each try is an event with a full path
    found, _ = guard.attribute(f, tid)
    if found:
        guard.decide(found, "process.exec", (executable_of(args[0], search=False),))


def _posix_spawn(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    found, _ = guard.attribute(f, tid)
    if found:
        guard.decide(found, "process.exec", (executable_of(args[0]),))


def _pty_spawn(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    argv = args[0]
    program = argv if type(argv) in (str, bytes) else (argv[0] if type(argv) in (list, tuple) and argv else None)
    if program is None:
        raise Undecidable("pty.spawn without a program")
    _exec(guard, f, tid, executable_of(program))


# -- native code and self-protection ---------------------------------------------------


def _importing_ctypes(f: FrameType | None) -> bool:
    """Is this ``import ctypes`` itself (its module body opens the program: ``pythonapi``)?"""
    while f is not None and module_name(f) == "ctypes":
        if f.f_code.co_name == "<module>":  # audited attribute: ignored inside the hook
            return True
        f = f.f_back
    return False


def _library(guard: Guard, name: object) -> str:
    """The library a load or a symbol lookup reaches: a resolved path, a bare name as given,
    or, for ``dlopen(NULL)`` (``CDLL(None)``, ``ctypes.pythonapi``), the program itself."""
    if name is None:
        return os.path.realpath(sys.executable)
    text = as_text(name)
    return guard.paths.resolve(guard.paths.absolute(text)) if "/" in text else text


def _dlopen(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    name = args[0]
    if name is None and _importing_ctypes(f):
        return  # import ctypes; using ctypes.pythonapi is checked at its symbol lookups
    found, _ = guard.attribute(f, tid)
    if found:
        guard.decide(found, "native.load", (_library(guard, name),))


def _dlsym(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
    # the first lookup of each symbol of a library object: the library must be loadable here
    found, _ = guard.attribute(f, tid)
    if not found:
        return
    try:
        name = object.__getattribute__(args[0], "__dict__").get("_name")
    except Exception:
        raise Undecidable("a symbol lookup on an unknown kind of library") from None
    guard.decide(found, "native.load", (_library(guard, name),))


_SELF = "a governed package may not add audit hooks, tracers or profilers (the guard's self-protection)"


def _self_protection(capability: str) -> Handler:
    def handler(guard: Guard, args: tuple[Any, ...], f: FrameType, tid: int) -> None:
        found, _ = guard.attribute(f, tid)
        if found:
            guard.deny_always(found, capability, (), _SELF)

    return handler


def deny_self(guard: Guard, found: Found, capability: str) -> None:
    guard.deny_always(found, capability, (), _SELF)


HANDLERS: dict[str, Handler] = {
    "open": _open,
    "os.listdir": _listing,
    "os.scandir": _listing,
    "os.remove": _writes(0, 1, False, True),
    "os.rmdir": _writes(0, 1, False, True),
    "os.mkdir": _writes(0, 2, False),
    "os.truncate": _writes(0, None, True),
    "os.chmod": _writes(0, 2, True, True),
    "os.chown": _writes(0, 3, True, True),
    "os.utime": _writes(0, 3, True),
    "os.chflags": _writes(0, None, True, True),
    "os.lchflags": _writes(0, None, False, True),
    "os.setxattr": _writes(0, None, True, True),
    "os.removexattr": _writes(0, None, True, True),
    "os.rename": _rename,
    "os.link": _link,
    "os.symlink": _symlink,
    "os.chdir": _chdir,
    "socket.getaddrinfo": _getaddrinfo,
    "socket.gethostbyname": _gethostbyname,
    "socket.connect": _connect,
    "socket.sendto": _sendto,
    "socket.sendmsg": _sendto,
    "socket.bind": _bind,
    "subprocess.Popen": _popen,
    "os.system": _system,
    "os.exec": _os_exec,
    "os.posix_spawn": _posix_spawn,
    "pty.spawn": _pty_spawn,
    "ctypes.dlopen": _dlopen,
    "ctypes.dlsym": _dlsym,
    "sys.addaudithook": _self_protection("sys.addaudithook"),
    "sys.settrace": _self_protection("sys.settrace"),
    "sys.setprofile": _self_protection("sys.setprofile"),
}

# Events whose allowed requests the guard remembers per snapshot (Guard.remember) and the C hook
# answers by itself when repeated: 1, an address (the socket's family, the host as given and the
# port); 2, subprocess.Popen (the program as given, os.environ's PATH; no cwd or env of its own);
# 3, open (an absolute path as given, the flags; while its resolution holds, and never after a
# rename, removal or link in this process).
MEMO_EVENTS = {"socket.connect": 1, "socket.sendto": 1, "subprocess.Popen": 2, "open": 3}
# The callers of an open that may be the interpreter's own (the C hook leaves those to _open).
OPEN_EXEMPT = frozenset(_IMPORT_SYSTEM | {"tokenize"})

# Events whose handler has work to do whoever raised them (the paths it resolves may change,
# the working directory is read again): the C hook passes them on without looking at the stack.
# A change of mode, owner, ACL (an xattr) or flags can make a directory searchable, and a symlink
# in it seen where the path resolved as a plain name before.
ALWAYS = frozenset({"os.remove", "os.rmdir", "os.rename", "os.symlink", "os.link", "os.chdir", "os.chmod",
                    "os.chown", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr"})
