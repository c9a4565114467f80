"""The governs statement: parsed, checked (each error), compiled into format 1.2, verified, linked --
through the in-memory API and through real ``polc compile`` / ``polc check`` / ``polc inspect`` runs."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess

import msgpack
import pytest

from polc import __version__
from polc.compiler import compile_source, compile_sources
from polc.compiler.ast import GovernsStmt
from polc.compiler.diagnostics import ERROR, NOTE, WARNING
from polc.compiler.parser import parse
from polc.runtime.enforce import Snapshot, link
from polc.runtime.format import opcodes
from polc.runtime.format.header import HEADER_SIZE, MAGIC
from polc.runtime.format.reader import read_artifact, read_artifact_file

from support import REPO

VENDOR = """security module com.vendor.library {
    governs "vendorlib", "vendorlib_ext";
    entitle module to network.outbound("api.vendor.com", 443);
}
"""


def errors(result, severity=ERROR):
    return [d for d in result.diagnostics if d.severity == severity]


def one(body: str, severity=ERROR, name: str = "m"):
    r = compile_source(f"security module {name} {{\n{body}\n}}\n", "t.pol")
    found = errors(r, severity)
    assert len(found) == 1, [d.header() for d in r.diagnostics]
    return found[0], r


# -- parsing ------------------------------------------------------------------


def test_parsed_with_positions():
    sf, diags = parse(VENDOR, "v.pol")
    assert diags == []
    st = sf.modules[0].body[0]
    assert isinstance(st, GovernsStmt) and (st.line, st.col) == (2, 5)
    assert [(a.value, a.line, a.col, a.end_col) for a in st.names] == [
        ("vendorlib", 2, 13, 24), ("vendorlib_ext", 2, 26, 41)
    ]


def test_governs_is_still_a_name_component():
    r = compile_source('security module governs.x { governs "governs_pkg"; entitle module to threads.create; }')
    assert errors(r) == [] and len(r.artifacts) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("governs;", "expected a package name in quotes after 'governs', found ';'"),
        ("governs vendorlib;", "expected a package name in quotes after 'governs', found the bare word "
                               "'vendorlib'; package names are quoted: \"vendorlib\""),
        ('governs "a" "b";', "expected ',' between package names, found string \"b\""),
        ('governs "a",;', "expected a package name in quotes after ',', found ';'"),
        ('governs "a", 3;', "expected a package name in quotes after ',', found number 3"),
        ('governs "a"\n    entitle module to threads.create;', "expected ';' after the governs statement"),
        ('govern "a";', "unknown statement 'govern'; did you mean 'governs'?"),
        ('package "a";', "unknown statement 'package'; did you mean 'governs'?"),
    ],
)
def test_syntax_errors_in_words(body, message):
    d, _ = one(body)
    assert d.message == message


def test_fast_and_recovering_parsers_agree():
    from polc.compiler.parser import get_parser
    from polc.compiler.recovery import Recovery

    p = get_parser()
    fast = p.fast.parse(VENDOR)
    found, diags = Recovery(p, VENDOR, "<memory>").run()
    assert diags == [] and fast is not None and list(fast) == list(found)


# -- checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("vendor-lib", "invalid package name \"vendor-lib\": not a dotted Python name (identifiers of ASCII letters, "
                       "digits and '_', joined by single dots); did you mean 'vendor_lib'? "
                       "(the name Python imports, as in 'import vendor_lib')"),
        ("vendorlib/client.py", "did you mean 'vendorlib.client'?"),
        ("1vendor", "invalid package name \"1vendor\": not a dotted Python name"),
        ("a..b", "invalid package name \"a..b\": not a dotted Python name"),
        ("", "invalid package name \"\": an empty name"),
        ("vendor.class", "invalid package name \"vendor.class\": 'class' is a Python keyword, which no module name"),
        ("caf\u00e9", "invalid package name \"caf\u00e9\": not a dotted Python name"),
        ("x" * 256, "256 characters, more than 255"),
    ],
)
def test_bad_package_names(name, message):
    d, r = one(f'governs "{name}";')
    assert message in d.message
    assert (d.file, d.line, d.col) == ("t.pol", 2, 9)
    assert r.artifacts == []


def test_bad_escape_in_a_package_name():
    d, _ = one('governs "a\\qb";')
    assert d.message.startswith("unknown escape '\\q' in a string")


def test_global_cannot_govern():
    d, _ = one('governs "vendorlib";', name="_global")
    assert d.message.startswith("_global cannot govern a package: its rules apply to every governed package")
    assert (d.line, d.col) == (2, 1)


def test_own_name_and_repeats_are_warnings_and_dropped():
    r = compile_source(
        'security module vendorlib {\n governs "vendorlib", "vendorlib_ext";\n governs "vendorlib_ext";\n}\n', "t.pol"
    )
    warns = [d.message for d in errors(r, WARNING)]
    assert warns == [
        "module 'vendorlib' governs the package 'vendorlib' by its own name already; this name adds nothing",
        "package 'vendorlib_ext' is already governed by this module (line 2)",
    ]
    assert read_artifact(r["vendorlib"]).governs == ("vendorlib_ext",)
    assert errors(compile_source(r.sources["t.pol"], "t.pol", strict=True))  # --strict fails on them


def test_standard_library_names_warn():
    d, _ = one('governs "json.decoder";', WARNING)
    assert d.message.startswith("'json.decoder' is (part of) the standard library")


def test_the_limit_of_names():
    names = ", ".join(f'"p{i}"' for i in range(opcodes.MAX_GOVERNS + 1))
    d, _ = one(f"governs {names};")
    assert d.message == "module 'm' governs 1,025 packages, more than the 1,024 an artifact may name"


def test_a_package_claimed_by_two_modules_names_both_places():
    r = compile_sources([
        ("a.pol", VENDOR),
        ("b.pol", 'security module tenant.evil {\n    governs "vendorlib";\n}\n'),
        ("c.pol", "security module tenant.fine { entitle module to threads.create; }\n"),
    ])
    errs = errors(r)
    assert [(d.file, d.line, d.col, d.module) for d in errs] == [
        ("a.pol", 2, 13, "com.vendor.library"), ("b.pol", 2, 13, "tenant.evil")
    ]
    assert errs[0].message == (
        "package 'vendorlib' is claimed by two modules: 'com.vendor.library' here and 'tenant.evil' at b.pol:2:13; "
        "a package is governed by one module"
    )
    assert errs[1].message.startswith(
        "package 'vendorlib' is claimed by two modules: 'tenant.evil' here and 'com.vendor.library' at a.pol:2:13"
    )
    assert [(n.severity, n.location, n.message) for n in errs[0].notes] == [
        (NOTE, "b.pol:2:13", "module 'tenant.evil' claims 'vendorlib' here")
    ]
    # both claimants fail, the rest compiles
    assert [name for name, _ in r.artifacts] == ["tenant.fine"]


def test_a_package_that_is_another_modules_name():
    r = compile_sources([
        ("a.pol", VENDOR),
        ("v.pol", "security module vendorlib_ext {\n}\n"),
    ])
    (e,) = errors(r)
    assert (e.file, e.line, e.col) == ("a.pol", 2, 26)
    assert e.message == (
        "package 'vendorlib_ext' is the name of module 'vendorlib_ext' (defined at v.pol:1:17), which governs it; "
        "module 'com.vendor.library' cannot claim it too: a package is governed by one module"
    )
    assert e.notes[0].location == "v.pol:1:17"
    assert [name for name, _ in r.artifacts] == ["vendorlib_ext"]


def test_a_more_specific_claim_is_no_conflict():
    r = compile_sources([
        ("a.pol", VENDOR),
        ("b.pol", 'security module com.vendor.http { governs "vendorlib.http"; }\n'),
        ("c.pol", "security module vendorlib.auth { }\n"),
    ])
    assert errors(r) == []
    snap = Snapshot({name: link(read_artifact(data)) for name, data in r.artifacts})
    assert snap.governor("vendorlib.client") == "com.vendor.library"
    assert snap.governor("vendorlib.http.pool") == "com.vendor.http"
    assert snap.governor("vendorlib.auth.x") == "vendorlib.auth"
    assert snap.governor("vendorlib_ext") == "com.vendor.library"
    assert snap.governor("vendorlibx") is None


# -- code generation ------------------------------------------------------------


def test_compiled_into_a_1_2_artifact_that_verifies_and_links():
    r = compile_source(VENDOR, "v.pol")
    assert errors(r) == []
    data = r["com.vendor.library"]
    assert struct.unpack_from(">HH", data, 8) == (1, 2)
    payload = msgpack.unpackb(data[HEADER_SIZE:])
    assert list(payload) == [*opcodes.PAYLOAD_KEYS, "governs"]
    assert payload["governs"] == ["vendorlib", "vendorlib_ext"]
    art = read_artifact(data, expected_module="com.vendor.library")
    assert art.governs == ("vendorlib", "vendorlib_ext")
    m = link(art)
    assert m.governs == ("vendorlib", "vendorlib_ext")
    snap = Snapshot({m.name: m})
    assert snap.governor("vendorlib.client") == "com.vendor.library"
    assert snap.check(snap.governor("vendorlib.client"), "network.outbound", "api.vendor.com", 443).allowed


def test_several_statements_are_sorted_and_merged():
    r = compile_source('security module m { governs "zz"; governs "aa", "mm"; }', "t.pol")
    assert read_artifact(r["m"]).governs == ("aa", "mm", "zz")


def test_without_governs_the_artifact_is_the_1_1_bytes():
    """A source without governs compiles to what format 1.1 wrote: built here by hand from the 1.1
    specification (header minor 1, exactly the eight keys), not by the encoder under test."""
    text = 'security module tenant.acme {\n    entitle module to network.outbound("api.acme.com", 443);\n}\n'
    r = compile_source(text, "tenant.acme.pol")
    body = msgpack.packb({
        "module": "tenant.acme",
        "mode": "enforce",
        "compiler": __version__,
        "source": "tenant.acme.pol",
        "source_digest": hashlib.sha256(text.encode()).hexdigest(),
        "caps": [["network.outbound", [["host", "host"], ["port", "port"]]]],
        "consts": ["api.acme.com"],
        "code": [[opcodes.RULE, opcodes.ENTITLE, 0, 2, 5], [opcodes.HOST_EXACT, 0], [opcodes.INT_RANGE, 443, 443]],
    }, use_bin_type=True)
    digest = hashlib.sha256(MAGIC + struct.pack(">HH", 1, 1) + body).digest()
    expected = struct.pack(">8sHHIII32s", MAGIC, 1, 1, 0, len(body), 0, digest) + body
    assert r["tenant.acme"] == expected


# -- through the command line -----------------------------------------------------


def test_policies_src_through_polc_compile(tmp_path, polc_cmd):
    out = tmp_path / "out"
    p = subprocess.run([*polc_cmd, "compile", str(REPO / "policies-src"), "-o", str(out), "--force"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    arts = {f.name: read_artifact_file(f) for f in sorted(out.glob("*.bin"))}
    assert arts["com.vendor.library.bin"].governs == ("vendorlib",)
    assert arts["com.vendor.library.bin"].header.minor == 2
    # every other example uses no governs: format 1.1, as before the statement existed
    assert {n: (a.header.minor, a.governs) for n, a in arts.items() if n != "com.vendor.library.bin"} == {
        n: (1, ()) for n in arts if n != "com.vendor.library.bin"
    }
    # polc inspect shows it, as text and JSON
    p = subprocess.run([*polc_cmd, "inspect", str(out / "com.vendor.library.bin")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "format:        1.2  (magic" in p.stdout
    assert "\ngoverns:       vendorlib\n" in p.stdout
    p = subprocess.run([*polc_cmd, "inspect", "--json", str(out / "com.vendor.library.bin")],
                       capture_output=True, text=True, timeout=60)
    assert json.loads(p.stdout)["governs"] == ["vendorlib"]
    p = subprocess.run([*polc_cmd, "inspect", "--json", str(out / "tenant.acme.bin")],
                       capture_output=True, text=True, timeout=60)
    assert json.loads(p.stdout)["governs"] == [] and "governs" not in subprocess.run(
        [*polc_cmd, "inspect", str(out / "tenant.acme.bin")], capture_output=True, text=True, timeout=60
    ).stdout


def test_claim_conflict_through_polc_check_and_an_up_to_date_tree(write_tree, tmp_path, polc_cmd):
    src = write_tree({"vendor.pol": VENDOR, "acme.pol": "security module tenant.acme { }\n"})
    out = tmp_path / "out"
    p = subprocess.run([*polc_cmd, "compile", str(src), "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    # a new file claims the vendor's package; the vendor's file is unchanged (its artifact up to date),
    # and still the claim is seen: files with governs are always parsed
    (src / "evil.pol").write_text('security module tenant.evil {\n  governs "vendorlib_ext";\n}\n')
    p = subprocess.run([*polc_cmd, "compile", str(src), "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert f"{src}/vendor.pol:2:26: error: package 'vendorlib_ext' is claimed by two modules: " \
           f"'com.vendor.library' here and 'tenant.evil' at {src}/evil.pol:2:11;" in p.stderr
    assert f"{src}/evil.pol:2:11: error: package 'vendorlib_ext' is claimed by two modules" in p.stderr
    assert p.stderr.strip().endswith("failed 2")
    assert not (out / "tenant.evil.bin").exists()
    p = subprocess.run([*polc_cmd, "check", str(src)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "is claimed by two modules" in p.stderr and p.stdout == ""
