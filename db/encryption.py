"""Credentials at rest: AES-256-GCM envelopes under a key ring with key ids.

Envelope stored in the JSONB column:
    {"v": 1, "kid": "k1", "nonce": b64, "ct": b64, "keys": ["client_id", ...]}
`keys` (the credential names, not their values) stays readable so responses can list
`credential_keys` without decrypting. The associated data binds the ciphertext to its table,
row id and field: copied into another row (another tenant's), it no longer decrypts.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENVELOPE_VERSION = 1
NONCE_BYTES = 12


class KeyRingError(ValueError):
    """GATEWAY_ENCRYPTION_KEYS is malformed (the message never contains key material)."""


class DecryptionError(Exception):
    """A ciphertext cannot be opened: unknown key id, tampered, or moved to another row."""


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def generate_key_ring_entry(key_id: str = "k1") -> str:
    return f"{key_id}:{_b64e(os.urandom(32))}"


def associated_data(table: str, row_id: UUID, column: str) -> bytes:
    return f"{table}/{row_id}/{column}".encode()


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The first key encrypts; every key decrypts (so keys can rotate)."""

    primary: str
    keys: dict[str, AESGCM] = field(repr=False)

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        keys: dict[str, AESGCM] = {}
        order: list[str] = []
        for position, entry in enumerate(filter(None, (e.strip() for e in spec.split(","))), 1):
            key_id, sep, encoded = entry.partition(":")
            if not sep or not key_id:
                raise KeyRingError(f"GATEWAY_ENCRYPTION_KEYS entry {position} is not key_id:base64url")
            try:
                raw = _b64d(encoded)
            except (binascii.Error, ValueError):
                raise KeyRingError(f"GATEWAY_ENCRYPTION_KEYS key {key_id!r} is not base64url") from None
            if len(raw) != 32:
                raise KeyRingError(f"GATEWAY_ENCRYPTION_KEYS key {key_id!r} must be 32 bytes, not {len(raw)}")
            if key_id in keys:
                raise KeyRingError(f"GATEWAY_ENCRYPTION_KEYS has key id {key_id!r} twice")
            keys[key_id] = AESGCM(raw)
            order.append(key_id)
        if not order:
            raise KeyRingError("GATEWAY_ENCRYPTION_KEYS is empty")
        return cls(order[0], keys)

    def seal(self, values: dict[str, Any], aad: bytes) -> dict[str, Any]:
        """Encrypt a credentials object; an empty object stays `{}` (nothing to protect)."""
        if not values:
            return {}
        nonce = os.urandom(NONCE_BYTES)  # fresh per encryption: GCM must never reuse one per key
        ciphertext = self.keys[self.primary].encrypt(nonce, orjson.dumps(values), aad)
        return {"v": ENVELOPE_VERSION, "kid": self.primary, "nonce": _b64e(nonce),
                "ct": _b64e(ciphertext), "keys": sorted(values)}

    def open(self, envelope: dict[str, Any] | None, aad: bytes) -> dict[str, Any]:
        if not envelope:
            return {}
        try:
            key = self.keys[envelope["kid"]]
            plaintext = key.decrypt(_b64d(envelope["nonce"]), _b64d(envelope["ct"]), aad)
        except (KeyError, TypeError, ValueError, InvalidTag, binascii.Error):
            raise DecryptionError("credentials cannot be decrypted for this row") from None
        values: dict[str, Any] = orjson.loads(plaintext)
        return values

    def needs_rotation(self, envelope: dict[str, Any] | None) -> bool:
        return bool(envelope and envelope.get("kid") != self.primary)


def credential_keys(envelope: dict[str, Any] | None) -> list[str]:
    """The names of the stored credentials, read without decrypting."""
    return list(envelope.get("keys", [])) if envelope else []
