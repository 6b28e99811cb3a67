"""Keyset (cursor) pagination: pages stay stable while rows are inserted.

A cursor is the sort key of the last row of the previous page, so a row inserted meanwhile
either sorts after it (and shows up on a later page) or before it (and is simply not seen);
no row is skipped or repeated, as they would be with OFFSET.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import orjson

from db.errors import Invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int = DEFAULT_LIMIT
    after: tuple[datetime, UUID] | None = None

    @property
    def after_time(self) -> datetime | None:
        return self.after[0] if self.after else None

    @property
    def after_id(self) -> UUID | None:
        return self.after[1] if self.after else None


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def encode_cursor(at: datetime, row_id: UUID) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([at.isoformat(), str(row_id)])).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The (sort time, id) a cursor of `encode_cursor` holds; anything else is Invalid("cursor").

    A cursor is caller input like any other: every shape a crafted one may take (not base64, not
    JSON, not a pair of strings, a time without offset or outside what PostgreSQL's timestamptz
    and Python's datetime both hold) answers 422 naming `cursor`, never reaches the database.
    """
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise ValueError("not a pair of strings")
        at = datetime.fromisoformat(value[0])
        if at.tzinfo is None:
            raise ValueError("no UTC offset")
        at = at.astimezone(timezone.utc)  # year 1 at +01:00 is year 0: OverflowError
        if not 1 < at.year < 9999:
            raise ValueError("out of range")
        return at, UUID(value[1])
    except (binascii.Error, ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise Invalid("cursor", "is not a cursor this API issued") from None


def page_request(limit: int | None, cursor: str | None) -> PageRequest:
    limit = DEFAULT_LIMIT if limit is None else min(limit, MAX_LIMIT)  # above the maximum: clamped
    if limit < 1:
        raise Invalid("limit", "must be at least 1")
    return PageRequest(limit, decode_cursor(cursor) if cursor else None)


def page(rows: list[dict[str, Any]], request: PageRequest, *, sort_key: str = "created_at") -> dict[str, Any]:
    """Cut the limit+1 rows a query fetched into `{"items", "next_cursor"}`."""
    items = rows[: request.limit]
    more = len(rows) > request.limit
    # A NULL sort time (the seed's columns are nullable; the host platform may write rows) sorts
    # as the epoch: the queries order by COALESCE(column, 'epoch') so that the cursor holds too.
    next_cursor = encode_cursor(items[-1][sort_key] or EPOCH, items[-1]["id"]) if more else None
    return {"items": items, "next_cursor": next_cursor}


@dataclass(frozen=True, slots=True)
class IdPageRequest:
    """Newest first by a bigint id (the audit log): the next page holds the rows below `before`."""

    limit: int = DEFAULT_LIMIT
    before: int | None = None


BIGINT_MAX = 2**63 - 1


def encode_id_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([row_id])).rstrip(b"=").decode()


def decode_id_cursor(cursor: str) -> int:
    """The id a cursor of `encode_id_cursor` holds; anything else is Invalid("cursor")."""
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (isinstance(value, list) and len(value) == 1 and type(value[0]) is int and 1 <= value[0] <= BIGINT_MAX):
            raise ValueError("not a list of one id")
        return int(value[0])
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise Invalid("cursor", "is not a cursor this API issued") from None


def id_page_request(limit: int | None, cursor: str | None) -> IdPageRequest:
    base = page_request(limit, None)
    return IdPageRequest(base.limit, decode_id_cursor(cursor) if cursor else None)


def id_page(rows: list[dict[str, Any]], request: IdPageRequest) -> dict[str, Any]:
    """`{"items", "next_cursor"}` from the limit+1 rows a newest-first query fetched."""
    items = rows[: request.limit]
    more = len(rows) > request.limit
    return {"items": items, "next_cursor": encode_id_cursor(items[-1]["id"]) if more else None}
