"""Source trees of 1,000 / 10,000 / 100,000 modules, compiled once and cached.

Each tree is ``N`` modules of 20 rules (the regular benchmarks' mix from
``benchmarks/workload.py``: exact and wildcard hosts with ports and port
ranges, ``fs.read`` roots with path globs, ``process.exec`` names and globs,
entitles and denies) plus ``_global``'s ten denies, and one more tree holds a
single module of 10,000 ``fs.read`` path-glob rules under one root.

A tree is written and compiled (``polc compile -j 2``) into
``.bench-cache/scale/KEY/NAME/{src,policies}`` at the top of the checkout,
which git ignores. ``KEY`` is the generator's version and a digest of what the
compiler writes for a sample module (its format and encoding), so when either
changes the cached trees are not used and new ones are built; a tree whose
compile did not finish has no ``DONE`` file and is built again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from workload import GLOBAL, GLOBAL_RULES, Module, Rule, Workload, _build_module, _sample_args, generate  # noqa: E402

GENERATOR_VERSION = 1
"""Bump when the trees written change (rules, names, request pairs)."""

CACHE = Path(os.environ.get("POLC_BENCH_CACHE", BENCH.parent / ".bench-cache")) / "scale"
GLOB_RULES = 10_000
GLOB_MODULE = "tenant.globs"
GLOB_ROOT = "tenants/globs"

_SAMPLE = """security module bench.sample {
    entitle module to network.outbound("*.a.example.com", 443);
    deny module to fs.read("r", "**/.ssh/**");
    entitle module to process.exec("git*");
}
"""


def output_format_key() -> str:
    """A digest of the artifact this compiler writes for a fixed sample source."""
    from polc.compiler import compile_source

    result = compile_source(_SAMPLE, "sample.pol")
    ((_name, data),) = result.artifacts
    return hashlib.sha256(data).hexdigest()[:12]


def cache_key() -> str:
    return f"gen{GENERATOR_VERSION}-out{output_format_key()}"


@dataclass
class Tree:
    name: str
    root: Path
    workload: Workload

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def policies(self) -> Path:
        return self.root / "policies"

    @property
    def pairs(self) -> Path:
        """One allowed request for every (module, capability) pair the rules use (JSON)."""
        return self.root / "pairs.json"

    @property
    def artifacts(self) -> int:
        return len(self.workload.modules)


def glob_workload() -> Workload:
    """One module of GLOB_RULES path-glob rules under one root (plus _global), and its requests."""
    rng = random.Random("polc-scale-globs")
    specs: list[tuple] = []
    shapes = ["d{i}/**", "logs/l{i}/*.log", "reports/*/s{i}.csv", "cache/c{i}/**/index.json", "p{i}/data/*"]
    for i in range(GLOB_RULES):
        pat = shapes[i % len(shapes)].format(i=i)
        effect = "deny" if i % 17 == 3 else "entitle"
        specs.append((effect, "fs.read", (("str", GLOB_ROOT), ("path", pat)), 0))
    modules = {GLOBAL: _build_module(GLOBAL, GLOBAL_RULES), GLOB_MODULE: _build_module(GLOB_MODULE, specs)}
    wl = Workload(1, GLOB_RULES, 1, modules, [])
    from workload import Request

    mod = modules[GLOB_MODULE]
    reqs = []
    for _ in range(400):
        rule = rng.choice(mod.rules)
        near = rng.random() < 0.3
        reqs.append(Request(GLOB_MODULE, "fs.read", _sample_args(rng, rule, near), "near-miss" if near else "allowed"))
    for _ in range(100):  # paths no rule names: every rule is a candidate for a scan
        reqs.append(Request(GLOB_MODULE, "fs.read", (GLOB_ROOT, f"zz{rng.randrange(10**6)}/q.txt"), "near-miss"))
    wl.requests = reqs
    return wl


def _pairs(wl: Workload) -> list[list]:
    rng = random.Random(3)
    out = []
    for name, mod in wl.modules.items():
        if name == GLOBAL:
            continue
        seen: dict[str, list] = {}
        for rule in sorted(mod.rules, key=lambda r: r.effect != "entitle"):
            if rule.cap not in seen:
                seen[rule.cap] = list(_sample_args(rng, rule, False))
        out.extend([name, cap, args] for cap, args in seen.items())
    return out


def _compile(python: str, src: Path, out: Path, jobs: int) -> None:
    cmd = [python, "-m", "polc", "compile", str(src), "-o", str(out), "-j", str(jobs), "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"polc compile failed ({res.returncode}):\n{res.stderr[-4000:]}")


def build(name: str, *, python: str = sys.executable, log=print) -> Tree:
    """The tree ``name`` ("n1000", "n10000", "n100000", "n10", "globs"), from the cache or built now."""
    if name == "globs":
        wl = glob_workload()
    else:
        n = int(name[1:])
        wl = generate(n, 20, n_requests=1000 if n <= 1000 else 0)
    root = CACHE / cache_key() / name
    tree = Tree(name, root, wl)
    if (root / "DONE").exists():
        return tree
    t0 = time.perf_counter()
    log(f"building tree {name} ({len(wl.modules):,} modules) in {root} ...")
    shutil.rmtree(root, ignore_errors=True)
    wl.write_sources(tree.src)
    tree.pairs.write_text(json.dumps(_pairs(wl)))
    _compile(python, tree.src, tree.policies, 2)
    (root / "DONE").write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1)}))
    log(f"built tree {name} in {time.perf_counter() - t0:.0f} s")
    return tree


def link_copy(tree: Tree, dest: Path) -> Path:
    """A copy of the tree's policy directory made of hard links (a drop replaces by rename,
    so the cached files are never written)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for entry in os.scandir(tree.policies):
        if entry.name.endswith(".bin"):
            os.link(entry.path, dest / entry.name)
    return dest


def denying_module(mod: Module) -> Module:
    """``mod`` with a deny of ``process.exec("git*")`` first: the drop the reload figure makes."""
    deny = Rule("deny", "process.exec", (("str", "git*"),), 0, line=3)
    rest = [Rule(r.effect, r.cap, r.args, r.omit_trailing, line=r.line + 1, col=r.col) for r in mod.rules]
    return Module(mod.name, [deny, *rest])
