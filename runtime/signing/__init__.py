"""Ed25519-signed artifacts, trust configuration and the policy directory guard.

The threat model is in docs/security.md. The package has four parts:

    block.py        the signature block a signed artifact carries as its trailer;
                    sign_artifact, signer_key_id, describe_trailer (no cryptography needed)
    keys.py         SigningKey, key ids, key files (polc keygen, polc compile --sign)
    trust.py        TrustConfig: the keys an agent trusts, each for a set of module
                    patterns; TrustConfig.verify is what the artifact reader calls
    permissions.py  the start-up check that warns when someone other than root or
                    the agent's own user can change the policies

``cryptography`` (the ``sign`` extra) is imported lazily inside the functions
that need it, so ``import polc.runtime.signing`` keeps needing msgpack alone.
When signatures must be checked and it is missing,
:class:`SigningUnavailableError` says how to install it.

The names below are the package's API; the exception classes live in
``polc.runtime.errors``.
"""

from __future__ import annotations

from ..errors import (
    BadSignatureError,
    KeyFileError,
    KeyScopeError,
    SignatureError,
    SigningUnavailableError,
    TrustConfigError,
    UnknownKeyError,
    UnsignedArtifactError,
)
from .block import (
    BLOCK_VERSION,
    MAX_KEY_ID_LEN,
    SIGNATURE_LEN,
    TRAILER_LEN,
    SignatureBlock,
    describe_trailer,
    encode_signature_block,
    parse_signature_block,
    sign_artifact,
    signer_key_id,
)
from .keys import (
    KEY_ID_LEN,
    PUBLIC_KEY_LEN,
    SigningKey,
    generate_signing_key,
    key_id_for,
    load_public_key,
    load_signing_key,
    write_key_pair,
)
from .permissions import check_directory_permissions, check_file_permissions
from .trust import TrustConfig, TrustedKey, module_pattern_matches

__all__ = [
    "BLOCK_VERSION",
    "KEY_ID_LEN",
    "MAX_KEY_ID_LEN",
    "PUBLIC_KEY_LEN",
    "SIGNATURE_LEN",
    "TRAILER_LEN",
    "BadSignatureError",
    "KeyFileError",
    "KeyScopeError",
    "SignatureBlock",
    "SignatureError",
    "SigningKey",
    "SigningUnavailableError",
    "TrustConfig",
    "TrustConfigError",
    "TrustedKey",
    "UnknownKeyError",
    "UnsignedArtifactError",
    "check_directory_permissions",
    "check_file_permissions",
    "describe_trailer",
    "encode_signature_block",
    "generate_signing_key",
    "key_id_for",
    "load_public_key",
    "load_signing_key",
    "module_pattern_matches",
    "parse_signature_block",
    "sign_artifact",
    "signer_key_id",
    "write_key_pair",
]
