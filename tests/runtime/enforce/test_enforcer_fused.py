"""The fused per-(module, capability) deciders agree with the sequential evaluation.

``_Plan.decide`` walks the tables one by one (denies of ``_global``, of the
module, entitles of the module, of ``_global``); the fused decider probes one
merged index. Both must give the same Decision (rule, revision, audit) for
every request; the hypothesis test in test_enforcer_property.py compares the
agent with an independent reference, this one pins the shapes the fused
code is specialised for (inlined range checks, prefix buckets, tiers).
"""

from __future__ import annotations

from polc.runtime.catalog import Capability, Param
from polc.runtime.enforce import Snapshot, link
from polc.runtime.enforce.plan import Plan
from polc.runtime.format.reader import read_artifact

from support.agent import artifact_bytes

QUOTA = Capability("quota.set", (Param("limit", "int"),))
PAIR = Capability("pair.set", (Param("name", "string"), Param("n", "int")))
CAPS = {"quota.set": QUOTA, "pair.set": PAIR}

GLOBAL = [
    ("deny", "network.outbound", ("*.evil.com",)),
    ("deny", "network.outbound", ("*", 25)),
    ("deny", "network.outbound", ("10.0.0.0/8",)),
    ("deny", "process.exec", ("rm*",)),
    ("deny", "process.exec", ("*sudo*",)),
    ("deny", "process.exec", ("*.sh",)),
    ("deny", "fs.read", ("*", "**/.ssh/**")),
    ("deny", "quota.set", ((100, 200),)),
    ("entitle", "network.outbound", ("**.shared.org", (1, 1024))),
    ("entitle", "process.exec", ("ls",)),
    ("entitle", "quota.set", ()),
    ("entitle", "pair.set", ("g*",)),
]
MOD = [
    ("entitle", "network.outbound", ("api.acme.com", 443)),
    ("entitle", "network.outbound", ("*.acme.com", (8000, 8009))),
    ("deny", "network.outbound", ("admin.acme.com",)),
    ("entitle", "network.outbound", ("a.*.acme.com", 443)),
    ("entitle", "network.outbound", ("10.1.0.0/16", 443)),
    ("deny", "network.outbound", ("x.shared.org", 80)),
    ("entitle", "process.exec", ("git*",)),
    ("entitle", "process.exec", ("gi?",)),
    ("deny", "process.exec", ("git-danger*",)),
    ("entitle", "fs.read", ("tenants/acme", "data/**")),
    ("deny", "fs.read", ("tenants/acme", "data/secret/**")),
    ("entitle", "fs.read", ("*", "pub/*.txt")),
    ("deny", "quota.set", ((0, 5),)),
    ("entitle", "pair.set", ("gx", (1, 3))),
    ("deny", "pair.set", ("g*", 2)),
]

REQUESTS = [
    ("network.outbound", ("api.acme.com", 443)),
    ("network.outbound", ("API.acme.com.", 443)),
    ("network.outbound", ("api.acme.com", 25)),
    ("network.outbound", ("w.acme.com", 8005)),
    ("network.outbound", ("w.acme.com", 8010)),
    ("network.outbound", ("admin.acme.com", 8001)),
    ("network.outbound", ("a.b.acme.com", 443)),
    ("network.outbound", ("x.evil.com", 443)),
    ("network.outbound", ("a.b.shared.org", 80)),
    ("network.outbound", ("x.shared.org", 80)),
    ("network.outbound", ("x.shared.org", 81)),
    ("network.outbound", ("10.1.2.3", 443)),
    ("network.outbound", ("10.9.2.3", 443)),
    ("network.outbound", ("::1", 443)),
    ("network.outbound", ("bad_host!", 443)),
    ("network.outbound", ("a.com", True)),
    ("network.outbound", ("a.com", 70000)),
    ("network.outbound", ("a.com",)),
    ("process.exec", ("git",)),
    ("process.exec", ("git-danger-x",)),
    ("process.exec", ("gix",)),
    ("process.exec", ("rm",)),
    ("process.exec", ("mysudox",)),
    ("process.exec", ("run.sh",)),
    ("process.exec", ("ls",)),
    ("process.exec", (42,)),
    ("fs.read", ("tenants/acme", "data/x")),
    ("fs.read", ("tenants/acme", "data/secret/k")),
    ("fs.read", ("tenants/acme", "data/.ssh/k")),
    ("fs.read", ("other", "pub/a.txt")),
    ("fs.read", ("other", "../x")),
    ("quota.set", (3,)),
    ("quota.set", (150,)),
    ("quota.set", (2**70,)),
    ("quota.set", (-(2**70),)),
    ("quota.set", (True,)),
    ("pair.set", ("gx", 2)),
    ("pair.set", ("gx", 3)),
    ("pair.set", ("gy", 2**80)),
    ("threads.create", ()),
    ("no.such", ()),
]


def _link(name, rules, **kw):
    return link(read_artifact(artifact_bytes(name, rules, caps=CAPS, **kw), expected_module=name))


def _check_agrees(glob_mode: str, mod_mode: str) -> None:
    g = _link("_global", GLOBAL, mode=glob_mode)
    m = _link("tenant.acme", MOD, mode=mod_mode)
    snap = Snapshot({"tenant.acme": m}, g, cache_size=0)
    for module, mod in (("tenant.acme", m), ("nobody", None)):
        for cap, args in REQUESTS:
            plan = Plan(module, cap, mod, g)
            want = plan.decide(args)
            assert plan.fn(args) == want, (module, cap, args)
            assert snap.check(module, cap, *args) == want, (module, cap, args)
            assert snap.check(module, cap, *args) == want, (module, cap, args)  # memoised decision


def test_fused_agrees_with_sequential_tables():
    _check_agrees("enforce", "enforce")


def test_fused_agrees_in_audit_mode():
    _check_agrees("audit", "enforce")
    _check_agrees("enforce", "audit")


def test_common_plans_are_fused():
    g = _link("_global", GLOBAL)
    m = _link("tenant.acme", MOD)
    for cap in ("network.outbound", "process.exec", "fs.read", "quota.set"):
        plan = Plan("tenant.acme", cap, m, g)
        assert plan.fn != plan.decide, cap
