"""The proxy's route table: built once from every live route, frozen, then only read.

Per service slug the table is a trie of path segments. Each node has static children, at most
one `{name}` child and at most one `{name:path}` terminal, so a match walks the request path
once (plus backtracking bounded by the path's shape), whatever the number of routes. The rules
are the contract's (see `match`); template syntax is in `routing.templates`.

The table is never mutated after `build`: the loader builds a new one and swaps the reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, NamedTuple
from uuid import UUID

from routing.templates import (
    Target, TemplateError, compile_target, is_dot_segment, join_target, parse_template,
)

__all__ = [
    "ANY_METHOD", "STANDARD_METHODS", "Match", "MethodNotAllowed", "NoRoute", "Rejected", "Route",
    "RouteTable", "TemplateError", "join_target",
]

ANY_METHOD: Final = "*"
# What a "*" route contributes to Allow: it serves any method, but Allow must list names.
STANDARD_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_METHOD: Final = re.compile(r"\*|[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token, or "*"


def _freeze(value: Any) -> Any:
    """JSON-shaped config made read-only, so a shared Route cannot be changed by one request."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _empty_mapping() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One service_api_routes row, with target_url already absolute (see `join_target`).

    auth_config and options are frozen (read-only mappings, lists as tuples) and left out of
    the hash; `dict(route.options)` gives a plain copy for serialising.
    """

    id: UUID
    service_id: UUID
    service_slug: str
    installation_id: UUID | None = None  # None: the route serves every installation
    route_path: str
    method: str  # an HTTP method, or "*" for any
    target_url: str
    auth_type: str | None = None
    auth_config: Mapping[str, Any] = field(default_factory=_empty_mapping, hash=False)
    rate_limit: int | None = None
    rate_limit_window: int | None = None
    cache_enabled: bool = False
    cache_ttl: int | None = None
    options: Mapping[str, Any] = field(default_factory=_empty_mapping, hash=False)
    version: str = ""  # changes whenever the row does (updated_at), for caches keyed on a route

    def __post_init__(self) -> None:
        object.__setattr__(self, "auth_config", _freeze(self.auth_config))
        object.__setattr__(self, "options", _freeze(self.options))


class NoRoute(Exception):
    """No route of the caller's set matches the path (or the slug is unknown): 404."""


class MethodNotAllowed(Exception):
    """The path matches, but no matching route takes the method: 405 with `Allow`."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        super().__init__(f"allowed: {', '.join(allowed)}")
        self.allowed = allowed


class Rejected(NamedTuple):
    """A route `build` left out, and why; the loader logs these instead of failing the table."""

    route: Route
    reason: str


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    params: dict[str, str] = field(hash=False)
    target: Target = field(repr=False, compare=False, hash=False)

    def upstream_url(self, query_string: str) -> str:
        """The target with the captured (still percent-encoded) values in its placeholders, and
        the caller's raw query string (without "?") appended after the target's own query."""
        return self.target.render(self.params, query_string)


@dataclass(frozen=True, slots=True)
class _Entry:
    route: Route
    names: tuple[str, ...]
    target: Target


class _Slot:
    """The routes of one template shape, by scope, then method."""

    __slots__ = ("service", "installations")

    def __init__(self) -> None:
        self.service: dict[str, _Entry] = {}
        self.installations: dict[UUID, dict[str, _Entry]] = {}

    def scopes(self, installation_id: UUID | None) -> tuple[dict[str, _Entry], ...]:
        """The caller's view, installation first so that its route wins a tie."""
        own = self.installations.get(installation_id) if installation_id is not None else None
        return (own, self.service) if own else (self.service,)

    def resolve(self, method: str, installation_id: UUID | None) -> _Entry | None:
        scopes = self.scopes(installation_id)
        # HTTP semantics: HEAD is GET without a body, so a GET route answers HEAD, but only
        # when the template has no route naming HEAD (or "*") itself.
        fallbacks = (method, ANY_METHOD, "GET") if method == "HEAD" else (method, ANY_METHOD)
        for candidate in fallbacks:
            for scope in scopes:
                if candidate in scope:
                    return scope[candidate]
        return None

    def methods(self, installation_id: UUID | None) -> set[str]:
        found: set[str] = set()
        for scope in self.scopes(installation_id):
            found.update(scope)
        if ANY_METHOD in found:
            found.discard(ANY_METHOD)
            found.update(STANDARD_METHODS)
        if "GET" in found:
            found.add("HEAD")  # served by the GET route, see resolve()
        return found


class _Node:
    __slots__ = ("static", "param", "rest", "slot")

    def __init__(self) -> None:
        self.static: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.rest: _Slot | None = None  # the {name:path} terminal below this node
        self.slot: _Slot | None = None  # routes whose template ends at this node


def _split(path: str) -> list[str]:
    if path in ("", "/"):
        return []
    # The gateway strips the query and refuses dot segments first; a path that still has
    # them matches nothing, so a captured value can never climb out of the target's path.
    if not path.startswith("/") or "?" in path or "#" in path:
        raise NoRoute(path)
    segments = path[1:].split("/")
    if any(is_dot_segment(s) for s in segments):
        raise NoRoute(path)
    return segments


