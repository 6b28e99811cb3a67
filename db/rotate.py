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


def _select(table: str, column: str, member: str | None) -> str:
    envelope = f"{column}->'{member}'" if member else column
    return (f"SELECT id, {column} AS value FROM public.{table} "
            f"WHERE {envelope} ? 'kid' AND {envelope}->>'kid' <> $1 AND id > $2 ORDER BY id LIMIT {BATCH}")


def _update(table: str, column: str) -> str:
    return f"UPDATE public.{table} SET {column} = $2 WHERE id = $1 AND {column} = $3"


async def rotate(conn: asyncpg.Connection, keyring: KeyRing) -> list[Rotated]:
    results = []
    for table, column, member in SEALED:
        aad_column = f"{column}.{member}" if member else column
        count, after = 0, "00000000-0000-0000-0000-000000000000"
        while rows := await conn.fetch(_select(table, column, member), keyring.primary, after):
            for row in rows:
                value: dict[str, Any] = row["value"]
                envelope = value[member] if member else value
                aad = associated_data(table, row["id"], aad_column)
                resealed = keyring.seal(keyring.open(envelope, aad), aad)
                new_value = {**value, member: resealed} if member else resealed
                if await conn.execute(_update(table, column), row["id"], new_value, value) == "UPDATE 1":
                    count += 1
            after = str(rows[-1]["id"])
        results.append(Rotated(table, count))
    return results
