"""Re-encrypt every stored credential under the key ring's first key.

Row by row, each in its own short transaction, and only if the row still holds the envelope
that was read (a concurrent API write wins). Interrupting it leaves every row either still under
its old key or under the new one; both decrypt while the old key stays in the ring, and running
it again picks up where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from db.encryption import KeyRing, associated_data

BATCH = 200

# (table, column, JSON path inside the column or None) of everything sealed with the key ring.
SEALED = (
    ("service_installations", "credentials", None),
    ("service_management_assignments", "credentials", None),
    ("infrastructure_instances", "connection_config", "secrets"),
)


@dataclass(frozen=True, slots=True)
class Rotated:
    table: str
    rotated: int


# Every space's rows, so through SECURITY DEFINER functions owned by gateway_rotator (migration
# 20250101000900_roles_and_row_security.sql), which may read and write the sealed columns only.
NEXT_BATCH = "SELECT id, value FROM public.gateway_sealed_batch($1, $2, $3::uuid, $4)"
RESEAL = "SELECT public.gateway_reseal($1, $2, $3, $4)"


async def rotate(conn: asyncpg.Connection, keyring: KeyRing) -> list[Rotated]:
    results = []
    for table, column, member in SEALED:
        aad_column = f"{column}.{member}" if member else column
        count, after = 0, "00000000-0000-0000-0000-000000000000"
        while rows := await conn.fetch(NEXT_BATCH, table, keyring.primary, after, BATCH):
            for row in rows:
                value: dict[str, Any] = row["value"]
                envelope = value[member] if member else value
                aad = associated_data(table, row["id"], aad_column)
                resealed = keyring.seal(keyring.open(envelope, aad), aad)
                new_value = {**value, member: resealed} if member else resealed
                if await conn.fetchval(RESEAL, table, row["id"], new_value, value):
                    count += 1
            after = str(rows[-1]["id"])
        results.append(Rotated(table, count))
    return results
