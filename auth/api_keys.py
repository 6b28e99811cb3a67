"""API keys: random secrets shown once, stored as SHA-256.

A key is `pgw_<8 chars>_<43 chars>` (256 random bits). SHA-256 rather than a password hash:
the secret has full entropy, so brute force is hopeless either way, and a slow hash would add
milliseconds to every request authenticated by a key.
"""

from __future__ import annotations

import hashlib
import secrets

from auth.credentials import API_KEY_PREFIX


def new_api_key() -> tuple[str, str]:
    """Return (key, prefix): the key to show once, the prefix to keep for listings."""
    prefix = API_KEY_PREFIX + secrets.token_hex(4)
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
