"""API keys: random secrets shown once, stored only as a hash.

A key is ``sk-el-`` followed by 43 URL-safe characters of 32 random bytes (256
bits). The store keeps its SHA-256 (a fast hash suffices for a secret of that
entropy: there is nothing to brute-force) and a short display prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

KEY_PREFIX = "sk-el-"
DISPLAY_CHARS = len(KEY_PREFIX) + 6


@dataclass(frozen=True)
class NewKey:
    key: str  # the secret: shown once, never stored
    key_id: str
    prefix: str
    hash: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> NewKey:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(key=key, key_id="key_" + uuid.uuid4().hex[:16], prefix=key[:DISPLAY_CHARS], hash=hash_key(key))


def same_hash(a: str, b: str) -> bool:
    """Constant-time comparison of two key hashes."""
    return hmac.compare_digest(a.encode(), b.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
