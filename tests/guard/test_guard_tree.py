"""The guard in a real process: a governed vendorlib, an ungoverned helperlib and the service's own code.

The service (tests/guard/tree/app/service.py) installs the guard with ``agent.guard()`` and runs
every scenario in a subprocess; real sockets (loopback HTTP servers that count the connections
they accept), real files and real processes show that a denied operation never happened.
"""

from __future__ import annotations

import json
import subprocess
import sys

from support.guard import child_env


def run_service(tree, libm, servers, unlisted="allow"):
    a, b, s = servers
    cfg = {"policies": str(tree / "policies"), "a": a.server_address[1], "b": b.server_address[1],
           "s": s.server_address[1], "libm": libm, "unlisted": unlisted, "outside": str(tree / "outside")}  # fmt: skip
    r = subprocess.run([sys.executable, "service.py", json.dumps(cfg)], cwd=tree / "app", env=child_env(),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


def test_governed_package_entitled_denied_and_laundered(tree, libm, server_factory, guard_hook):
    a, b, s = server_factory("127.0.0.1"), server_factory("127.0.0.2"), server_factory("127.0.0.1")
    res, stderr = run_service(tree, libm, (a, b, s))
    app = tree / "app"

    # each entitled operation works
    assert res["urllib"] == {"ok": f"hello from {a.server_address[1]}"}
    assert res["asyncio"] == {"ok": f"hello from {a.server_address[1]}"}
    assert res["read"] == {"ok": "allowed data"}
    assert res["write"] == {"ok": "written"} and (app / "data/out/made.txt").read_text() == "made"
    assert res["exec"] == {"ok": 0}
    assert res["thread"] == {"ok": "from a thread"}
    assert res["env"]["ok"]
    assert res["native"] == {"ok": True}  # native.load("**/libm.so.6")
    assert res["bound_allowed"] == {"ok": "allowed data"}  # governed by com.vendor.bound through `governs`

    # each denied one raised PolicyDenied naming the package, the capability and the call site ...
    def denied(name, capability, args=None):
        d = res[name].get("denied")
        assert d, (name, res[name])
        assert d["package"] == "vendorlib" and d["module"] == "vendorlib", d
        assert d["capability"] == capability, d
        assert d["site"] and d["site"].startswith("vendorlib/__init__.py:"), d
        assert d["message"].startswith(f"polc: vendorlib may not {capability}("), d
        if args is not None:
            assert d["args"] == args, d
        return d

    denied("urllib_ip", "network.outbound", ["127.0.0.2", b.server_address[1]])
    denied("asyncio_ip", "network.outbound", ["127.0.0.2", b.server_address[1]])
    d = denied("resolve_then_connect", "network.outbound", ["127.0.0.2", b.server_address[1]])
    assert "no name entitled to it resolved to 127.0.0.2" in d["message"]
    denied("unentitled_name", "network.outbound", ["polc-guard-test.invalid", b.server_address[1]])
    denied("read_secret", "fs.read")
    d = denied("read_symlink", "fs.read")  # the symlink inside data/ is resolved: its target is outside
    assert "secret.txt" in json.dumps(d["args"]) and "link-to-secret" not in json.dumps(d["args"])
    denied("write_outside", "fs.write", [".", "data/forbidden.txt"])
    denied("exec_touch", "process.exec")
    denied("env_secret", "env.read", ["POLC_TEST_SECRET"])
    denied("native_program", "native.load")  # CDLL(None): every symbol of the process
    denied("pythonapi", "native.load")  # ctypes.pythonapi's symbols, looked up from vendorlib
    d = res["bound_denied"]["denied"]
    assert d["package"] == "boundlib" and d["module"] == "com.vendor.bound" and d["capability"] == "fs.read"
    # CPython swallows a hook's refusal of sys.addaudithook: the hook is simply not added
    assert res["addaudithook"] == {"ok": "hook not added"}
    assert "vendorlib may not sys.addaudithook()" in stderr
    denied("settrace", "sys.settrace", [])
    # ... and laundering through helperlib, a thread, a task or an executor is denied too
    denied("via_helper", "network.outbound", ["127.0.0.2", b.server_address[1]])
    denied("read_via_helper", "fs.read")
    denied("thread_launder", "network.outbound", ["127.0.0.2", b.server_address[1]])
    assert res["stdlib_thread_target"] == {"ok": "started"}
    assert "may not fs.write('.', 'data/made-by-thread')" in stderr
    denied("task_launder", "network.outbound", ["127.0.0.2", b.server_address[1]])
    denied("executor_launder", "fs.read")
    denied("launder_after_read", "fs.read")
    # a path relative to a directory descriptor is decided where it leads (the open event carries no dir_fd)
    d = denied("read_at_dir_fd", "fs.read")
    assert "outside/data/allowed.txt" in json.dumps(d["args"])
    denied("raw_thread_launder", "fs.read")  # a frame that just did an entitled operation is still governed

    # ... before they happened
    assert b.connections == 0
    assert not (app / "data/forbidden.txt").exists()
    assert not (app / "process-started").exists()
    assert not (app / "data/made-by-thread").exists()

    # the service's own code and the helper it calls are untouched
    assert res["service_fetch"] == {"ok": f"hello from {s.server_address[1]}"}
    assert res["service_read"] == {"ok": "the secret"}
    assert res["service_exec"] == {"ok": 0} and (app / "service-ran").exists()
    assert res["service_env"] == {"ok": "hunter2"}
    # unlisted packages are not checked by default
    assert res["unlisted_private"] == {"ok": "the secret"}

    counts = res["status"]["packages"]["vendorlib"]
    assert counts["network.outbound"]["denied"] >= 7
    assert counts["fs.read"]["allowed"] >= 1 and counts["fs.read"]["denied"] >= 3
    assert res["status"]["faults"] == 0
    assert res["status"]["hook"] == guard_hook


def test_unlisted_global_governs_unlisted_packages_by_global_alone(tree, libm, server_factory):
    servers = server_factory("127.0.0.1"), server_factory("127.0.0.2"), server_factory("127.0.0.1")
    res, _ = run_service(tree, libm, servers, unlisted="global")
    assert res["unlisted_public"] == {"ok": "public note"}  # _global entitles data/public/**
    d = res["unlisted_private"]["denied"]
    assert d["package"] == "unlistedlib" and d["module"] == "_global" and d["capability"] == "fs.read"
    assert d["site"].startswith("unlistedlib/__init__.py:")
    # helperlib is unlisted too: the service's fetch through it now needs _global's entitlement
    assert res["service_fetch"]["denied"]["package"] == "helperlib"
    # the service's own code stays unchecked
    assert res["service_read"] == {"ok": "the secret"}
