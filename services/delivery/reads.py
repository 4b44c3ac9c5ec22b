"""delivery's hot read path: the cache reads sites hammer (`GET /v1/latest`, `/v1/stories/{uri}`,
`/v1/sections`) answered as plain ASGI from the stored bytes — no dependency solving, no
validation models, no re-serialising. The FastAPI routes stay the contract (OpenAPI, errors)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from services.delivery.domain import StoryCache, fingerprint, page_fingerprint
from shared.http import Problem, problem_response

LATEST_LIMIT_DEFAULT = 20
LATEST_LIMIT_MAX = 100
SECTION_MAX_LENGTH = 64
# A cursor as `latest` hands it out (repr of a float); anything fancier goes to the validator.
_CURSOR = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def latest_body(stories: list[bytes], cursor: float | None) -> bytes:
    """`{"items": [Story…], "next": "<cursor>" | null}` from the stored story bytes."""
    tail = b'],"next":' + (json.dumps(repr(cursor)).encode() if cursor else b"null") + b"}"
    return b'{"items":[' + b",".join(stories) + tail


def sections_body(sections: list[dict[str, Any]]) -> bytes:
    return json.dumps({"items": sections}).encode()


def matches(etag: str, if_none_match: str | None) -> bool:
    """Whether a conditional GET may be answered `304 Not Modified` (weak comparison)."""
    if not if_none_match:
        return False
    return etag in {t.strip().removeprefix("W/") for t in if_none_match.split(",")}


def cache_headers(etag: str, max_age: int) -> dict[str, str]:
    return {"ETag": etag, "Cache-Control": f"public, max-age={max_age}"}


def latest_query(query: bytes) -> tuple[str | None, int, float | None] | None:
    """`section`, `limit`, `before` of a well-formed `/v1/latest` query; None for anything else
    (left to the FastAPI route, which answers exactly as the API documents)."""
    section: str | None = None
    limit = LATEST_LIMIT_DEFAULT
    before: float | None = None
    seen: set[str] = set()
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name in seen:
            return None
        seen.add(name)
        if name == "section":
            if len(value) > SECTION_MAX_LENGTH:
                return None
            section = value.lower() or None
        elif name == "limit":
            if not (value.isascii() and value.isdigit()):
                return None
            limit = int(value)
            if not 1 <= limit <= LATEST_LIMIT_MAX:
                return None
        elif name == "before":
            if not _CURSOR.fullmatch(value):
                return None
            before = float(value)
        else:
            return None
    return section, limit, before


async def _unknown_story(uri: str, send: Send) -> None:
    """The story route's 404, byte for byte (`shared.http.problem_response`)."""
    response = problem_response(Problem(404, "unknown_story", f"no live story with uri {uri}"))
    await send({"type": "http.response.start", "status": 404, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class CacheReads:
    """ASGI middleware answering well-formed cache reads itself. Anything else — other paths and
    methods, parameters the validator must judge — goes on to the app; a story that is not there
    gets the route's 404 here. Sits inside the request metrics, so those reads are timed and
    traced as before."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_age: int,
        on_story_hit: Callable[[], None],
        on_story_miss: Callable[[], None],
    ) -> None:
        self.app = app
        self._cache_control = f"public, max-age={max_age}".encode()
        self._on_story_hit = on_story_hit
        self._on_story_miss = on_story_miss
        self._routes: dict[str, Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        deps = getattr(scope["app"].state, "deps", None)
        cache: StoryCache | None = getattr(deps, "cache", None)
        path: str = scope["path"]
        body: bytes | None = None
        etag = ""
        if cache is None:
            pass
        elif path == "/v1/latest":
            query = latest_query(scope["query_string"])
            if query is not None:
                stories, cursor = await cache.latest_tagged(*query)
                body = latest_body([s.body for s in stories], cursor)
                etag = page_fingerprint(stories, cursor)
        elif path.startswith("/v1/stories/") and len(path) > len("/v1/stories/"):
            uri = path[len("/v1/stories/") :]
            found = await cache.story_tagged(uri)
            path = "/v1/stories/{uri:path}"
            if found is None:
                # Sites poll for a story until it is there: the route's 404, without the route.
                self._on_story_miss()
                scope["route"] = self._route(scope, path)
                await _unknown_story(uri, send)
                return
            self._on_story_hit()
            body, etag = found
        elif path == "/v1/sections" and not scope["query_string"]:
            body = sections_body(await cache.sections())
            etag = fingerprint(body)
        if body is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route(scope, path)
        await self._answer(scope, body, etag, send)

    async def _answer(self, scope: Scope, body: bytes, etag: str, send: Send) -> None:
        if_none_match = b",".join(v for k, v in scope["headers"] if k == b"if-none-match")
        headers = [(b"etag", etag.encode()), (b"cache-control", self._cache_control)]
        if matches(etag, if_none_match.decode("latin-1")):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers += [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _route(self, scope: Scope, path: str) -> Any:
        """The app's own route for `path` (what request metrics label by)."""
        if self._routes is None:
            self._routes = {getattr(r, "path", ""): r for r in scope["app"].routes}
        return self._routes.get(path)
