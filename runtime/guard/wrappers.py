"""Python-level entry points the guard wraps, where CPython 3.11 raises no audit event or the
guard needs more than the event carries.

* ``_thread.start_new_thread`` (and ``threading``'s own reference to it, which
  ``Thread.start`` calls): ``threads.create()`` (3.11 raises no event for a new
  thread), and the hand-off of attribution to the new thread;
* ``os.open`` with a ``dir_fd``: its ``open`` event carries no ``dir_fd``, so a
  governed caller's relative path is made absolute before the call;
* ``os.environ`` / ``os.environb`` item reads: ``env.read(name)`` (no event);
* ``threading.settrace`` / ``threading.setprofile``: self-protection (they
  only store a function that new threads install);
* ``signal.signal`` / ``signal.getsignal``: a handler runs attributed to the
  code that set it, not to the code the signal interrupted;
* ``logging.Handler.__init__`` / ``handle``: a handler's own I/O is attributed
  to the code that created it, not to whoever logged the record;
* ``socket.getaddrinfo``, ``socket.gethostbyname``, ``socket.gethostbyname_ex``:
  the event is checked in the hook; the wrapper records the addresses an
  entitled name resolved to (the event cannot see the answer);
* ``os._spawnvef`` (behind every ``os.spawn*``): ``process.exec`` before the
  fork (the event of the exec would come from the child);
* ``asyncio``'s ``BaseEventLoop.create_task``: the task inherits the governed
  packages of the code that created it; ``call_soon``, ``call_soon_threadsafe``,
  ``call_later``, ``call_at`` called from outside asyncio: the callback does;
* ``concurrent.futures.ThreadPoolExecutor.__init__`` and ``submit``: a work
  item inherits the packages of the code that submitted it and, for an
  executor created directly by a governed package, of that package.

The asyncio and executor wrappers are put in place when those modules are
first imported (a finder at the front of ``sys.meta_path``), so a program
that never uses them does not import them. Code that bound an entry point
before the guard was installed (``from _thread import start_new_thread``)
keeps the unwrapped one.
"""

from __future__ import annotations

import _thread
import contextlib
import contextvars
import os
import socket
import sys
import threading
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import FrameType, ModuleType
from typing import Any

from .attribution import INHERITED, Inherited
from .core import Guard
from .events import deny_self, executable_of, module_name
from .paths import Undecidable, as_text

__all__ = ["install_wrappers"]

_getframe = sys._getframe
_get_ident = _thread.get_ident

# env.read requests the standard library makes for itself: the innermost caller
# module (past os and the mapping code) -> the names it may read unchecked.
ENV_EXEMPT: dict[str, frozenset[str] | None] = {
    "urllib.request": None,  # proxy discovery reads every variable and returns only *_proxy ones
    "asyncio.coroutines": frozenset({"PYTHONASYNCIODEBUG"}),
    "ssl": frozenset({"SSL_CERT_FILE", "SSL_CERT_DIR"}),
    "tempfile": frozenset({"TMPDIR", "TEMP", "TMP"}),
    "subprocess": frozenset({"PATH"}),
    "shutil": frozenset({"PATH", "COLUMNS", "LINES"}),
    "ctypes.util": frozenset({"LD_LIBRARY_PATH"}),
    "locale": frozenset({"LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LANG"}),
    "gettext": frozenset({"LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"}),
}
# an exemption of these modules holds only in the functions named (the frame's code's co_name):
# urllib.request's other code calls what it is handed (OpenerDirector._call_chain calls any
# handler's method), and os.environ.__getitem__ handed to it would read any variable as its own
ENV_EXEMPT_IN: dict[str, frozenset[str]] = {
    "urllib.request": frozenset({"getproxies_environment"}),
}
_PASS_THROUGH = frozenset({"os", "_collections_abc", "collections.abc"})
_exempt_get = ENV_EXEMPT.get
_exempt_in_get = ENV_EXEMPT_IN.get
_dict_get = dict.get
# the interpreter's table of modules, as the C hook reads it (PyImport_GetModuleDict): a package
# rebinding sys.modules to a dict of its own does not make its module "the" urllib.request
_modules = sys.modules


def merge(a: Inherited | None, b: Inherited | None) -> Inherited | None:
    if not a:
        return b or None
    if not b:
        return a
    have = {owner[0] for owner, _ in a}
    return a + tuple(item for item in b if item[0][0] not in have)


