"""Read the proxy target from the raw request line, refusing ambiguous paths.

The raw path is used, never aiohttp's decoded and normalized one: `%2F` decoded or `..`
resolved would let `/plugins/a/..%2Fb/x` reach plugin b's routes under plugin a's checks.
"""

from __future__ import annotations

import re
from uuid import UUID

from gateway.api.fields import SLUG_PATTERN
from gateway.errors import BadRequest, NotFound
from routing.templates import is_dot_segment

PREFIX = "/spaces/"
_SLUG = re.compile(SLUG_PATTERN)
# Encoded "/" and "\" change what a segment is; NUL has no business in a path.
_AMBIGUOUS = re.compile(r"%(2f|5c|00)|\\", re.IGNORECASE)


def parse_target(raw_path: str) -> tuple[UUID, str, str]:
    """`/spaces/{space_id}/plugins/{slug}{path}` → (space_id, slug, path starting with "/")."""
    path = raw_path.split("?", 1)[0]
    if _AMBIGUOUS.search(path) or any(is_dot_segment(s) for s in path.split("/")):
        raise BadRequest("Encoded slashes and dot segments are not allowed in plugin paths")
    parts = path[len(PREFIX):].split("/", 3)
    if len(parts) < 3 or parts[1] != "plugins":
        raise NotFound("No such resource")
    try:
        space_id = UUID(parts[0])
    except ValueError:
        raise NotFound("No such space") from None
    slug = parts[2]
    if not _SLUG.match(slug):
        raise NotFound("No such plugin")
    return space_id, slug, "/" + parts[3] if len(parts) == 4 else "/"
