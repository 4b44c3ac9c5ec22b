"""ingest's rules: what an accepted article version is, who may send it, how its text is made
safe. No I/O."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import itertools
import re
import secrets
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import nh3

from shared.events import Article, EventMeta, EventType, encode, event_type_for

# What a story body may keep: paragraphs, links, lists, emphasis, headings, figures and images.
ALLOWED_TAGS = {
    "p", "br", "a", "ul", "ol", "li", "em", "strong", "b", "i", "blockquote",
    "h2", "h3", "h4", "h5", "h6", "figure", "figcaption", "img",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title", "width", "height"}}


# Built once: a Cleaner keeps the allowlist on the Rust side instead of converting it per call.
_SANITISER = nh3.Cleaner(
    tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes={"http", "https"}
)


def sanitise_html(body_html: str) -> str:
    return _SANITISER.clean(body_html)


# nh3's output is normalised (lower-case tags, `<br>`), so a plain pattern finds every block end.
_BLOCK_END = re.compile(r"</(?:p|li|h[2-6]|blockquote|figcaption|figure|ul|ol)>|<br>")
_TAG = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")
_ODD_SPACE = re.compile(r"[\u00a0\u2000-\u200a\u3000]")


def html_to_text(body_html: str) -> str:
    """The plain text of a sanitised body: one paragraph per line, entities decoded."""
    text = _TAG.sub("", _BLOCK_END.sub("\n", body_html))
    if "&" in text:
        text = html.unescape(text)
    if "  " in text or "\t" in text or (not text.isascii() and _ODD_SPACE.search(text)):
        text = _SPACES.sub(" ", text)
    return "\n".join(filter(None, (line.strip(" ") for line in text.split("\n"))))


# C0/C1 controls (except tab and newline), lone surrogates and the two noncharacters that
# break XML and many parsers: nothing of these is ever passed on.
_UNWANTED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def clean_text(text: str) -> str:
    """NFC text without control characters or invalid code points; CR/CRLF become LF."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _UNWANTED.search(text):
        text = _UNWANTED.sub("", text)
    return text if text.isascii() else unicodedata.normalize("NFC", text)


# What a JSON text that `clean_payload` could change must hold: a non-ASCII byte (NFC; C1
# controls; U+FFFE), DEL, or an escape of a character it drops or changes (\u, \r, \b, \f).
# Other control characters cannot stand unescaped in a JSON string. The escapes are found in one
# search, and only in a text with a backslash at all (one byte is a memchr; each search for a
# two-byte string scanned ~1 ns a byte: 18 µs of a 3 KB request went in four of them).
_CLEANED_ESCAPE = re.compile(rb"\\[urbf]")


def needs_cleaning(json_text: bytes) -> bool:
    """False when `clean_payload` leaves the document `json_text` holds as it is (most partner
    copy: ASCII, no escapes but quotes, backslashes, tabs and newlines)."""
    if not json_text.isascii() or b"\x7f" in json_text:
        return True
    return b"\\" in json_text and _CLEANED_ESCAPE.search(json_text) is not None


def clean_payload(value: Any) -> Any:
    """`clean_text` applied to every string (keys too) of a decoded JSON document."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k): clean_payload(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_payload(v) for v in value]
    return value


# --- checks beyond the contract's types ---------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass(frozen=True)
class Limits:
    max_headline_chars: int = 300
    max_batch_items: int = 500


class TooLarge(Exception):
    """A limit was passed (HTTP 413); `errors` names the field."""

    def __init__(self, detail: str, errors: Sequence[FieldError]) -> None:
        super().__init__(detail)
        self.errors = list(errors)


def check_limits(article: Article, limits: Limits) -> None:
    if len(article.headline) > limits.max_headline_chars:
        raise TooLarge(
            f"headline exceeds {limits.max_headline_chars} characters",
            [FieldError("headline", f"at most {limits.max_headline_chars} characters")],
        )


# The largest integer every JSON reader (a partner site's JavaScript, the ledger's Lua) keeps
# exactly: past it 2^53 + 1 reads as 2^53, and a correction numbered so looked like a repeat.
# A withdrawal of this version is numbered 2^53, still exact.
LARGEST_VERSION = 2**53 - 1


def semantic_errors(article: Article) -> list[FieldError]:
    """What the types let through but a newsroom never means: times without a zone, etc."""
    errors = [
        FieldError(name, "needs a UTC offset, e.g. 2026-11-25T09:30:00Z")
        for name in ("versioncreated", "firstcreated", "embargoed")
        if (value := getattr(article, name)) is not None and value.utcoffset() is None
    ]
    if article.version > LARGEST_VERSION:
        errors.append(
            FieldError(
                "version",
                f"at most {LARGEST_VERSION} (2^53 - 1), the largest integer every JSON reader "
                "keeps exactly",
            )
        )
    if errors:
        return errors
    if article.firstcreated is not None and article.firstcreated > article.versioncreated:
        errors.append(FieldError("firstcreated", "is later than versioncreated"))
    return errors


# --- API keys: who may write what ---------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    """A caller. `key_id` is a short digest prefix: safe in logs, never the key itself."""

    key_id: str
    provider: str | None  # None: an unscoped (internal) key that may write for any provider


def key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRing:
    """Known keys as SHA-256 digests; entries are `provider=secret`, `provider=sha256:<hex>`
    or (unscoped, for internal tools) a bare `secret`."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._keys: list[tuple[bytes, ApiKey]] = []
        for entry in entries:
            entry = entry.strip()
            if not entry or entry.startswith("#"):
                continue
            provider, sep, secret = entry.partition("=")
            if not sep:
                provider, secret = "", entry
            digest = secret[7:].lower() if secret.startswith("sha256:") else key_digest(secret)
            api_key = ApiKey(key_id=digest[:12], provider=provider.strip() or None)
            self._keys.append((bytes.fromhex(digest), api_key))

    def __len__(self) -> int:
        return len(self._keys)

    def identify(self, secret: str) -> ApiKey | None:
        digest = hashlib.sha256(secret.encode()).digest()
        found = None
        for known, api_key in self._keys:
            if hmac.compare_digest(digest, known):
                found = api_key
        return found


