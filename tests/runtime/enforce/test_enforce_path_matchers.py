"""The path-glob matchers without a regex (matchers._path_glob) answer as patterns.path_matcher.

``dir/**``, literal paths, ``**/L/**`` and ``**/L`` (literal segments L, e.g. the
common deny ``**/.ssh/**``) are tested with string operations; every value a
matcher sees is a normalised path (patterns.normalize_path), so the property is
checked over normalised paths built from segments that overlap the constants.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from polc.runtime import patterns
from polc.runtime.enforce.matchers import _path_glob

SEGMENTS = ["a", "b", "ab", "ba", ".ssh", "x.ssh", ".sshx", "a.b", "\n", "é", ".", "..", "", "*"]
CONSTS = ["**/.ssh/**", "**/a/**", "**/a/b/**", "**/a", "**/a/b", "**/ab", "a/**", "a/b", "**/*/a", "**/a*/**",
          "**/**/a", "**/**"]


@st.composite
def normalised(draw):
    raw = "/".join(draw(st.lists(st.sampled_from(SEGMENTS), max_size=7)))
    try:
        return patterns.normalize_path(raw)
    except ValueError:
        return ""


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(CONSTS), normalised())
def test_path_glob_matchers_agree_with_the_regex(const, path):
    assert bool(_path_glob(const)(path)) == bool(patterns.path_matcher(const)(path)), (const, path)


def test_the_segment_shapes_take_no_regex():
    assert _path_glob("**/.ssh/**").__name__ == "segments_in"
    assert _path_glob("**/a/b").__name__ == "segments_end"
    assert _path_glob("**/a*/**").__name__ == "match"  # a wildcard inside: the regex
