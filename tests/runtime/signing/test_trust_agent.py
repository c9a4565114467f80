"""Signing in a running agent: trusted signatures gate every load, and in every
rejected case the previous policy keeps deciding while the poller runs.

Artifacts come from the real compiler and are signed with runtime/signing/;
each test runs a PolicyAgent with a 0.05 s poller and waits on deadlines for
the poller's own reload events, never on bare sleeps.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from polc.compiler.memory import compile_source
from polc.runtime.agent import PolicyAgent, PolicyLoadError
from polc.runtime.format.writer import write_atomic
from polc.runtime.signing import (
    SigningKey,
    SigningUnavailableError,
    TrustConfig,
    sign_artifact,
)

INTERVAL = 0.05
DEADLINE = 10.0

PLATFORM = SigningKey.from_seed(b"\x11" * 32, "platform")
PLATFORM_NEW = SigningKey.from_seed(b"\x12" * 32, "platform-2025")
ACME = SigningKey.from_seed(b"\x21" * 32, "acme-ci")
STRANGER = SigningKey.from_seed(b"\x31" * 32, "stranger")


def artifact(module: str, host: str) -> bytes:
    """An unsigned artifact of ``module`` entitling network.outbound(host, 443)."""
    src = f'security module {module} {{\n    entitle module to network.outbound("{host}", 443);\n}}\n'
    result = compile_source(src, f"{module}.pol")
    assert result.ok, result.render()
    return result[module]


def signed(module: str, host: str, key: SigningKey) -> bytes:
    return sign_artifact(artifact(module, host), key)


def trust(*extra: SigningKey) -> TrustConfig:
    keys = {PLATFORM: ["_global", "tenant.*"], ACME: ["tenant.acme"]}
    for k in extra:
        keys[k] = ["_global", "tenant.*"]
    return TrustConfig.from_keys(keys)


class Events:
    """Collects the agent's reload events; waits for one on a deadline."""

    def __init__(self, agent: PolicyAgent) -> None:
        self.items: list = []
        self.cond = threading.Condition()
        agent.subscribe(self._on)

    def _on(self, event) -> None:
        with self.cond:
            self.items.append(event)
            self.cond.notify_all()

    def wait(self, kind: str, module: str, since: int = 0, timeout: float = DEADLINE):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.items[since:]:
                    if e.kind == kind and e.module == module:
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind!r} event for {module} within {timeout}s: {self.items}")
                self.cond.wait(left)

    def mark(self) -> int:
        with self.cond:
            return len(self.items)


def allowed(agent: PolicyAgent, module: str, host: str) -> bool:
    return bool(agent.check(module, "network.outbound", host, 443))


@pytest.fixture()
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    os.chmod(d, 0o755)
    return d


def drop(d: Path, module: str, data: bytes) -> None:
    write_atomic(d / f"{module}.bin", data)


def running(d: Path, t: TrustConfig | None, **kw) -> tuple[PolicyAgent, Events]:
    agent = PolicyAgent(d, reload_interval=INTERVAL, trust=t, **kw)
    events = Events(agent)
    agent.start()
    return agent, events


def assert_rejected_keeps_previous(
    d: Path, agent: PolicyAgent, events: Events, module: str, data: bytes, reason: str, old: str, new: str
) -> None:
    """Drop ``data``; the poller must reject it for ``reason`` and ``old`` keep deciding."""
    mark = events.mark()
    drop(d, module, data)
    e = events.wait("failed", module, since=mark)
    assert reason in e.reason, e.reason
    assert allowed(agent, module, old), "previous policy must stay active"
    assert not allowed(agent, module, new), "rejected policy must not be enforced"
    assert reason in agent.status()["modules"][module]["last_error"]
    # and it stays that way over further poll cycles
    t_end = time.monotonic() + 4 * INTERVAL
    while time.monotonic() < t_end:
        assert allowed(agent, module, old) and not allowed(agent, module, new)
        time.sleep(INTERVAL / 5)


# -- what signing must show in a running agent ----------------------------------


