"""Bearer secrets (API tokens, enrollment tokens): generation and keyed hashing.

A secret is a prefix naming its kind plus 32 random bytes (URL-safe base64), shown once.
Only HMAC-SHA256(pepper, secret) is stored. Lookups go by that hash, so no stored value
is ever compared byte by byte against attacker input, and a leaked database alone lets
nobody test guesses (they would also need the pepper, which is not in the database).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

#: Random bytes per secret: 256 bits, beyond any guessing.
SECRET_BYTES: Final = 32
#: People's API tokens start with this, so secret scanners and humans can tell them apart.
API_TOKEN_PREFIX: Final = "fmtl_api_"  # noqa: S105 - a prefix, not a secret
#: Longest secret we even hash; anything longer is refused before any work is done.
MAX_SECRET_LENGTH: Final = 256


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(SECRET_BYTES)


def secret_hash(pepper: bytes, secret: str) -> str:
    """HMAC-SHA256 of the secret under the pepper, hex."""
    return hmac.new(pepper, secret.encode("utf-8"), hashlib.sha256).hexdigest()


def hashes_match(stored: str, computed: str) -> bool:
    """Constant-time comparison of two hashes."""
    return hmac.compare_digest(stored.encode("ascii"), computed.encode("ascii"))
