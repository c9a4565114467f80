"""Print the benchmark figures with their bars, and write them into docs/benchmarks.md.

    python benchmarks/report.py                         # table of benchmarks/results/latest.json
    python benchmarks/report.py --write docs/benchmarks.md

The table in the doc sits between ``<!-- bench:begin -->`` and
``<!-- bench:end -->``; the text around it is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
SIZES = ["10x20", "1000x20", "10x1000"]
PEERS = ["cedar", "casbin"]


def derived(figures: list[dict]) -> list[dict]:
    """Ratios of each peer to polc, computed from figures of the same run.

    The 100x bar is shown against polc's uncached check (every request
    decided from scratch, as the peers do) and against the cached check
    (what an application that repeats requests gets).
    """
    by = {f["key"]: f for f in figures}
    out = []
    for size in SIZES:
        for variant in ("uncached", "cached"):
            polc = by.get(f"check.polc-{variant}.{size}")
            if not polc:
                continue
            best = None
            for peer in PEERS + ["dict-loop"]:
                f = by.get(f"check.{peer}.{size}")
                if not f:
                    continue
                if variant == "uncached":
                    out.append({
                        "key": f"ratio.{peer}.{size}", "title": f"{peer} / polc uncached, N x K = {size}",
                        "value": f["value"] / polc["value"], "unit": "x", "bar": None, "op": ">=", "note": "",
                    })
                if peer in PEERS and (best is None or f["value"] < best[1]):
                    best = (peer, f["value"])
            if best:
                out.append({
                    "key": f"ratio.best-peer.{variant}.{size}",
                    "title": f"best peer ({best[0]}) / polc {variant}, N x K = {size}",
                    "value": best[1] / polc["value"], "unit": "x", "bar": 100.0, "op": ">=", "note": "",
                })
    return out


def status(f: dict) -> str:
    if f.get("bar") is None:
        return ""
    ok = f["value"] <= f["bar"] if f["op"] == "<=" else f["value"] >= f["bar"]
    return "met" if ok else "NOT MET"


def fmt(v: float, unit: str) -> str:
    if unit == "x":
        return f"{v:,.1f}x"
    if unit in ("rules/s",):
        return f"{v:,.0f} {unit}"
    if abs(v) >= 100:
        return f"{v:,.0f} {unit}"
    if abs(v) >= 10:
        return f"{v:.1f} {unit}"
    return f"{v:.3g} {unit}"


def rows(data: dict) -> list[tuple[str, str, str, str, str]]:
    figs = list(data["figures"]) + derived(data["figures"])
    out = []
    for f in figs:
        bar = "" if f.get("bar") is None else f"{f['op']} {fmt(f['bar'], f['unit'])}"
        out.append((f["title"], fmt(f["value"], f["unit"]), bar, status(f), f.get("note", "")))
    return out


def render_text(data: dict) -> str:
    rs = rows(data)
    w0 = max(len(r[0]) for r in rs)
    w1 = max(len(r[1]) for r in rs)
    w2 = max(len(r[2]) for r in rs)
    lines = []
    for r in rs:
        line = f"{r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]:<{w2}}  {r[3]:<7}"
        if r[4]:
            line += f"  {r[4]}"
        lines.append(line.rstrip())
    m = data.get("meta", {})
    lines.append("")
    lines.append(f"machine: {m.get('nproc')} cores, {m.get('cpu')}, Python {m.get('python')}; scale={m.get('scale')}")
    return "\n".join(lines)


def render_markdown(data: dict) -> str:
    m = data.get("meta", {})
    out = [
        BEGIN,
        f"Measured {m.get('started', '?')} on {m.get('nproc')} vCPUs ({m.get('cpu')}), "
        f"{m.get('implementation', 'CPython')} {m.get('python')}, scale `{m.get('scale')}`; "
        f"command: `{m.get('command')}`.",
        "",
    ]
    trees = m.get("trees", {})
    if trees:
        made = sorted({t["made_by"] for t in trees.values()})
        out.append("Artifacts made by: " + "; ".join(made) + ".")
        out.append("")
    out += ["| figure | measured | bar | status | note |", "|---|---:|---|---|---|"]
    for r in rows(data):
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    out.append(END)
    return "\n".join(out)


def write_doc(doc: Path, data: dict) -> None:
    table = render_markdown(data)
    if doc.exists():
        text = doc.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            doc.write_text(head + table + tail)
            return
        doc.write_text(text.rstrip() + "\n\n" + table + "\n")
        return
    doc.write_text("# polc benchmarks\n\n" + table + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default=str(HERE / "results" / "latest.json"))
    ap.add_argument("--write", metavar="DOC", help="replace the table in DOC (e.g. docs/benchmarks.md)")
    ap.add_argument("--markdown", action="store_true", help="print the Markdown table")
    ap.add_argument("--force", action="store_true", help="write the doc even from a failed run")
    args = ap.parse_args(argv)
    data = json.loads(Path(args.results).read_text())
    if args.write:
        if data.get("exitstatus", 0) != 0 and not args.force:
            print(f"not writing {args.write}: the run failed (exit {data['exitstatus']}); --force to write anyway")
            return 1
        write_doc(Path(args.write), data)
        print(f"wrote {args.write}")
    print(render_markdown(data) if args.markdown else render_text(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
