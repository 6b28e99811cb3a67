"""Read the proxy target from the raw request line, refusing ambiguous paths.

The raw path is used, never aiohttp's decoded and normalized one: `%2F` decoded or `..`
resolved would let `/plugins/a/..%2Fb/x` reach plugin b's routes under plugin a's checks.

A segment is refused (400) when any server down the line could take it for `.` or `..`: as
written, percent-decoded (once or again: `%252e`), and with a `;` path parameter removed before
or after decoding (Tomcat and other servlet containers drop `;...` from a segment and then
resolve `..;` as `..`, so `/files/..;/..;/admin` would climb out of the route's path).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote
from uuid import UUID

from gateway.api.fields import SLUG_PATTERN
from gateway.errors import BadRequest, NotFound

PREFIX = "/spaces/"
_SLUG = re.compile(SLUG_PATTERN)
# Encoded "/" and "\" change what a segment is; NUL has no business in a path.
_AMBIGUOUS = re.compile(r"%(2f|5c|00)|\\", re.IGNORECASE)
_DOTS: Final = frozenset({".", ".."})
# Rounds of percent-decoding considered: one for the upstream, more for servers that decode twice.
_DECODINGS: Final = 3


def _dotty(form: str) -> bool:
    # After a second decoding a segment may hold "/" or "\\" (from %252f, %255c): each piece counts.
    for piece in re.split(r"[/\\]", form):
        if piece in _DOTS or piece.partition(";")[0] in _DOTS:
            return True
    return False


def climbs(segment: str) -> bool:
    """Whether a raw path segment is, or may be read as, `.` or `..` (see the module's docstring)."""
    if "." not in segment and "%" not in segment:
        return False  # the common case, decided at once
    form = segment
    for _ in range(_DECODINGS):
        if _dotty(form):
            return True
        decoded = unquote(form)
        if decoded == form:
            return False
        form = decoded
    # Decoded as often as any server would; still encoded beyond that is too deep to judge.
    return _dotty(form) or unquote(form) != form


def _unambiguous(raw_path: str) -> str:
    """The path without its query; 400 for encoded slashes and (possible) dot segments."""
    path = raw_path.split("?", 1)[0]
    if _AMBIGUOUS.search(path) or any(climbs(s) for s in path.split("/")):
        raise BadRequest("Encoded slashes and dot segments are not allowed in plugin paths")
    return path


def parse_target(raw_path: str) -> tuple[UUID, str, str]:
    """`/spaces/{space_id}/plugins/{slug}{path}` → (space_id, slug, path starting with "/")."""
    path = _unambiguous(raw_path)
    parts = path[len(PREFIX):].split("/", 3) if path.startswith(PREFIX) else []
    if len(parts) < 3 or parts[1] != "plugins":
        raise NotFound("No such resource")
    try:
        space_id = UUID(parts[0])
    except ValueError:
        raise NotFound("No such space") from None
    slug = parts[2]
    if not _SLUG.fullmatch(slug):
        raise NotFound("No such plugin")
    return space_id, slug, "/" + parts[3] if len(parts) == 4 else "/"


def parse_manage_target(raw_path: str) -> tuple[UUID, UUID, str]:
    """`/spaces/{space_id}/instance-services/{id}/manage{path}` → (space_id, instance service id,
    path starting with "/"), with the same refusals as parse_target."""
    path = _unambiguous(raw_path)
    parts = path[len(PREFIX):].split("/", 4) if path.startswith(PREFIX) else []
    if len(parts) < 4 or parts[1] != "instance-services" or parts[3] != "manage":
        raise NotFound("No such resource")
    try:
        space_id, instance_service_id = UUID(parts[0]), UUID(parts[2])
    except ValueError:
        raise NotFound("No such instance service") from None
    return space_id, instance_service_id, "/" + parts[4] if len(parts) == 5 else "/"