def test_signed_artifact_loads(pdir):
    drop(pdir, "tenant.acme", signed("tenant.acme", "api.acme.com", ACME))
    drop(pdir, "_global", signed("_global", "status.example.com", PLATFORM))
    agent, events = running(pdir, trust())
    with agent:
        assert allowed(agent, "tenant.acme", "api.acme.com")
        assert allowed(agent, "tenant.globex", "status.example.com")  # _global entitles everyone
        assert agent.status()["modules"]["tenant.acme"]["last_error"] is None
        # a newer signed version is picked up by the poller
        mark = events.mark()
        drop(pdir, "tenant.acme", signed("tenant.acme", "v2.acme.com", ACME))
        events.wait("reloaded", "tenant.acme", since=mark)
        assert allowed(agent, "tenant.acme", "v2.acme.com")


def test_payload_byte_changed_with_recomputed_digest_is_rejected_for_its_signature(pdir):
    drop(pdir, "tenant.acme", signed("tenant.acme", "api.acme.com", ACME))
    agent, events = running(pdir, trust())
    with agent:
        assert allowed(agent, "tenant.acme", "api.acme.com")
        good = signed("tenant.acme", "v2.acme.com", ACME)
        forged = bytearray(good)
        plen = struct.unpack_from(">I", forged, 16)[0]
        at = forged.index(b"v2.acme.com", 56, 56 + plen)
        assert forged.count(b"v2.acme.com") == 1
        forged[at + 1] = ord("3")  # v3.acme.com: one payload byte changed
        forged[24:56] = hashlib.sha256(forged[:12] + forged[56 : 56 + plen]).digest()  # checksum is fine again
        assert_rejected_keeps_previous(
            pdir, agent, events, "tenant.acme", bytes(forged),
            "signature does not verify", old="api.acme.com", new="v3.acme.com",
        )
        # recovery: the genuine artifact loads
        mark = events.mark()
        drop(pdir, "tenant.acme", good)
        events.wait("reloaded", "tenant.acme", since=mark)
        assert allowed(agent, "tenant.acme", "v2.acme.com")


def test_acme_key_cannot_sign_globex(pdir):
    drop(pdir, "tenant.globex", signed("tenant.globex", "api.globex.com", PLATFORM))
    agent, events = running(pdir, trust())
    with agent:
        assert allowed(agent, "tenant.globex", "api.globex.com")
        assert_rejected_keeps_previous(
            pdir, agent, events, "tenant.globex", signed("tenant.globex", "evil.example.com", ACME),
            "may not sign module 'tenant.globex'", old="api.globex.com", new="evil.example.com",
        )


def test_acme_key_cannot_sign_global(pdir):
    drop(pdir, "_global", signed("_global", "status.example.com", PLATFORM))
    agent, events = running(pdir, trust())
    with agent:
        assert_rejected_keeps_previous(
            pdir, agent, events, "_global", signed("_global", "evil.example.com", ACME),
            "may not sign module '_global'", old="status.example.com", new="evil.example.com",
        )


def test_unsigned_rejected_when_trust_is_configured(pdir):
    drop(pdir, "tenant.acme", signed("tenant.acme", "api.acme.com", ACME))
    agent, events = running(pdir, trust())
    with agent:
        assert_rejected_keeps_previous(
            pdir, agent, events, "tenant.acme", artifact("tenant.acme", "v2.acme.com"),
            "artifact is not signed", old="api.acme.com", new="v2.acme.com",
        )


def test_unknown_key_rejected(pdir):
    drop(pdir, "tenant.acme", signed("tenant.acme", "api.acme.com", ACME))
    agent, events = running(pdir, trust())
    with agent:
        assert_rejected_keeps_previous(
            pdir, agent, events, "tenant.acme", signed("tenant.acme", "v2.acme.com", STRANGER),
            f"signed by unknown key {STRANGER.key_id}", old="api.acme.com", new="v2.acme.com",
        )


