"""Serving the decision API: uvicorn with the connection guard, signals, and the agent's lifecycle.

uvicorn is imported inside :func:`serve` only (:func:`require_server_extra`
says what to install when it is missing), so the application and the wire
layer import, and can be mounted in another ASGI server, without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Generator
from typing import Any

from .app import DecisionApp
from .guard import Limits, guarded_protocol

log = logging.getLogger("polc.server")


def _raise_fd_limit(max_connections: int) -> None:
    """Make room for ``max_connections`` sockets (and as many being refused) in the fd limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    want = 2 * max_connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft < max_connections + 64:
        log.warning(
            "open-file limit %d is too low for --max-connections %d; connections beyond it wait in the backlog",
            soft,
            max_connections,
        )


def require_server_extra() -> None:
    """Raise ``ServerExtraMissing`` unless uvicorn and httptools import."""
    for name in ("uvicorn", "httptools"):
        try:
            __import__(name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or name
            raise ServerExtraMissing(
                f"polc run needs the 'server' extra ({missing} cannot be imported: {exc}); "
                "install it with: pip install 'polc[server]'"
            ) from None


class ServerExtraMissing(RuntimeError):
    """uvicorn or httptools (the ``server`` extra) cannot be imported; the message says what to install."""


def serve(
    app: DecisionApp,
    sock: socket.socket,
    *,
    start_agent: Callable[[], Any],
    stop_agent: Callable[[], Any],
    on_ready: Callable[[], None],
    on_start_error: Callable[[BaseException], int],
    limits: Limits | None = None,
) -> int:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT; returns the exit status.

    The socket is listening before the policies load, so ``/healthz`` answers
    503 while a large directory loads. ``start_agent`` runs in a worker thread;
    if it raises, ``on_start_error`` reports it and its return value becomes the
    exit status. SIGHUP reloads now. Our own handlers replace uvicorn's (which
    would re-raise SIGTERM after shutdown and end the process with -15).
    """
    import uvicorn

    limits = limits or Limits()
    _raise_fd_limit(limits.max_connections)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield  # the signal handlers of main() below, not uvicorn's

    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        http=guarded_protocol(limits, app.metrics),
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=1,
        timeout_keep_alive=5,
    )
    server = _Server(config)
    exit_status = 0

    async def main() -> None:
        nonlocal exit_status
        loop = asyncio.get_running_loop()

        def on_stop(signum: int) -> None:
            if server.should_exit:
                server.force_exit = True
                return
            log.info("%s received, stopping", signal.Signals(signum).name)
            server.should_exit = True

        def on_hup() -> None:
            if not app.agent.ready:
                log.warning("SIGHUP received while policies are still loading; ignored")
                return
            log.info("SIGHUP received, reloading %s", app.agent.status().get("policy_dir"))
            task = loop.create_task(_reload_quietly())
            _background.add(task)
            task.add_done_callback(_background.discard)

        async def _reload_quietly() -> None:
            try:
                result = await app.reload()
            except Exception as exc:  # reported, never fatal
                log.error("reload failed: %s", exc)
                return
            if not (result.changed or result.removed or result.failed):
                log.info("reload: nothing changed")

        _background: set[asyncio.Task[None]] = set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hup)

        serving = loop.create_task(server.serve(sockets=[sock]))

        async def load() -> None:
            nonlocal exit_status
            try:
                await asyncio.to_thread(start_agent)
            except Exception as exc:
                exit_status = on_start_error(exc)
                server.should_exit = True
                return
            if not server.should_exit:
                on_ready()

        loading = loop.create_task(load())
        try:
            await serving
        finally:
            await loading
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for task in list(_background):
                await asyncio.wait([task], timeout=2)
        await asyncio.to_thread(stop_agent)

    asyncio.run(main())
    return exit_status
