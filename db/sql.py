"""Compose INSERT/UPDATE statements from column names that come from our own models.

Writes take a varying subset of columns (a PATCH names only what changes, and an INSERT must
leave out what it does not set so the column default applies). Identifiers are checked against
a strict pattern; values always travel as parameters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from db.errors import Conflict, NotFound

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def _ident(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a column name: {name!r}")
    return name


def insert(table: str, values: Mapping[str, Any], returning: str = "*") -> tuple[str, list[Any]]:
    columns = [_ident(c) for c in values]
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    sql = f"INSERT INTO public.{_ident(table)} ({', '.join(columns)}) VALUES ({placeholders}) RETURNING {returning}"
    return sql, list(values.values())


def update(table: str, values: Mapping[str, Any], where: Iterable[str], where_args: Iterable[Any],
           returning: str = "*") -> tuple[str, list[Any]]:
    """`where` are conditions with placeholders numbered from 1; SET values follow them."""
    where_args = list(where_args)
    offset = len(where_args)
    sets = [f"{_ident(c)} = ${offset + i}" for i, c in enumerate(values, 1)]
    if not sets:  # nothing to change: still return the row (and 404 if it is not there)
        sets = ["id = id"]
    sql = f"UPDATE public.{_ident(table)} SET {', '.join(sets)} WHERE {' AND '.join(where)} RETURNING {returning}"
    return sql, where_args + list(values.values())


async def update_one(conn: asyncpg.Connection, table: str, values: Mapping[str, Any], where: Iterable[str],
                     where_args: Iterable[Any], *, missing: str, duplicate: str | None = None) -> dict[str, Any]:
    """Update one row and return it; no row → NotFound(missing); a unique clash → Conflict(duplicate)."""
    statement, args = update(table, values, where, where_args)
    try:
        row = await conn.fetchrow(statement, *args)
    except asyncpg.UniqueViolationError:
        if duplicate is None:
            raise
        raise Conflict(duplicate) from None
    if row is None:
        raise NotFound(missing)
    return dict(row)
