"""What ``GET /metrics`` says: counters of the decision API and the Prometheus text exposition.

Check and HTTP counters are plain integers bumped on the event loop thread
(no lock on the request path); what the agent's reloader thread reports
arrives through :meth:`Metrics.on_event` under a lock. Reload counts and module
states are read from the agent's own status at render time, so ``/metrics``
and ``/v1/status`` never disagree.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from polc import __version__

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

# Why the server closed a connection (label values of polc_http_connections_rejected_total).
REJECT_REASONS = (
    "connection_limit",
    "header_timeout",
    "body_timeout",
    "send_timeout",
    "headers_too_large",
    "bad_request",
)


@dataclass
class Metrics:
    """Counters behind ``GET /metrics``, and what the reload events tell.

    Check and HTTP counters are touched only on the event loop thread;
    ``on_event`` runs on the agent's reloader thread and takes ``lock``.
    Reload counts come from the agent's own status, so ``/metrics`` and
    ``/v1/status`` never disagree.
    """

    checks: dict[str, int] = field(default_factory=lambda: {"allow": 0, "deny": 0})
    audit_would_deny: int = 0
    http: dict[tuple[str, int], int] = field(default_factory=dict)
    # Connections the server closed for a limit (reason -> count), and the
    # number open now; both touched only on the event loop thread.
    rejected: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_success: float | None = None
    removed: set[str] = field(default_factory=set)  # modules whose file is gone (policy kept)
    started: float = field(default_factory=time.time)

    def count_decision(self, decision: Any) -> None:
        effect = decision.effect
        self.checks[effect] = self.checks.get(effect, 0) + 1
        if decision.audit:
            self.audit_would_deny += 1

    def count_http(self, handler: str, status: int) -> None:
        key = (handler, status)
        self.http[key] = self.http.get(key, 0) + 1

    def count_rejected(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def on_event(self, event: Any) -> None:
        with self.lock:
            if event.kind == "removed":
                self.removed.add(event.module)
            else:
                self.removed.discard(event.module)
            if event.kind in ("loaded", "reloaded"):
                self.last_success = time.time()

    def errors(self, status: dict[str, Any]) -> list[dict[str, Any]]:
        """Artifacts in the directory that are not in force now: ``[{"module", "file", "reason"}]``.

        A module whose file was deleted keeps its last policy by design; that is
        reported as ``removed``, not as an error.
        """
        with self.lock:
            removed = set(self.removed)
        out = []
        for name, info in (status.get("modules") or {}).items():
            if info.get("last_error") and name not in removed:
                out.append({"module": name, "file": info.get("file"), "reason": info["last_error"]})
        if status.get("directory_error"):
            out.append({"module": None, "file": status.get("policy_dir"), "reason": status["directory_error"]})
        return out

    def render(self, status: dict[str, Any], ready: bool) -> bytes:
        modules = status.get("modules") or {}
        active = sum(1 for m in modules.values() if m.get("revision"))
        errors = sum(1 for e in self.errors(status) if e["module"] is not None)
        reloads = status.get("reloads") or {}
        with self.lock:
            last = self.last_success
        lines = [
            "# HELP polc_build_info polc version serving decisions.",
            "# TYPE polc_build_info gauge",
            f'polc_build_info{{version="{_label(__version__)}"}} 1',
            "# HELP polc_ready 1 once the first load of the policy directory completed.",
            "# TYPE polc_ready gauge",
            f"polc_ready {1 if ready else 0}",
            "# HELP polc_checks_total Decisions answered over HTTP, by effect (audit-mode denies count as deny).",
            "# TYPE polc_checks_total counter",
        ]
        for effect in sorted(self.checks):
            lines.append(f'polc_checks_total{{effect="{_label(effect)}"}} {self.checks[effect]}')
        lines += [
            "# HELP polc_checks_audit_total"
            " Denies reported but not enforced because the deciding module is in audit mode.",
            "# TYPE polc_checks_audit_total counter",
            f"polc_checks_audit_total {self.audit_would_deny}",
            "# HELP polc_reloads_total Artifact load attempts since start, by outcome (one per artifact version).",
            "# TYPE polc_reloads_total counter",
            f'polc_reloads_total{{status="ok"}} {int(reloads.get("ok", 0))}',
            f'polc_reloads_total{{status="failed"}} {int(reloads.get("failed", 0))}',
            "# HELP polc_last_successful_reload_timestamp_seconds"
            " Unix time an artifact last loaded successfully (0: never).",
            "# TYPE polc_last_successful_reload_timestamp_seconds gauge",
            f"polc_last_successful_reload_timestamp_seconds {_num(last or 0)}",
            "# HELP polc_active_modules Modules with a policy in force.",
            "# TYPE polc_active_modules gauge",
            f"polc_active_modules {active}",
            "# HELP polc_module_errors Modules whose artifact in the directory is not in force"
            " (failed to load; the previous policy, if any, stays).",
            "# TYPE polc_module_errors gauge",
            f"polc_module_errors {errors}",
            "# HELP polc_policy_dir_available"
            " 0 while the policy directory cannot be read (everything loaded stays in force).",
            "# TYPE polc_policy_dir_available gauge",
            f"polc_policy_dir_available {0 if status.get('directory_error') else 1}",
            "# HELP polc_http_requests_total HTTP requests answered, by handler and status code.",
            "# TYPE polc_http_requests_total counter",
        ]
        for (handler, code), n in sorted(self.http.items()):
            lines.append(f'polc_http_requests_total{{handler="{handler}",code="{code}"}} {n}')
        lines += [
            "# HELP polc_http_connections_rejected_total Connections closed by the server for a limit, by reason.",
            "# TYPE polc_http_connections_rejected_total counter",
        ]
        for reason in REJECT_REASONS:
            lines.append(f'polc_http_connections_rejected_total{{reason="{reason}"}} {self.rejected.get(reason, 0)}')
        lines += [
            "# HELP polc_http_connections Connections open now (polc run only).",
            "# TYPE polc_http_connections gauge",
            f"polc_http_connections {self.connections}",
            "# HELP polc_start_time_seconds Unix time the process started serving.",
            "# TYPE polc_start_time_seconds gauge",
            f"polc_start_time_seconds {_num(self.started)}",
        ]
        source = status.get("source")
        if isinstance(source, dict):
            lines += _source_lines(source)
        return ("\n".join(lines) + "\n").encode()


def _source_lines(source: dict[str, Any]) -> list[str]:
    """The pull of a published set (``polc run --source``): what is in force, how the pulls go."""
    reason = source.get("last_error_reason")
    pulls = source.get("pulls") or {}
    lines = [
        "# HELP polc_source_info The published set pulled (label url); 1 while the last pull succeeded.",
        "# TYPE polc_source_info gauge",
        f'polc_source_info{{url="{_label(str(source.get("url")))}"}} {0 if reason else 1}',
        "# HELP polc_source_revision Revision of the published set in force (0: none).",
        "# TYPE polc_source_revision gauge",
        f"polc_source_revision {int(source.get('revision') or 0)}",
        "# HELP polc_source_last_success_timestamp_seconds Unix time a pull last succeeded (0: never).",
        "# TYPE polc_source_last_success_timestamp_seconds gauge",
        f"polc_source_last_success_timestamp_seconds {_num(source.get('last_success') or 0)}",
        "# HELP polc_source_consecutive_failures Pulls failed in a row (the set in force stays).",
        "# TYPE polc_source_consecutive_failures gauge",
        f"polc_source_consecutive_failures {int(source.get('consecutive_failures') or 0)}",
        "# HELP polc_source_pulls_total Pulls since start, by outcome.",
        "# TYPE polc_source_pulls_total counter",
    ]
    for outcome in ("switched", "unchanged", "failed"):
        lines.append(f'polc_source_pulls_total{{outcome="{outcome}"}} {int(pulls.get(outcome, 0))}')
    lines += [
        "# HELP polc_source_last_error 1 with the reason of the last pull while it failed.",
        "# TYPE polc_source_last_error gauge",
    ]
    if reason:
        lines.append(f'polc_source_last_error{{reason="{_label(str(reason))}"}} 1')
    return lines


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(float(value))