def _carrying(inherited: Inherited, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run with ``inherited`` added to the attribution of whatever it does."""

    def polc_handoff(*args: Any, **kwargs: Any) -> Any:
        token = INHERITED.set(merge(INHERITED.get(), inherited))
        try:
            return fn(*args, **kwargs)
        finally:
            INHERITED.reset(token)

    return polc_handoff


class _Capture:
    """What a wrapper's check found, handed out of :meth:`Guard.run_guarded`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Inherited | None = None


def install_wrappers(guard: Guard) -> None:
    _threads(guard)
    _open_at(guard)
    _signals(guard)
    _logging(guard)
    _environment(guard)
    _resolver(guard)
    _spawn(guard)
    patches: dict[str, Callable[[ModuleType], None]] = {
        "asyncio.base_events": lambda m: _asyncio(guard, m),
        "concurrent.futures.thread": lambda m: _executors(guard, m),
    }
    for name in list(patches):
        module = sys.modules.get(name)
        if module is not None:
            patches.pop(name)(module)
    if patches:
        sys.meta_path.insert(0, _PatchOnImport(patches))


# -- threads ---------------------------------------------------------------------


def _threads(guard: Guard) -> None:
    orig_new = _thread.start_new_thread
    orig_settrace = threading.settrace
    orig_setprofile = threading.setprofile
    busy = guard.busy

    def check(f: FrameType, capture: _Capture, tid: int) -> None:
        found, _ = guard.attribute(f, tid)
        if not found:
            return
        guard.decide(found, "threads.create", ())
        if tid not in guard.no_inherit:
            capture.value = tuple(((m, p), guard.site(p, where)) for m, (p, where) in found.items())

    def start_new_thread(function: Callable[..., Any], args: tuple[Any, ...], kwargs: Any = None) -> int:
        """threads.create(), and the new thread carries the packages that started it (through
        Thread.start, whose frames and callers are the stack looked at, or directly)."""
        capture = _Capture()
        if not busy(_get_ident()):
            guard.run_guarded(check, _getframe(1), capture)
        target = _carrying(capture.value, function) if capture.value else function
        return orig_new(target, args) if kwargs is None else orig_new(target, args, kwargs)

    def protect(capability: str, f: FrameType, tid: int) -> None:
        found, _ = guard.attribute(f, tid)
        if found:
            deny_self(guard, found, capability)

    def settrace(func: Any) -> None:
        guard.run_guarded(protect, "threading.settrace", _getframe(1))
        orig_settrace(func)

    def setprofile(func: Any) -> None:
        guard.run_guarded(protect, "threading.setprofile", _getframe(1))
        orig_setprofile(func)

    _thread.start_new_thread = start_new_thread
    threading._start_new_thread = start_new_thread  # type: ignore[attr-defined]  # what Thread.start calls
    threading.settrace = settrace
    threading.setprofile = setprofile


def _open_at(guard: Guard) -> None:
    """``os.open(path, flags, dir_fd=fd)``: the ``open`` event carries no ``dir_fd``, so for a
    governed caller a relative path is made absolute (through ``/proc/self/fd``) before the
    call, and the event sees where it really goes; if it cannot be, the open is denied."""
    orig = os.open

    def resolve(f: FrameType, path: Any, dir_fd: int, out: list[Any], tid: int) -> None:
        found, _ = guard.attribute(f, tid)
        if not found:
            return
        text = as_text(path)
        if not text.startswith("/"):
            out.append(guard.paths.absolute(text, dir_fd))

    def open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None and not guard.busy(_get_ident()):
            out: list[Any] = []
            guard.run_guarded(resolve, _getframe(1), path, dir_fd, out)
            if out:
                return orig(out[0], flags, mode)
        return orig(path, flags, mode, dir_fd=dir_fd)

    open.__doc__ = orig.__doc__
    os.open = open


def detached(guard: Guard, inherited: Inherited | None, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` attributed to ``inherited`` alone, not to the code below on the stack: walks
    from inside stop at this frame (its callers are deliberately left out), and the inherited
    packages are replaced for the call."""
    tid = _get_ident()
    stops = guard.stops
    saved = stops.get(tid)
    stops[tid] = _getframe()
    token = INHERITED.set(inherited)
    try:
        return fn(*args)
    finally:
        INHERITED.reset(token)
        if saved is None:
            stops.pop(tid, None)
        else:
            stops[tid] = saved


def _logging(guard: Guard) -> None:
    """A logging handler's own I/O (opening a delayed file, rotating, a socket handler's connect)
    is attributed to the code that created the handler, not to whoever logged the record: the
    service's rotating file handler works when a governed library logs, and a handler a governed
    package creates stays that package's."""
    import logging

    handler_class = logging.Handler
    orig_init = handler_class.__init__
    orig_handle = handler_class.handle

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        vars(self)["_polc_creator"] = _capture(guard, _getframe(1))
        orig_init(self, *args, **kwargs)

    def handle(self: Any, record: Any) -> Any:
        if guard.busy(_get_ident()):
            return orig_handle(self, record)
        return detached(guard, vars(self).get("_polc_creator"), orig_handle, self, record)

    handler_class.__init__ = __init__  # type: ignore[method-assign]
    handler_class.handle = handle  # type: ignore[method-assign]


def _signals(guard: Guard) -> None:
    """A Python signal handler runs on top of whatever code the signal interrupted: that code did
    not call it. Handlers set with ``signal.signal`` run with the walk stopped at their own frame
    (walks stop there) and with the packages of the code that *set* the handler."""
    import signal

    orig_signal = signal.signal
    orig_getsignal = signal.getsignal
    originals: dict[int, Any] = {}  # id(wrapper) -> the handler given, for getsignal()
    wrappers: dict[int, Any] = {}  # id(wrapper) -> wrapper (keeps the id unique while registered)

    def wrap(handler: Callable[..., Any], inherited: Inherited | None) -> Callable[..., Any]:
        def polc_signal_handler(signum: int, frame: Any) -> Any:
            return detached(guard, inherited, handler, signum, frame)

        return polc_signal_handler

    def signal_(signalnum: Any, handler: Any) -> Any:
        if callable(handler):
            inherited = _capture(guard, _getframe(1))
            wrapper = wrap(handler, inherited)
            originals[id(wrapper)] = handler
            wrappers[id(wrapper)] = wrapper
            handler = wrapper
        previous = orig_signal(signalnum, handler)
        given = originals.pop(id(previous), None)
        wrappers.pop(id(previous), None)
        return previous if given is None else given

    def getsignal(signalnum: Any) -> Any:
        current = orig_getsignal(signalnum)
        return originals.get(id(current), current)

    signal_.__doc__ = orig_signal.__doc__
    getsignal.__doc__ = orig_getsignal.__doc__
    signal.signal = signal_
    signal.getsignal = getsignal


# -- the environment ------------------------------------------------------------------


def _own_namespace(name: str, globals: object) -> bool:
    """``globals`` is the namespace of the module ``name`` imported: not code a package ran with a
    forged ``__name__`` (``exec(code, {"__name__": "urllib.request"})``)."""
    module = _dict_get(_modules, name)
    return type(module) is ModuleType and module.__dict__ is globals


def _exempt_read(key: object, f: FrameType | None) -> bool:
    """A read ENV_EXEMPT lets through (asked of the first caller outside os and collections.abc):
    decided before the guard's machinery is entered; anything unusual goes the checked way.
    (Every exec through subprocess makes two such reads: the frames are followed inline.)"""
    caller = f
    name: object = None
    while caller is not None:
        name = _dict_get(caller.f_globals, "__name__")
        if type(name) is not str or name not in _PASS_THROUGH:
            break
        caller = caller.f_back
    if caller is None or type(name) is not str:
        return False
    exempt = _exempt_get(name, ())
    if exempt != () and not _own_namespace(name, caller.f_globals):
        return False
    within = _exempt_in_get(name)
    if within is not None and caller.f_code.co_name not in within:
        return False
    if exempt is None:
        return True
    if not exempt:
        return False
    if type(key) is bytes:  # os.environb's keys (os.get_exec_path tries b"PATH" on os.environ too)
        key = os.fsdecode(key)
    elif type(key) is not str:
        return False
    return key in exempt


def _environment(guard: Guard) -> None:
    busy = guard._busy

    def check(key: object, f: FrameType | None, tid: int) -> None:
        caller = f
        while caller is not None and module_name(caller) in _PASS_THROUGH:
            caller = caller.f_back
        if caller is not None:
            module = module_name(caller)
            exempt = ENV_EXEMPT.get(module, ()) if module is not None else ()
            if exempt != () and not _own_namespace(module, caller.f_globals):  # type: ignore[arg-type]
                exempt = ()
            within = ENV_EXEMPT_IN.get(module) if module is not None else None
            if within is not None and caller.f_code.co_name not in within:
                exempt = ()
            name = key if type(key) is str else (os.fsdecode(key) if type(key) is bytes else None)
            if exempt is None or (name is not None and name in exempt):
                return
        found, _ = guard.attribute(f, tid)
        if not found:
            return
        if type(key) is str:
            name = str.__str__(key)
        elif type(key) is bytes:
            name = os.fsdecode(key)
        elif isinstance(key, (str, bytes)):
            # a subclass: the mapping reads what its encode() (or bytes' own methods) make of it,
            # which need not be the text the check would see
            raise Undecidable(f"a variable name of type {type(key).__name__}")
        else:
            return  # not a variable name: the mapping raises TypeError itself
        guard.decide(found, "env.read", (name,))

    base = type(os.environ)

    class GuardedEnviron(base):  # type: ignore[valid-type, misc]  # os._Environ, not a public type
        """os.environ whose item reads are ``env.read`` requests."""

        def __getitem__(self, key: Any) -> Any:
            if _get_ident() not in busy:
                f = _getframe(1)
                if not _exempt_read(key, f):
                    guard.run_guarded(check, key, f)
            return base.__getitem__(self, key)

        def __repr__(self) -> str:
            # the base class formats its _data: every value, none of them read through the check
            parts = []
            for key in list(self):
                try:
                    value = self[key]
                except KeyError:  # unset meanwhile (by another thread)
                    continue
                parts.append(f"{key!r}: {value!r}")
            return "environ({" + ", ".join(parts) + "})"

    accel = guard.accel
    make = getattr(accel, "environ_method", None)
    if make is not None:
        # with the C hook, the exemptions and the "nothing governed on the stack" answer are read in
        # C (runtime/guard/_hook.c, environ_method); what needs deciding comes here first
        def checked(self: Any, key: Any) -> Any:
            guard.run_guarded(check, key, _getframe(1))
            return base.__getitem__(self, key)

        method = make(GuardedEnviron, base.__getitem__, checked, _PASS_THROUGH, ENV_EXEMPT, ENV_EXEMPT_IN)
        GuardedEnviron.__getitem__ = method  # type: ignore[method-assign]
    GuardedEnviron.__name__ = base.__name__
    GuardedEnviron.__qualname__ = base.__qualname__
    os.environ.__class__ = GuardedEnviron
    environb = getattr(os, "environb", None)
    if environb is not None and type(environb) is base:
        environb.__class__ = GuardedEnviron


# -- name resolution ------------------------------------------------------------------


def _resolver(guard: Guard) -> None:
    orig_getaddrinfo = socket.getaddrinfo
    orig_byname = socket.gethostbyname
    orig_byname_ex = socket.gethostbyname_ex
    pending = guard.pending_lookups

    def remember(host: object, addresses: list[str]) -> None:
        entry = pending.pop(_get_ident(), None)
        if entry is not None and entry[0] is host:
            guard.remember_addresses(entry[2], entry[1], addresses)

    def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
        result = orig_getaddrinfo(host, port, family, type, proto, flags)
        remember(host, [ai[4][0] for ai in result if ai[4] and isinstance(ai[4][0], str)])
        return result

    def gethostbyname(hostname: Any) -> str:
        result = orig_byname(hostname)
        remember(hostname, [result])
        return result

    def gethostbyname_ex(hostname: Any) -> tuple[str, list[str], list[str]]:
        result = orig_byname_ex(hostname)
        remember(hostname, list(result[2]))
        return result

    getaddrinfo.__doc__ = orig_getaddrinfo.__doc__
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.gethostbyname_ex = gethostbyname_ex


# -- os.spawn* ---------------------------------------------------------------------------


def _spawn(guard: Guard) -> None:
    orig = getattr(os, "_spawnvef", None)
    if orig is None:
        return

    def check(f: FrameType, file: object, env: object, func: object, tid: int) -> None:
        found, _ = guard.attribute(f, tid)
        if not found:
            return
        search = func in (os.execvp, os.execvpe)
        program = executable_of(file, None, env if func is os.execvpe else None, search=search)
        guard.decide(found, "process.exec", (program,))

    def _spawnvef(mode: int, file: Any, args: Any, env: Any, func: Any) -> int:
        guard.run_guarded(check, _getframe(1), file, env, func)
        return orig(mode, file, args, env, func)  # type: ignore[no-any-return]

    os._spawnvef = _spawnvef  # type: ignore[attr-defined]


# -- asyncio and executors ----------------------------------------------------------------


def _capture(guard: Guard, f: FrameType) -> Inherited | None:
    capture = _Capture()

    def run(f: FrameType, tid: int) -> None:
        capture.value = guard.inherit(f, tid)

    if not guard.busy(_get_ident()):
        guard.run_guarded(run, f)
    return capture.value


def _asyncio(guard: Guard, module: ModuleType) -> None:
    loop_class = module.BaseEventLoop
    orig_create_task = loop_class.create_task

    def create_task(self: Any, coro: Any, *, name: Any = None, context: Any = None) -> Any:
        inherited = _capture(guard, _getframe(1))
        if inherited:
            ctx = context.copy() if isinstance(context, contextvars.Context) else contextvars.copy_context()
            ctx.run(lambda: INHERITED.set(merge(INHERITED.get(), inherited)))
            context = ctx
        return orig_create_task(self, coro, name=name, context=context)

    loop_class.create_task = create_task

    def carrying_context(context: Any, f: FrameType) -> Any:
        inherited = _capture(guard, f)
        if not inherited:
            return context
        ctx = context.copy() if isinstance(context, contextvars.Context) else contextvars.copy_context()
        ctx.run(lambda: INHERITED.set(merge(INHERITED.get(), inherited)))
        return ctx

    def scheduling(orig: Callable[..., Any]) -> Callable[..., Any]:
        # a callback scheduled by code outside asyncio runs in a context carrying that code's packages
        def schedule(self: Any, *args: Any, context: Any = None) -> Any:
            f = _getframe(1)
            caller = module_name(f)
            if caller is None or not caller.startswith("asyncio."):
                context = carrying_context(context, f)
            return orig(self, *args, context=context)

        schedule.__name__ = orig.__name__
        schedule.__doc__ = orig.__doc__
        return schedule

    for name in ("call_soon", "call_soon_threadsafe", "call_later", "call_at"):
        setattr(loop_class, name, scheduling(getattr(loop_class, name)))


def _executors(guard: Guard, module: ModuleType) -> None:
    executor_class = module.ThreadPoolExecutor
    orig_init = executor_class.__init__
    orig_submit = executor_class.submit

    def creator(f: FrameType, capture: _Capture, tid: int) -> None:
        # only an executor created directly by governed code carries its creator
        found, _ = guard.attribute(f, tid)
        if not found:
            return
        innermost = next(iter(found.values()))
        if innermost[1] is f:
            capture.value = guard.inherit(f, tid)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        orig_init(self, *args, **kwargs)
        if not guard.busy(_get_ident()):
            capture = _Capture()
            guard.run_guarded(creator, _getframe(1), capture)
            if capture.value:
                vars(self)["_polc_creator"] = capture.value

    def submit(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        tid = _get_ident()
        inherited = merge(_capture(guard, _getframe(1)), vars(self).get("_polc_creator"))
        if inherited:
            fn = _carrying(inherited, fn)
        no_inherit = guard.no_inherit
        added = tid not in no_inherit
        no_inherit.add(tid)  # a worker thread started now belongs to the executor, not to this caller
        try:
            return orig_submit(self, fn, *args, **kwargs)
        finally:
            if added:
                no_inherit.discard(tid)

    executor_class.__init__ = __init__
    executor_class.submit = submit


class _PatchOnImport:
    """A meta-path finder that patches a few modules right after they are first executed."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], None]]) -> None:
        self.patches = patches

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        patch = self.patches.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        self.patches.pop(name, None)
        if not self.patches:  # nothing left to patch: out of every later import's way
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
        orig_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            orig_exec(module)
            patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
