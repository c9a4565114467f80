"""``polc test SRC...``: run the expectations of ``*.test.pol`` files against a policy set.

The sources among SRC are compiled in memory (the pipeline ``polc check``
runs; nothing is written), each module's artifact bytes are verified and
linked by the runtime, and every expectation is decided by
``Snapshot.check``: the enforcer the agent runs. With ``--artifacts DIR`` the
policies are those of an artifact directory, loaded as the agent loads them.
Test files are checked first, with the same diagnostics as sources.

stderr carries the diagnostics and one ``file:line:col: error: expected deny,
got allow (entitled by FILE:LINE:COL)`` per failed expectation; stdout carries
the results (``--format text``: the coverage table and the ``N passed, N
failed`` line; ``json``; ``junit``, with the summary line on stderr).

Exit status: 0 every expectation held (and coverage is at least
``--fail-under``); 1 a failure, a test-file or source error, coverage below
the bar; 2 usage or I/O errors (no test files, a bad ``--run`` pattern).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn
from xml.etree import ElementTree as ET

import click

from polc.compiler.build import compile_paths
from polc.compiler.diagnostics import ERROR, Diagnostic, render_all
from polc.compiler.errors import UsageError
from polc.compiler.pipeline import decode
from polc.compiler.report import diagnostic_dict
from polc.compiler.sources import TEST_SUFFIX, find_tests
from polc.compiler.testfile import parse_tests
from polc.compiler.testrun import (
    Coverage,
    PolicySet,
    TestResult,
    check_tests,
    coverage,
    outcome_of,
    run_tests,
)
from polc.errors import EXIT_FAILED, EXIT_OK, UsageOrIOError, VerificationFailed
from polc.runtime import PolicyAgent
from polc.runtime.catalog import GLOBAL_MODULE
from polc.runtime.enforce.link import link
from polc.runtime.enforce.snapshot import Snapshot
from polc.runtime.errors import PolcError
from polc.runtime.format.disasm import printable
from polc.runtime.format.program import Program
from polc.runtime.format.reader import Artifact, read_artifact

_PREFIX = "polc test: error: "
FORMATS = ("text", "json", "junit")


@click.command("test")
@click.argument("srcs", nargs=-1, required=True, metavar="SRC...")
@click.option("--run", "run_pattern", metavar="PATTERN",
              help="Run only the tests whose name matches this regular expression (searched, as re.search).")
@click.option("--coverage", "show_coverage", is_flag=True,
              help="Report, per module, the rules no expectation reached, and the percentage.")
@click.option("--fail-under", type=click.FloatRange(0, 100), metavar="PCT",
              help="Fail (exit 1) when fewer than PCT percent of the rules are reached.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="Results on stdout: text, json, or JUnit XML for CI systems.")
@click.option("--artifacts", metavar="DIR",
              help="Test the artifacts in DIR (as the agent loads them) instead of compiling the sources.")
@click.option("--source-root", metavar="DIR",
              help="Record sources relative to DIR (as polc compile --source-root); 'by' may name them so.")
def test_cmd(
    srcs: tuple[str, ...], run_pattern: str | None, show_coverage: bool, fail_under: float | None, fmt: str,
    artifacts: str | None, source_root: str | None,
) -> None:
    """Run the expectations of the *.test.pol files in SRC... against the policies.

    \b
    Examples:
      polc test policies-src
      polc test policies-src --coverage --fail-under 100
      polc test policies-src --run 'acme' --format junit > polc-tests.xml
      polc test tests/policy --artifacts policies

    A test file holds tests of expectations:

    \b
      test "acme reaches its own API but no shell" {
          expect allow tenant.acme to network.outbound("api.acme.com", 443);
          expect deny tenant.acme to process.exec("/bin/sh") by "_global.pol:11:5";
      }

    Exit status: 0 all passed, 1 a failure or an error in a test file or a source, 2 usage or I/O error.
    """
    select: Callable[[str], bool] | None = None
    if run_pattern is not None:
        try:
            pattern = re.compile(run_pattern)
        except re.error as exc:
            raise UsageOrIOError(f"--run {run_pattern!r} is not a regular expression: {exc}", prefix=_PREFIX) from None

        def select(name: str) -> bool:
            return pattern.search(name) is not None
    try:
        test_files = find_tests(srcs)
    except UsageError as exc:
        raise UsageOrIOError(str(exc), prefix=_PREFIX) from None
    if not test_files:
        raise UsageOrIOError(f"no test files (*{TEST_SUFFIX}) found in " + ", ".join(srcs), prefix=_PREFIX)

    if artifacts is not None:
        if source_root is not None:
            raise UsageOrIOError("--source-root is for compiling sources; --artifacts reads compiled ones",
                                 prefix=_PREFIX)
        programs, snapshot = _load_artifacts(artifacts)
    else:
        sources = [s for s in srcs if os.path.isdir(s) or not s.endswith(TEST_SUFFIX)]
        programs, snapshot = _compile(sources, source_root, fmt)
    policies = PolicySet(programs)

    texts: dict[str, str] = {}
    parsed = []
    diags = []
    for path in test_files:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise UsageOrIOError(f"cannot read {path}: {exc.strerror or exc}", prefix=_PREFIX) from None
        text, bad = decode(data, path)
        if text is None:
            assert bad is not None
            diags.append(bad)
            continue
        texts[path] = text
        tf, syntax = parse_tests(text, path)
        diags.extend(syntax)
        parsed.append(tf)
    tests, checks = check_tests(parsed, policies, {d.file for d in diags if d.severity == ERROR})
    diags.extend(checks)
    diags.sort(key=lambda d: (d.file, d.line, d.col))
    if diags:
        click.echo(render_all(diags, texts), err=True)
    if any(d.severity == ERROR for d in diags):
        n = sum(1 for d in diags if d.severity == ERROR)
        _not_run(fmt, diags, texts.get, f"{n} error{'s' if n != 1 else ''} in the test files; no test was run")

    results = run_tests(tests, snapshot.check, select)
    if select is not None and not results:
        raise UsageOrIOError(f"no test name matches --run {run_pattern!r}", prefix=_PREFIX)
    failures = [r for t in results for r in t.results if not r.passed]
    shown = [Diagnostic(ERROR, r.expect.file, r.expect.line, r.expect.col, r.message or "failed", 6)
             for r in failures]
    if shown:
        click.echo(render_all(shown, texts), err=True)
    passed = sum(1 for t in results for r in t.results if r.passed)
    summary = f"{passed} passed, {len(failures)} failed"
    cov = coverage(policies, results)
    below = fail_under is not None and cov.covered * 100 < fail_under * cov.rules

    if fmt == "json":
        doc = _json(results, cov if show_coverage or fail_under is not None else None, passed, len(failures))
        doc["diagnostics"] = [diagnostic_dict(d) for d in diags]
        click.echo(json.dumps(doc, indent=2))
        click.echo(summary, err=True)
    elif fmt == "junit":
        click.echo(_junit(results))
        click.echo(summary, err=True)
    else:
        if show_coverage:
            click.echo(_coverage_text(cov))
        click.echo(summary)
    if below:
        reached = _pct(cov.covered, cov.rules)
        click.echo(f"polc test: error: {reached} of the rules reached, below --fail-under {fail_under:g}", err=True)
    sys.exit(EXIT_FAILED if failures or below else EXIT_OK)


# -- the policy set ----------------------------------------------------------------


def _snapshot(programs: Mapping[str, Artifact]) -> Snapshot:
    linked = {name: link(a) for name, a in programs.items()}
    glob = linked.pop(GLOBAL_MODULE, None)
    return Snapshot(linked, glob)


def _not_run(fmt: str, diags: list[Diagnostic], source: Callable[[str], str | None], message: str) -> NoReturn:
    """Errors before any test ran: the diagnostics are on stderr already; a JSON or JUnit document says so too."""
    if fmt == "json":
        doc = {"summary": None, "tests": [], "coverage": None, "error": message,
               "diagnostics": [diagnostic_dict(d) for d in diags]}
        click.echo(json.dumps(doc, indent=2))
    elif fmt == "junit":
        errors = [d for d in diags if d.severity == ERROR]
        files = sorted({d.file for d in errors})
        suites = ET.Element("testsuites", name="polc test", tests=str(len(files)), failures="0",
                            errors=str(len(files)))
        for f in files:
            mine = [d for d in errors if d.file == f]
            suite = ET.SubElement(suites, "testsuite", name=_xml(f), tests="1", failures="0", errors="1",
                                  skipped="0", time="0")
            case = ET.SubElement(suite, "testcase", name=_xml(f), classname=_xml(f), file=_xml(f), time="0")
            err = ET.SubElement(case, "error", message=_xml(mine[0].header()), type="diagnostics")
            err.text = _xml(render_all(mine, source))
        ET.indent(suites)
        click.echo('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode"))
    raise VerificationFailed(message, prefix=_PREFIX)


def _compile(sources: list[str], source_root: str | None, fmt: str) -> tuple[dict[str, Program], Snapshot]:
    if not sources:
        raise UsageOrIOError("no policy sources among the arguments (give the sources, or --artifacts DIR)",
                             prefix=_PREFIX)
    report = compile_paths(sources, write=False, keep_artifacts=True, source_root=source_root)
    if report.fatal:
        raise UsageOrIOError(report.fatal, prefix=_PREFIX)
    errors = [d for d in report.diagnostics if d.severity == ERROR]
    if errors:
        click.echo(render_all(errors, report.source_text), err=True)
        _not_run(fmt, errors, report.source_text, f"the policy sources have {len(errors)} "
                 f"error{'s' if len(errors) != 1 else ''}; no test was run (polc check shows them all)")
    arts: dict[str, Artifact] = {}
    for m in report.modules:
        assert m.data is not None  # a compiled module of a run without errors
        try:
            arts[m.module] = read_artifact(m.data, expected_module=m.module)
        except PolcError as exc:  # the compiler verifies what it writes: this would be a bug
            raise VerificationFailed(f"module {m.module}: its artifact does not verify: {exc}",
                                     prefix=_PREFIX) from None
    return dict(arts), _snapshot(arts)


def _load_artifacts(directory: str) -> tuple[dict[str, Program], Snapshot]:
    from polc.loaded import programs_of

    if not os.path.isdir(directory):
        what = "not a directory" if os.path.exists(directory) else "no such directory"
        raise UsageOrIOError(f"{directory}: {what}", prefix=_PREFIX)
    try:
        agent = PolicyAgent(directory, reload=False).start()
    except ValueError as exc:
        raise UsageOrIOError(str(exc), prefix=_PREFIX) from None
    status = agent.status()
    bad = [f"{info['file']}: {info['last_error']}" for info in status["modules"].values() if info["last_error"]]
    if status["unavailable"]:
        bad.append(str(status["unavailable"]))
    if bad:
        raise VerificationFailed("artifacts that do not load: " + "; ".join(bad), prefix=_PREFIX)
    programs = programs_of(agent, prefix=_PREFIX)
    return programs, agent.snapshot


# -- output ------------------------------------------------------------------------


def _pct(covered: int, rules: int) -> str:
    """``covered / rules`` as a percentage rounded down to a tenth, so a bar not reached never shows as
    reached (9,997 of 10,000: 99.9%, not 100.0%)."""
    tenths = 1000 if not rules else 1000 * covered // rules
    return f"{tenths // 10}.{tenths % 10}%"


def _coverage_text(cov: Coverage) -> str:
    lines = ["coverage (rules that decided an expectation):"]
    width = max([len(m.module) for m in cov.modules] + [5])
    for m in cov.modules:
        if not m.rules:
            lines.append(f"  {m.module:<{width}}      -  (no rules)")
            continue
        lines.append(f"  {m.module:<{width}}  {_pct(m.covered, m.rules):>6}  ({m.covered}/{m.rules} rules)")
        lines.extend(f"    not reached: {printable(loc)}" for loc in m.missed)
    lines.append(f"  {'total':<{width}}  {_pct(cov.covered, cov.rules):>6}  ({cov.covered}/{cov.rules} rules)")
    return "\n".join(lines)


def _json(results: list[TestResult], cov: Coverage | None, passed: int, failed: int) -> dict[str, Any]:
    tests = []
    for t in results:
        tests.append({
            "name": t.test.name, "file": t.test.file, "line": t.test.line, "col": t.test.col, "passed": t.passed,
            "expectations": [{
                "file": r.expect.file, "line": r.expect.line, "col": r.expect.col,
                "expect": r.expect.verdict, "module": r.expect.module, "capability": r.expect.capability,
                "args": list(r.expect.args), "by": r.expect.by,
                "got": outcome_of(r.decision), "rule": r.decision.rule, "reason": r.decision.reason,
                "passed": r.passed, "message": r.message,
            } for r in t.results],
        })
    out: dict[str, Any] = {"summary": {"passed": passed, "failed": failed, "tests": len(results)}, "tests": tests}
    out["coverage"] = None if cov is None else {
        "percent": cov.percent, "rules": cov.rules, "covered": cov.covered,
        "modules": [{"module": m.module, "source": m.source, "rules": m.rules, "covered": m.covered,
                     "percent": m.percent, "missed": list(m.missed)} for m in cov.modules],
    }
    return out


# Characters XML 1.0 cannot hold at all (not even as references): escaped as text.
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def _junit(results: list[TestResult]) -> str:
    suites = ET.Element("testsuites", name="polc test", tests=str(len(results)),
                        failures=str(sum(1 for t in results if not t.passed)), errors="0")
    by_file: dict[str, list[TestResult]] = {}
    for t in results:
        by_file.setdefault(t.test.file, []).append(t)
    for file, tests in by_file.items():
        suite = ET.SubElement(suites, "testsuite", name=_xml(file), tests=str(len(tests)),
                              failures=str(sum(1 for t in tests if not t.passed)), errors="0", skipped="0",
                              time=f"{sum(t.seconds for t in tests):.6f}")
        for t in tests:
            case = ET.SubElement(suite, "testcase", name=_xml(t.test.name), classname=_xml(file), file=_xml(file),
                                 line=str(t.test.line), time=f"{t.seconds:.6f}")
            bad = [r for r in t.results if not r.passed]
            if bad:
                first = bad[0]
                fail = ET.SubElement(case, "failure", message=_xml(first.message or "failed"), type="expectation")
                fail.text = _xml("\n".join(f"{r.expect.location}: {r.message}\n    expect {r.expect.verdict} "
                                      f"{r.expect.request()}" for r in bad))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode")