def _walk(root: _Node, segments: list[str]) -> Iterator[tuple[_Slot, tuple[str, ...]]]:
    """Every template matching the path, most specific first: at each segment the static child,
    then the parameter, then the rest parameter, depth first with backtracking."""
    stack: list[tuple[_Node, int, tuple[str, ...], bool]] = [(root, 0, (), False)]
    while stack:
        node, index, values, at_rest = stack.pop()
        if at_rest:
            assert node.rest is not None
            yield node.rest, values + ("/".join(segments[index:]),)
            continue
        if index == len(segments):
            if node.slot is not None:
                yield node.slot, values
            continue
        segment = segments[index]
        if segment == "":  # "//" or a trailing "/": no template segment is empty
            continue
        # Pushed in reverse: the stack pops the static child first.
        if node.rest is not None:
            stack.append((node, index, values, True))
        if node.param is not None:
            stack.append((node.param, index + 1, values + (segment,), False))
        child = node.static.get(segment)
        if child is not None:
            stack.append((child, index + 1, values, False))


class RouteTable:
    """Immutable once built; build a new table to change routes."""

    __slots__ = ("_roots", "_routes", "_by_id", "rejected")

    def __init__(self, roots: dict[str, _Node], routes: tuple[Route, ...],
                 rejected: tuple[Rejected, ...]) -> None:
        self._roots = roots
        self._routes = routes
        self._by_id = {route.id: route for route in routes}
        self.rejected = rejected

    @classmethod
    def empty(cls) -> RouteTable:
        return cls({}, (), ())

    @classmethod
    def build(cls, routes: Iterable[Route]) -> RouteTable:
        """A table of every route that can be served. A route with a bad template or target, or
        one claiming a template shape, scope and method already taken (`/a/{x}` and `/a/{y}`),
        is left out and listed in `rejected`: one bad row must not take the proxy down. Input
        order does not matter: routes are sorted first, so the same rows give the same table."""
        roots: dict[str, _Node] = {}
        owners: dict[str, UUID] = {}
        kept: list[Route] = []
        rejected: list[Rejected] = []
        ordered = sorted(routes, key=lambda r: (r.service_slug, str(r.service_id), r.route_path,
                                                r.method, str(r.installation_id), str(r.id)))
        for route in ordered:
            if owners.setdefault(route.service_slug, route.service_id) != route.service_id:
                rejected.append(Rejected(route, "another service holds this slug"))
                continue
            try:
                reason = _insert(roots.setdefault(route.service_slug, _Node()), route)
            except TemplateError as exc:
                reason = str(exc)
            if reason is None:
                kept.append(route)
            else:
                rejected.append(Rejected(route, reason))
        return cls(roots, tuple(kept), tuple(rejected))

    @property
    def size(self) -> int:
        return len(self._routes)

    def __len__(self) -> int:
        return len(self._routes)

    def services(self) -> tuple[str, ...]:
        """The slugs with at least one route, sorted."""
        return tuple(sorted({route.service_slug for route in self._routes}))

    def routes(self, slug: str | None = None) -> tuple[Route, ...]:
        if slug is None:
            return self._routes
        return tuple(route for route in self._routes if route.service_slug == slug)

    def get(self, route_id: UUID) -> Route | None:
        return self._by_id.get(route_id)

    def match(self, slug: str, installation_id: UUID | None, method: str, path: str) -> Match:
        """The route for a proxied request. `path` is the raw (percent-encoded) path after
        `/plugins/{slug}`, without the query; "" means "/". The candidates are the service's
        routes plus those of `installation_id`; other installations' routes are invisible.

        The first template in `_walk` order with a route for the method wins: on one template
        an exact method beats "*" (HEAD then falls back to GET), and the installation's route
        beats the service's. Methods are compared as given (RFC 9110: case-sensitive).
        Raises NoRoute, or MethodNotAllowed listing the methods of every matching template.
        """
        root = self._roots.get(slug)
        if root is None:
            raise NoRoute(slug)
        allowed: set[str] = set()
        for slot, values in _walk(root, _split(path)):
            entry = slot.resolve(method, installation_id)
            if entry is not None:
                return Match(entry.route, dict(zip(entry.names, values)), entry.target)
            allowed |= slot.methods(installation_id)
        if allowed:
            raise MethodNotAllowed(tuple(sorted(allowed)))
        raise NoRoute(path)

    def allowed(self, slug: str, installation_id: UUID | None, path: str) -> tuple[str, ...]:
        """The methods of every template matching the path, in the caller's set (what `Allow`
        lists, `*` routes contributing STANDARD_METHODS), sorted. Raises NoRoute."""
        root = self._roots.get(slug)
        if root is None:
            raise NoRoute(slug)
        found: set[str] = set()
        for slot, _ in _walk(root, _split(path)):
            found |= slot.methods(installation_id)
        if not found:  # as in `match`: a template with only other installations' routes is no match
            raise NoRoute(path)
        return tuple(sorted(found))


def _insert(root: _Node, route: Route) -> str | None:
    """Place a route in its service's trie; the reason it cannot be placed, or None."""
    template = parse_template(route.route_path)
    target = compile_target(route.target_url, template.names)
    if not _METHOD.fullmatch(route.method):
        return f"method {route.method!r} is not an HTTP method token"
    node = root
    for static in template.statics:
        if static is None:
            node.param = node.param or _Node()
            node = node.param
        else:
            node = node.static.setdefault(static, _Node())
    if template.has_rest:
        node.rest = node.rest or _Slot()
        slot = node.rest
    else:
        node.slot = node.slot or _Slot()
        slot = node.slot
    if route.installation_id is None:
        scope = slot.service
    else:
        scope = slot.installations.setdefault(route.installation_id, {})
    taken = scope.get(route.method)
    if taken is not None:
        return f"shadowed by route {taken.route.id} ({taken.route.route_path} {taken.route.method})"
    scope[route.method] = _Entry(route, template.names, target)
    return None
