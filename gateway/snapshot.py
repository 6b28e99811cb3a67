"""The last-known-good snapshot (GATEWAY_SNAPSHOT_PATH, contract revision 3 "Scale-out").

After each route-table load the proxy's state (the loader's rows: routes, installations with
their ciphertexts, management assignments; the live API-key hashes; the cached users and
memberships) is written to one file: encrypted with the key ring's first key (any key of the ring
opens it), bound by its associated data to the schema's migration level, written to a temporary
file in the same directory, fsynced, renamed over the old one (so a reader never sees half a
file), owner-only (0600). A node that starts while PostgreSQL does not answer serves from it:
`/readyz` says `"source": "snapshot"` and its age; live data takes over as soon as PostgreSQL
answers. A snapshot of another migration level, or one no key opens, is not used (logged).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import orjson

from db.encryption import DecryptionError, KeyRing

log = logging.getLogger("gateway.snapshot")

FORMAT: Final = 1
# Row fields that are not strings in the loader's rows: restored to their types on read.
_UUIDS: Final = frozenset({"id", "service_id", "installation_id", "space_id", "instance_service_id",
                           "instance_id", "plugin_id"})
_TIMES: Final = frozenset({"updated_at", "assigned_at"})


class SnapshotUnusable(Exception):
    """The file is there but cannot be used: the reason, for the log and /readyz."""


def _aad(level: str) -> bytes:
    return f"gateway-snapshot|{FORMAT}|{level}".encode()


def _restore(row: dict[str, Any]) -> dict[str, Any]:
    for name in _UUIDS & row.keys():
        if row[name] is not None:
            row[name] = UUID(row[name])
    for name in _TIMES & row.keys():
        if row[name] is not None:
            row[name] = datetime.fromisoformat(row[name])
    return row


class Snapshot:
    def __init__(self, path: Path, keyring: KeyRing, level: str) -> None:
        self.path = path
        self.keyring = keyring
        self.level = level  # the newest migration this code knows: the schema the rows follow

    def write(self, payload: dict[str, Any]) -> float:
        """Write atomically (blocking: run it in a thread); the time written."""
        written_at = time.time()
        # default=str: asyncpg's own UUID type, which orjson does not know, becomes its text.
        envelope = self.keyring.seal({"payload": orjson.dumps(payload, default=str).decode()}, _aad(self.level))
        document = orjson.dumps({"format": FORMAT, "level": self.level, "written_at": written_at,
                                 "envelope": envelope})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(document)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
        return written_at

    def read(self) -> tuple[dict[str, Any], float] | None:
        """(payload, written_at); None when there is no file; SnapshotUnusable when unusable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SnapshotUnusable(f"cannot be read: {exc.strerror}") from None
        try:
            document = orjson.loads(raw)
            level, written_at, envelope = document["level"], float(document["written_at"]), document["envelope"]
            if document.get("format") != FORMAT:
                raise SnapshotUnusable(f"format {document.get('format')!r}, not {FORMAT}")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise SnapshotUnusable("is not a snapshot this gateway wrote") from None
        if level != self.level:
            raise SnapshotUnusable(f"was written at migration level {level}, this code is at {self.level}")
        try:
            payload = orjson.loads(self.keyring.open(envelope, _aad(level))["payload"])
        except (DecryptionError, KeyError, TypeError, orjson.JSONDecodeError):
            raise SnapshotUnusable("no key of GATEWAY_ENCRYPTION_KEYS opens it") from None
        for table in ("routes", "installations", "assignments"):
            payload[table] = [_restore(row) for row in payload.get(table, [])]
        return payload, written_at
