"""polc's side of the benchmarks: building artifact trees and agents.

Artifacts are produced by the real compiler (``python -m polc compile``)
whenever it is installed. Until it is, a bench-side code generator packs the
neutral rule list straight into artifact v1.0 payloads (docs/design.md) with
``polc.runtime.format.writer.pack_artifact``, so the runtime can be measured on
its own; figures that need the compiler are skipped then. Which one made a
tree is recorded in the results (``artifacts_from``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import subprocess
import sys
import time
from pathlib import Path

from workload import SIGNATURES, Module, Workload, render_module

# opcodes of artifact format 1 (docs/design.md)
RULE, ANY, HOST_EXACT, HOST_WILD = 0x01, 0x10, 0x11, 0x12
INT_RANGE, PATH_GLOB, STR_EXACT, STR_GLOB = 0x20, 0x30, 0x40, 0x41


def have_runtime() -> bool:
    return importlib.util.find_spec("polc.runtime") is not None and _has("polc.runtime.agent")


def have_compiler() -> bool:
    return _has("polc.cmd_compile")


def _has(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        return False


# --------------------------------------------------------------------------
# bench-side code generator (fallback until the compiler lands)

_PARAM_NAMES = {
    "network.outbound": ("host", "port"),
    "fs.read": ("root", "path"),
    "process.exec": ("command",),
}


def payload_for(mod: Module, source_name: str) -> dict:
    text = render_module(mod)
    caps: list[str] = []
    consts: list[str] = []
    cidx: dict[str, int] = {}

    def const(s: str) -> int:
        if s not in cidx:
            cidx[s] = len(consts)
            consts.append(s)
        return cidx[s]

    code = []
    for rule in mod.rules:
        if rule.cap not in caps:
            caps.append(rule.cap)
        code.append((RULE, 1 if rule.effect == "entitle" else 0, caps.index(rule.cap), rule.line, rule.col))
        for arg in rule.args:
            k = arg[0]
            if k == "any":
                code.append((ANY,))
            elif k == "host":
                code.append((HOST_WILD if "*" in arg[1] else HOST_EXACT, const(arg[1])))
            elif k == "port":
                code.append((INT_RANGE, arg[1], arg[2]))
            elif k == "path":
                code.append((PATH_GLOB, const(arg[1])))
            else:
                code.append((STR_GLOB if "*" in arg[1] else STR_EXACT, const(arg[1])))
    from polc import __version__

    return {
        "module": mod.name,
        "mode": "enforce",
        "compiler": __version__,
        "source": source_name,
        "source_digest": hashlib.sha256(text.encode()).hexdigest(),
        "caps": [[c, [[p, t] for p, t in zip(_PARAM_NAMES[c], SIGNATURES[c])]] for c in caps],
        "consts": consts,
        "code": code,
    }


def pack_module(mod: Module, source_name: str) -> bytes:
    from polc.runtime.format.writer import pack_artifact

    return pack_artifact(payload_for(mod, source_name))


def pack_tree(wl: Workload, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for mod in wl.modules.values():
        (out / f"{mod.name}.bin").write_bytes(pack_module(mod, mod.filename))


# --------------------------------------------------------------------------
# the real compiler


def polc_compile(src: Path, out: Path, *, jobs: int = 1, force: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``python -m polc compile SRC -o OUT -j JOBS`` end to end; return (seconds, result)."""
    cmd = [sys.executable, "-m", "polc", "compile", str(src), "-o", str(out), "-j", str(jobs), "-q"]
    if force:
        cmd.append("--force")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    return dt, res


def build_tree(wl: Workload, root: Path, *, jobs: int = 2) -> tuple[Path, Path, str]:
    """Write the workload's sources under root/src and artifacts under root/policies."""
    src, out = root / "src", root / "policies"
    wl.write_sources(src)
    if have_compiler():
        dt, res = polc_compile(src, out, jobs=jobs)
        if res.returncode != 0:
            raise RuntimeError(f"polc compile failed ({res.returncode}):\n{res.stderr[-4000:]}")
        return src, out, "polc compile"
    pack_tree(wl, out)
    return src, out, "bench-side generator (compiler not installed)"


# --------------------------------------------------------------------------
# agents


def make_agent(policy_dir: Path, *, cache: bool = True, reload_interval: float = 0.0, **kw):
    """A started PolicyAgent; ``cache=False`` disables the decision cache."""
    from polc.runtime.agent import PolicyAgent

    params = inspect.signature(PolicyAgent).parameters
    if reload_interval:
        kw["reload_interval"] = reload_interval
    else:
        if "reload" in params:
            kw["reload"] = False
        else:
            kw["reload_interval"] = 0
    if not cache:
        if "cache_size" not in params:
            raise RuntimeError("PolicyAgent has no cache_size parameter: cannot disable the cache")
        kw["cache_size"] = 0
    agent = PolicyAgent(str(policy_dir), **kw)
    if hasattr(agent, "start"):
        agent.start()
    return agent


def poll_step(agent):
    """The poller's one step, whatever the runtime calls it."""
    for name in ("reload_now", "poll_once", "_poll"):
        fn = getattr(agent, name, None)
        if callable(fn):
            return fn
    raise RuntimeError("PolicyAgent exposes no single poll step (poll_once)")


def rule_line(rule: str | None) -> tuple[str, int] | None:
    """('tenant.m3.pol', 7) from 'path/to/tenant.m3.pol:7:5'."""
    if rule is None:
        return None
    path, line, _col = rule.rsplit(":", 2)
    return os.path.basename(path), int(line)


def artifact_bytes(mod: Module, staging: Path) -> bytes:
    """One module's artifact, from the real compiler when it is installed."""
    if not have_compiler():
        return pack_module(mod, mod.filename)
    src = staging / "src"
    out = staging / "out"
    src.mkdir(parents=True, exist_ok=True)
    for old in src.glob("*.pol"):
        old.unlink()
    (src / mod.filename).write_text(render_module(mod))
    _dt, res = polc_compile(src, out, force=True)
    if res.returncode != 0:
        raise RuntimeError(f"polc compile failed:\n{res.stderr[-4000:]}")
    return (out / f"{mod.name}.bin").read_bytes()


def load_and_link(path: Path):
    """What the agent does per artifact: read, check header and digest, unpack, verify, link."""
    from polc.runtime.enforce import link
    from polc.runtime.format.reader import read_artifact_file

    return link(read_artifact_file(path))