class Forbidden(Exception):
    """The key is valid but may not write this (HTTP 403)."""


def uri_namespace(template: str, provider: str) -> str:
    return template.format(provider=provider)


def authorise(key: ApiKey, provider: str, uri: str, template: str) -> None:
    """A provider's key writes only its own provider name and its own `uri` namespace."""
    if key.provider is None:
        return
    if provider != key.provider:
        raise Forbidden(f"this key writes for provider {key.provider!r}, not {provider!r}")
    namespace = uri_namespace(template, key.provider)
    if not uri.startswith(namespace):
        raise Forbidden(f"this key writes only uris starting with {namespace!r}")


class RateLimiter(Protocol):
    async def hit(self, key_id: str, cost: int) -> float | None:
        """Counts `cost` articles for the key; returns seconds to wait when over the limit."""


@dataclass(frozen=True)
class StoredResponse:
    """The answer to a request that carried an `Idempotency-Key`."""

    request_digest: str
    status: int
    body: bytes


class IdempotencyStore(Protocol):
    async def get(self, scope: str) -> StoredResponse | None: ...

    async def put(self, scope: str, response: StoredResponse) -> None: ...


# --- accepting versions -------------------------------------------------------------------


_VERSIONCREATED = b',"versioncreated":"'


def fingerprint_of(value: bytes) -> str:
    """Identifies the content a partner sent, so an identical re-post can be recognised: the
    SHA-256 of the article's JSON without `versioncreated`, taken from `value`, its encoding
    (`encode(article)`), with that member cut out; the same digest as of
    `article.model_dump_json(exclude={"versioncreated"}, exclude_none=True)`, which the
    ledgers hold, without a second encoding. The member always follows `uri` and `version`,
    and no text can hold its opening (a quote inside a JSON string is escaped), so the first
    match is it.
    """
    start = value.index(_VERSIONCREATED)
    end = value.index(b'"', start + len(_VERSIONCREATED)) + 1
    return hashlib.sha256(value[:start] + value[end:]).hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    """What ingest remembers of the last accepted version of a uri."""

    version: int
    event_id: str
    event_type: str
    fingerprint: str
    article_json: str


@dataclass(frozen=True)
class Claim:
    """The ledger's answer to "may I publish this uri+version?", read and claimed atomically."""

    previous: LedgerEntry | None  # the last recorded version (without `article_json`)
    won: bool  # the caller holds uri+version now: it publishes, then records or releases
    held_by: str | None = None  # another caller holds it: the fingerprint of its content


class Ledger(Protocol):
    async def get(self, uri: str, with_article: bool = True) -> LedgerEntry | None:
        """`article_json` is left empty when not `with_article` (it is large)."""

    async def claim(
        self, uri: str, version: int, fingerprint: str, token: str, ttl_s: float
    ) -> Claim:
        """Reads the last recorded version and, in the same step, claims uri+version if it is
        newer. One caller wins; the claim lasts until recorded, released or `ttl_s` passed."""

    async def put(self, uri: str, entry: LedgerEntry) -> None:
        """Records `entry` unless a version at least as high is recorded; drops its claim."""

    async def release(self, uri: str, version: int, token: str) -> None:
        """Drops the claim on uri+version if `token` still holds it (the publish failed)."""


class ArticlePublisher(Protocol):
    async def publish(self, article: Article, meta: EventMeta, value: bytes | None = None) -> None:
        """Returns only once the broker acknowledged the record (acks=all). `value` is the
        article already encoded, when the caller has it."""