def test_without_trust_unsigned_and_signed_both_load(pdir):
    drop(pdir, "tenant.acme", artifact("tenant.acme", "api.acme.com"))
    agent, events = running(pdir, None)
    with agent:
        assert allowed(agent, "tenant.acme", "api.acme.com")
        mark = events.mark()
        drop(pdir, "tenant.acme", signed("tenant.acme", "v2.acme.com", STRANGER))
        events.wait("reloaded", "tenant.acme", since=mark)
        assert allowed(agent, "tenant.acme", "v2.acme.com")
        mark = events.mark()
        drop(pdir, "tenant.acme", artifact("tenant.acme", "v3.acme.com"))
        events.wait("reloaded", "tenant.acme", since=mark)
        assert allowed(agent, "tenant.acme", "v3.acme.com")


def test_rotation_to_a_second_key_without_restart(pdir):
    # the trust file lists the old and the new platform key side by side
    drop(pdir, "_global", signed("_global", "status.example.com", PLATFORM))
    drop(pdir, "tenant.globex", signed("tenant.globex", "api.globex.com", PLATFORM))
    agent, events = running(pdir, trust(PLATFORM_NEW))
    with agent:
        assert allowed(agent, "tenant.globex", "api.globex.com")
        # re-signed by the new key: loads without a restart
        for module, host in (("tenant.globex", "v2.globex.com"), ("_global", "v2.example.com")):
            mark = events.mark()
            drop(pdir, module, signed(module, host, PLATFORM_NEW))
            events.wait("reloaded", module, since=mark)
        assert allowed(agent, "tenant.globex", "v2.globex.com")
        assert allowed(agent, "tenant.initech", "v2.example.com")
        # the old key still verifies while it is listed
        mark = events.mark()
        drop(pdir, "tenant.globex", signed("tenant.globex", "v3.globex.com", PLATFORM))
        events.wait("reloaded", "tenant.globex", since=mark)
        assert allowed(agent, "tenant.globex", "v3.globex.com")


def test_pure_resign_with_the_new_key_changes_nothing_and_fails_nothing(pdir):
    unsigned = artifact("tenant.globex", "api.globex.com")
    drop(pdir, "tenant.globex", sign_artifact(unsigned, PLATFORM))
    agent, events = running(pdir, trust(PLATFORM_NEW))
    with agent:
        rev = agent.status()["modules"]["tenant.globex"]["revision"]
        mark = events.mark()
        drop(pdir, "tenant.globex", sign_artifact(unsigned, PLATFORM_NEW))
        agent.reload_now()  # one step that certainly saw the new bytes
        assert not [e for e in events.items[mark:] if e.kind == "failed"]
        st = agent.status()["modules"]["tenant.globex"]
        assert st["revision"] == rev and st["last_error"] is None  # same payload, same revision
        assert allowed(agent, "tenant.globex", "api.globex.com")


def test_after_rotation_the_dropped_old_key_is_refused(pdir):
    drop(pdir, "tenant.globex", signed("tenant.globex", "v2.globex.com", PLATFORM_NEW))
    t = TrustConfig.from_keys({PLATFORM_NEW: ["_global", "tenant.*"]})  # restarted without the old key
    agent, events = running(pdir, t)
    with agent:
        assert allowed(agent, "tenant.globex", "v2.globex.com")
        assert_rejected_keeps_previous(
            pdir, agent, events, "tenant.globex", signed("tenant.globex", "old.globex.com", PLATFORM),
            f"signed by unknown key {PLATFORM.key_id}", old="v2.globex.com", new="old.globex.com",
        )


# -- start-up ------------------------------------------------------------------------


def test_startup_with_an_untrusted_artifact_falls_back_to_global(pdir):
    drop(pdir, "_global", signed("_global", "status.example.com", PLATFORM))
    drop(pdir, "tenant.acme", artifact("tenant.acme", "api.acme.com"))  # unsigned
    agent, _ = running(pdir, trust())
    with agent:
        assert not allowed(agent, "tenant.acme", "api.acme.com")
        assert allowed(agent, "tenant.acme", "status.example.com")
        assert "artifact is not signed" in agent.status()["modules"]["tenant.acme"]["last_error"]


