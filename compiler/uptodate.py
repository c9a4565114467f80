"""Is an artifact in the output directory the one this compiler would write now?

Up to date means: ``OUT/NAME.bin`` passes the runtime's envelope checks
(``format.header.read_envelope``: a valid header, exactly the length it
declares, the payload digest it declares), and its payload records the same
module, compiler version, source name and source digest; every capability
signature it carries is still the current one (a declaration elsewhere in
the tree may have changed); and it is signed by the key given (by no key
without one).

The bytecode is not verified again here (10,000 artifacts must be checked in
well under 2 s): the runtime verifies at load, and an artifact recording this
source digest and compiler version came from this compiler. Any problem means
"rebuild".

A file in the output directory is as hostile as any input, so its payload is
read with the runtime's ``format.payload.read_fields``: only the five fields
compared are built, each checked to be of its type first (a string, an array
within the format's count read a window at a time), and every other value is
skipped without being built; memory stays a small multiple of the file's size
whatever it holds. A payload that the runtime's reader would refuse at its top
level (a key given twice, bytes after the map) means "rebuild", which is
conservative: this compiler never writes one.
"""

from __future__ import annotations

from typing import Any

from polc import __version__
from polc.runtime.errors import ArtifactError
from polc.runtime.format.header import read_envelope
from polc.runtime.format.payload import read_fields
from polc.runtime.format.reader import read_artifact_bytes
from polc.runtime.signing import signer_key_id

from .checker import Declarations

__all__ = ["up_to_date"]

_FIELDS = ("module", "compiler", "source", "source_digest", "caps")
"""The payload's fields the check compares."""


def up_to_date(
    path: str, module: str, source: str, digest: str, decls: Declarations, signer: str | None = None
) -> bool:
    """Does ``path`` hold the artifact this compiler would write for ``module`` now?"""
    try:
        envelope = read_envelope(read_artifact_bytes(path))
        p = read_fields(envelope.payload, _FIELDS)
    except ArtifactError:
        return False
    return (
        p.get("module") == module
        and p.get("compiler") == __version__
        and p.get("source") == source
        and p.get("source_digest") == digest
        and _caps_current(p.get("caps", ()), decls)
        and signer_key_id(envelope.data) == signer
    )


def _caps_current(caps: Any, decls: Declarations) -> bool:
    """Is every ``[name, [[param, type], ...]]`` still the signature polc would write?"""
    try:
        for name, params in caps:
            current = decls.lookup(name)
            if current is None or [(p.name, p.type) for p in current.params] != [tuple(x) for x in params]:
                return False
    except (TypeError, ValueError):
        return False
    return True