@dataclass(frozen=True)
class Receipt:
    uri: str
    version: int
    event_id: str
    type: str
    created: bool  # False: an identical re-post; nothing new was published


class VersionConflict(Exception):
    def __init__(self, uri: str, version: int, latest: int) -> None:
        super().__init__(
            f"{uri} version {version} differs from what was accepted and is not newer than "
            f"version {latest}; send a higher version to correct it"
        )


class UnknownArticle(Exception):
    pass


def prepare(article: Article) -> Article:
    """The article as it goes on the topic: sanitised body and its plain-text rendering."""
    body_html = sanitise_html(article.body_html)
    return article.model_copy(update={"body_html": body_html, "body_text": html_to_text(body_html)})


class Intake:
    """Accepts article versions: publishes new ones, recognises re-posts, refuses stale ones.

    Replicas share the ledger: a version is published only by the request that claimed it, so
    the same post arriving twice at once (two replicas, or one) makes one record, not two.
    """

    def __init__(
        self,
        publisher: ArticlePublisher,
        ledger: Ledger,
        source: str,
        publish_timeout_s: float = 10.0,
        claim_poll_s: float = 0.02,
    ) -> None:
        self._publisher = publisher
        self._ledger = ledger
        self._source = source
        # A claim outlives the longest publish plus the ledger write; after a crash it expires.
        self._claim_ttl_s = publish_timeout_s + 5
        # A twin request waits about as long as the winner's publish may take, then gets 503.
        self._twin_wait_s = publish_timeout_s + 1
        self._claim_poll_s = claim_poll_s
        # Claim tokens: unique across replicas (random prefix) without a syscall per article.
        replica = secrets.token_hex(8)  # once: inside the generator it ran for every article
        self._tokens = (f"{replica}-{n}" for n in itertools.count())

    async def accept(self, article: Article) -> Receipt:
        article = prepare(article)
        value = encode(article)
        digest = fingerprint_of(value)
        token = next(self._tokens)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._twin_wait_s
        while True:
            claim = await self._ledger.claim(
                article.uri, article.version, digest, token, self._claim_ttl_s
            )
            previous = claim.previous
            if previous is not None:
                if previous.fingerprint == digest:
                    return Receipt(
                        article.uri, previous.version, previous.event_id, previous.event_type, False
                    )
                if article.version <= previous.version:
                    raise VersionConflict(article.uri, article.version, previous.version)
            if claim.won:
                break
            if claim.held_by != digest:
                raise VersionConflict(article.uri, article.version, article.version)
            # The identical post is being published by another request: its event is ours.
            if loop.time() >= give_up_at:
                raise TimeoutError(f"{article.uri} version {article.version} is still publishing")
            await asyncio.sleep(self._claim_poll_s)
        event_type = event_type_for(article, previous.version if previous else None)
        meta = EventMeta.new(event_type, self._source)
        try:
            await self._publisher.publish(article, meta, value)
        except BaseException:
            # Not published: let a retry claim it now rather than after the claim expires.
            with contextlib.suppress(Exception):
                await self._ledger.release(article.uri, article.version, token)
            raise
        entry = LedgerEntry(article.version, meta.id, event_type, digest, value.decode())
        await self._ledger.put(article.uri, entry)
        return Receipt(article.uri, article.version, meta.id, event_type, True)

    async def accept_many(self, articles: Sequence[Article]) -> list[Receipt | Exception]:
        """Each article on its own: versions of one uri in order, different uris concurrently."""
        results: list[Receipt | Exception] = [Exception("not processed")] * len(articles)
        by_uri: dict[str, list[int]] = {}
        for index, article in enumerate(articles):
            by_uri.setdefault(article.uri, []).append(index)

        async def run(indexes: list[int]) -> None:
            for index in indexes:
                try:
                    results[index] = await self.accept(articles[index])
                except Exception as exc:
                    results[index] = exc

        await asyncio.gather(*(run(indexes) for indexes in by_uri.values()))
        return results

    async def last_provider(self, uri: str) -> str | None:
        previous = await self._ledger.get(uri)
        if previous is None:
            return None
        return Article.model_validate_json(previous.article_json).provider

    async def withdraw(self, uri: str, reason: str) -> Receipt:
        """A kill: the next version with `pubstatus=canceled`; consumers remove it everywhere."""
        previous = await self._ledger.get(uri)
        if previous is None:
            raise UnknownArticle(uri)
        if previous.event_type == EventType.WITHDRAWN:
            return Receipt(uri, previous.version, previous.event_id, previous.event_type, False)
        last = Article.model_validate_json(previous.article_json)
        note = f"WITHDRAWN: {reason}".strip()
        killed = last.model_copy(
            update={
                "version": last.version + 1,
                "versioncreated": datetime.now(UTC),
                "pubstatus": "canceled",
                "summary": note,
            }
        )
        return await self.accept(killed)