def test_strict_startup_refuses_an_untrusted_artifact(pdir):
    drop(pdir, "tenant.acme", signed("tenant.acme", "api.acme.com", STRANGER))
    with pytest.raises(PolicyLoadError, match="signed by unknown key"):
        PolicyAgent(pdir, reload_interval=INTERVAL, trust=trust(), strict=True).start()


def test_trust_from_environment(pdir, tmp_path, monkeypatch):
    tf = tmp_path / "trust.toml"
    tf.write_text(
        f'[[key]]\nname = "acme-ci"\npublic_key = "{ACME.public_key_b64}"\nmodules = ["tenant.acme"]\n'
    )
    os.chmod(tf, 0o644)
    monkeypatch.setenv("POLC_TRUST_FILE", str(tf))
    drop(pdir, "tenant.acme", artifact("tenant.acme", "api.acme.com"))
    agent = PolicyAgent(pdir, reload=False)
    assert isinstance(agent.trust, TrustConfig) and agent.trust.get(ACME.key_id)
    with agent:
        assert not allowed(agent, "tenant.acme", "api.acme.com")
    # an explicit trust argument wins over the environment
    with PolicyAgent(pdir, reload=False, trust=trust()) as other:
        assert other.trust.get(PLATFORM.key_id)


def test_missing_cryptography_fails_at_construction(pdir, tmp_path, monkeypatch):
    import sys

    tf = tmp_path / "trust.toml"
    tf.write_text(f'[[key]]\npublic_key = "{ACME.public_key_b64}"\nmodules = ["tenant.acme"]\n')
    monkeypatch.setenv("POLC_TRUST_FILE", str(tf))
    monkeypatch.setitem(sys.modules, "cryptography", None)
    for name in [m for m in sys.modules if m.startswith("cryptography.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(SigningUnavailableError, match=r"pip install 'polc\[sign\]'"):
        PolicyAgent(pdir, reload=False)


# -- directory guard --------------------------------------------------------------------


def test_permission_warnings_at_start(pdir, caplog):
    drop(pdir, "tenant.acme", artifact("tenant.acme", "api.acme.com"))
    os.chmod(pdir / "tenant.acme.bin", 0o666)
    os.chmod(pdir, 0o777)
    with caplog.at_level(logging.WARNING, logger="polc"), PolicyAgent(pdir, reload=False) as agent:
        assert allowed(agent, "tenant.acme", "api.acme.com")  # a warning, not a refusal
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "polc")
    assert "policy directory" in text and "writable by group and others" in text
    assert "tenant.acme.bin" in text


def test_strict_refuses_to_start_on_an_unguarded_directory(pdir):
    drop(pdir, "tenant.acme", artifact("tenant.acme", "api.acme.com"))
    os.chmod(pdir, 0o775)
    agent = PolicyAgent(pdir, reload=False, strict=True)
    with pytest.raises(PolicyLoadError, match="writable by group"):
        agent.start()
    os.chmod(pdir, 0o755)
    with PolicyAgent(pdir, reload=False, strict=True) as agent:
        assert allowed(agent, "tenant.acme", "api.acme.com")


def test_guarded_directory_logs_no_warning(pdir, caplog):
    drop(pdir, "tenant.acme", artifact("tenant.acme", "api.acme.com"))
    os.chmod(pdir / "tenant.acme.bin", 0o644)
    with caplog.at_level(logging.WARNING, logger="polc"), PolicyAgent(pdir, reload=False):
        pass
    assert not [r for r in caplog.records if r.name == "polc" and r.levelno >= logging.WARNING]


def test_agent_without_trust_never_imports_cryptography(pdir):
    import subprocess
    import sys

    drop(pdir, "tenant.acme", artifact("tenant.acme", "api.acme.com"))
    code = (
        "import sys, os\n"
        "os.environ.pop('POLC_TRUST_FILE', None)\n"
        "from polc.runtime.agent import PolicyAgent\n"
        f"with PolicyAgent({str(pdir)!r}, reload=False) as a:\n"
        "    assert a.check('tenant.acme', 'network.outbound', 'api.acme.com', 443)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('cryptography', 'lark', 'click')]\n"
        "sys.exit(repr(bad) if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
