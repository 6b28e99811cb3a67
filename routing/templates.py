"""Route templates and upstream target URLs: parsed once, when a route table is built.

A template is `/` or `/seg/.../seg` where each segment is static text, a `{name}` parameter
(exactly one non-empty segment) or, as the last segment only, a `{name:path}` parameter (the
rest of the path: one or more segments, never the empty remainder, so `/files/{rest:path}`
does not match `/files` or `/files/`). Templates hold no empty segments, so a trailing slash
belongs to the request path: `/a/` does not match `/a` (like Starlette without
redirect_slashes); only a `{name:path}` parameter may capture one, verbatim.

A target URL is an absolute http(s) URL whose path may use the template's parameters as
`{name}` (or `{name:path}`). Captured values are inserted as received, still percent-encoded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

_NAME: Final = r"[A-Za-z_][A-Za-z0-9_]*"
_PARAMETER: Final = re.compile(rf"^\{{({_NAME})(:path)?\}}$")
_PLACEHOLDER: Final = re.compile(rf"\{{({_NAME})(?::path)?\}}")
_ABSOLUTE: Final = re.compile(r"^https?://[^/?#]", re.IGNORECASE)
_FRAGMENT_OR_SPACE: Final = re.compile(r"[#\s]")
_DOT_SEGMENTS: Final = frozenset({".", "..", "%2e", "%2e%2e", ".%2e", "%2e."})


class TemplateError(ValueError):
    """A route_path or target_url the table cannot serve; the message says why."""


def is_dot_segment(segment: str) -> bool:
    return segment.lower() in _DOT_SEGMENTS


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed route_path: `statics[i]` is the i-th segment's text, or None for a parameter."""

    statics: tuple[str | None, ...]
    names: tuple[str, ...]  # every parameter name in order, the rest parameter's last
    has_rest: bool


def parse_template(route_path: str) -> Template:
    if not route_path.startswith("/"):
        raise TemplateError(f"route_path {route_path!r} must start with '/'")
    if route_path == "/":
        return Template(statics=(), names=(), has_rest=False)
    segments = route_path[1:].split("/")
    statics: list[str | None] = []
    names: list[str] = []
    has_rest = False
    for index, segment in enumerate(segments):
        if segment == "" or is_dot_segment(segment):
            raise TemplateError(f"route_path {route_path!r} has an empty or dot segment")
        found = _PARAMETER.match(segment)
        if found is None:
            if "{" in segment or "}" in segment:
                raise TemplateError(f"route_path segment {segment!r} is neither static nor {{name}}")
            statics.append(segment)
            continue
        name, rest = found.groups()
        if name in names:
            raise TemplateError(f"route_path {route_path!r} repeats parameter {name!r}")
        names.append(name)
        if rest:
            if index != len(segments) - 1:
                raise TemplateError(f"route_path {route_path!r}: {{{name}:path}} must be last")
            has_rest = True
        else:
            statics.append(None)
    return Template(statics=tuple(statics), names=tuple(names), has_rest=has_rest)


@dataclass(frozen=True, slots=True)
class Target:
    """A target_url split at its placeholders: literal, name, literal, name, ..., literal."""

    pieces: tuple[str, ...]
    # How the caller's query joins the target's: "?" when the target has none, "&" after a
    # target query, "" when the target's query is empty or already ends with "&".
    query_joiner: str

    def render(self, params: Mapping[str, str], query_string: str) -> str:
        parts = list(self.pieces)
        for index in range(1, len(parts), 2):
            parts[index] = params[parts[index]]
        if query_string:
            parts.append(self.query_joiner)
            parts.append(query_string)
        return "".join(parts)


def compile_target(target_url: str, names: tuple[str, ...]) -> Target:
    """Check an absolute target against its template's parameter names and split it once."""
    if not _ABSOLUTE.match(target_url):
        raise TemplateError(f"target_url {target_url!r} is not an absolute http(s) URL")
    if _FRAGMENT_OR_SPACE.search(target_url):
        raise TemplateError(f"target_url {target_url!r} carries a fragment or whitespace")
    path_start = target_url.find("/", target_url.index("://") + 3)
    query_start = target_url.find("?")
    pieces: list[str] = []
    cursor = 0
    for found in _PLACEHOLDER.finditer(target_url):
        # A caller's value in the authority would choose the upstream host; in the query it
        # could add parameters. The API refuses both (422); a row that slipped past is dropped.
        if path_start < 0 or found.start() < path_start or 0 <= query_start < found.start():
            raise TemplateError(f"target_url {target_url!r} has a placeholder outside its path")
        if found.group(1) not in names:
            raise TemplateError(f"target_url placeholder {found.group(1)!r} is not in route_path")
        pieces += (target_url[cursor:found.start()], found.group(1))
        cursor = found.end()
    pieces.append(target_url[cursor:])
    if any("{" in p or "}" in p for p in pieces[::2]):
        raise TemplateError(f"target_url {target_url!r} has a malformed placeholder")
    if query_start < 0:
        joiner = "?"
    else:
        joiner = "" if target_url.endswith(("?", "&")) else "&"
    return Target(pieces=tuple(pieces), query_joiner=joiner)


def join_target(api_base_url: str | None, target_url: str) -> str:
    """An absolute target for a route: absolute targets unchanged, a relative one appended to
    the service's api_base_url keeping the base's path (`https://x/v1` + `/reports` →
    `https://x/v1/reports`). A query on the base comes before the target's own.
    """
    if _ABSOLUTE.match(target_url):
        return target_url
    if not target_url.startswith("/") or target_url.startswith("//"):
        # "//host/..." would be protocol-relative: the target would pick the host.
        raise TemplateError(f"target_url {target_url!r} is neither absolute nor a path from '/'")
    if api_base_url is None or not _ABSOLUTE.match(api_base_url):
        raise TemplateError(f"relative target_url {target_url!r} needs an absolute api_base_url")
    base = api_base_url.split("#", 1)[0]  # a fragment never reaches a server
    base, _, base_query = base.partition("?")
    path, _, target_query = target_url.partition("?")
    joined = base.rstrip("/") + path
    query = "&".join(q for q in (base_query, target_query) if q)
    if query or "?" in target_url:
        joined += "?" + query
    return joined
