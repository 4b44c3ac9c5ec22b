"""The newsflow contract in one module: Article, Story, topics and the CloudEvents mapping.

Partners and internal teams build on exactly what is here; changing a field is a public API change.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import to_json

SPEC_VERSION = "1.0"
M = TypeVar("M", bound=BaseModel)
CONTENT_TYPE = "application/json"

PubStatus = Literal["usable", "withheld", "canceled"]


class EventType(StrEnum):
    """CloudEvents `type` of every record on the article and story topics."""

    PUBLISHED = "newsflow.article.published"
    UPDATED = "newsflow.article.updated"
    WITHDRAWN = "newsflow.article.withdrawn"

    @property
    def webhook_type(self) -> str:
        """The webhook `type` partners receive: story.published / .updated / .withdrawn."""
        return _WEBHOOK_TYPES[self]  # worked out once: `.value` on a member costs ~0.5 µs


# Keyed by the members' text: a member hashes as its name, and looks up as its text.
_WEBHOOK_TYPES: dict[str, str] = {t.value: "story." + t.value.rsplit(".", 1)[1] for t in EventType}


class ContractModel(BaseModel):
    """Unknown fields are refused, so a typo in a payload is an error, not a silent drop."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Image(ContractModel):
    href: AnyHttpUrl
    caption: str | None = None
    credit: str | None = None


class ProviderLink(ContractModel):
    """A related link the provider already gave with the article."""

    uri: str | None = None
    url: AnyHttpUrl | None = None
    headline: str | None = None


class Article(ContractModel):
    """An article as a newsroom sends it (field names after ninjs 1.x as Superdesk emits it)."""

    uri: Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^\S+$")] = Field(
        description="Stable, provider-scoped identifier, e.g. `urn:newsflow:acme:2026-0001`.",
    )
    version: int = Field(default=1, ge=1, description="Increases with every correction.")
    versioncreated: datetime = Field(default_factory=lambda: datetime.now(UTC))
    firstcreated: datetime | None = None
    pubstatus: PubStatus = "usable"
    embargoed: datetime | None = Field(default=None, description="Held until this time.")
    urgency: int = Field(default=5, ge=1, le=9)
    language: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = (
        "en"
    )
    headline: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    subheadline: str | None = None
    summary: str | None = None
    body_html: str = ""
    body_text: str | None = Field(
        default=None,
        description="Plain-text rendering of `body_html`, made by ingest (for enrichment).",
    )
    byline: str | None = None
    provider: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    url: AnyHttpUrl | None = None
    section: str | None = Field(default=None, description="The provider's own label: a hint.")
    keywords: list[str] = Field(default_factory=list)
    images: list[Image] = Field(default_factory=list)
    related: list[ProviderLink] = Field(default_factory=list)

    @property
    def is_withdrawn(self) -> bool:
        return self.pubstatus == "canceled"


class SectionAssignment(ContractModel):
    id: str
    name: str
    confidence: float = Field(ge=0.0, le=1.0)
    method: Literal["provider", "classifier", "default"]


class RelatedStory(ContractModel):
    uri: str
    headline: str
    url: AnyHttpUrl | None = None
    score: float


class Entities(ContractModel):
    people: list[str] = Field(default_factory=list)
    places: list[str] = Field(default_factory=list)
    organisations: list[str] = Field(default_factory=list)


class Enrichment(ContractModel):
    section: SectionAssignment
    related: list[RelatedStory] = Field(default_factory=list)
    entities: Entities = Field(default_factory=Entities)
    duplicate_of: str | None = None
    enriched_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Story(Article):
    """An Article with what enrichment added: the value of `stories.enriched.v1`."""

    enrichment: Enrichment


class DeliveryAttempt(ContractModel):
    """One webhook attempt: the value of `deliveries.attempts.v1` (key = subscription id)."""

    subscription_id: str
    webhook_id: str
    story_uri: str
    story_version: int
    event_type: str
    url: str
    attempt: int
    status_code: int | None = Field(
        default=None, description="The answer's HTTP status; absent when none came (a timeout)."
    )
    outcome: Literal["delivered", "failed", "gave_up"]
    duration_ms: float
    error: str | None = None
    attempted_at: datetime
    next_retry_at: datetime | None = None
    response_body: str | None = Field(default=None, description="First 4 KB of the answer.")


class WebhookPayload(BaseModel):
    """The body partners receive, signed per Standard Webhooks."""

    type: str
    timestamp: datetime
    data: Story


@dataclass(frozen=True)
class Topics:
    """Topic names; a prefix lets several environments (or tests) share one cluster."""

    prefix: str = ""

    @property
    def ingested(self) -> str:
        return f"{self.prefix}articles.ingested.v1"

    @property
    def enriched(self) -> str:
        return f"{self.prefix}stories.enriched.v1"

    @property
    def attempts(self) -> str:
        return f"{self.prefix}deliveries.attempts.v1"

    @property
    def outbox(self) -> str:
        """Webhook jobs ready to send (key = subscription id)."""
        return f"{self.prefix}deliveries.outbox.v1"

    def retry(self, delay_s: int) -> str:
        """Webhook jobs waiting about `delay_s` seconds (one topic per tier in RETRY_TIERS_S)."""
        return f"{self.prefix}deliveries.retry.{delay_s}s.v1"

    @property
    def subscriptions(self) -> str:
        """Every subscription's latest state (compacted, key = subscription id)."""
        return f"{self.prefix}subscriptions.v1"

    @property
    def subscription_events(self) -> str:
        """What happened to subscriptions: disabled after failures, 410 Gone, re-enabled."""
        return f"{self.prefix}subscriptions.events.v1"

    def dlq(self, topic: str) -> str:
        """`articles.ingested.v1` -> `articles.ingested.dlq.v1`."""
        stem = topic.removesuffix(".v1")
        return f"{stem}.dlq.v1"

    def all(self) -> list[TopicSpec]:
        return [
            TopicSpec(self.ingested),
            TopicSpec(self.enriched, compacted=True),
            TopicSpec(self.attempts),
            TopicSpec(self.dlq(self.ingested)),
            TopicSpec(self.dlq(self.enriched)),
            # Delivery's own poison: unreadable jobs (outbox and retry tiers), subscriptions.
            TopicSpec(self.dlq(self.outbox)),
            TopicSpec(self.dlq(self.subscriptions)),
            TopicSpec(self.outbox),
            *(TopicSpec(self.retry(delay)) for delay in RETRY_TIERS_S),
            TopicSpec(self.subscriptions, compacted=True),
            TopicSpec(self.subscription_events),
        ]


# Delay tiers of the webhook retry topics, in seconds: a job waits in the largest tier not
# longer than its remaining wait, so no job blocks one due much sooner behind it.
RETRY_TIERS_S = (1, 5, 30, 120, 600, 1800, 7200, 21600)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    compacted: bool = False
    partitions: int = 6

    @property
    def configs(self) -> dict[str, str]:
        return {"cleanup.policy": "compact"} if self.compacted else {}


# --- CloudEvents 1.0, Kafka binary content mode --------------------------------------------

Headers = list[tuple[str, bytes]]


REQUIRED_HEADERS = ("ce_specversion", "ce_id", "ce_source", "ce_type")


@dataclass(frozen=True)
class EventMeta:
    """The CloudEvents attributes of one record (the `ce_*` headers)."""

    id: str
    source: str
    type: str
    time: datetime
    extensions: tuple[tuple[str, str], ...] = ()

    @classmethod
    def new(cls, event_type: str, source: str, **extensions: str) -> EventMeta:
        """A new event; inside a traced request or record it carries `traceparent` (a child
        span of that trace), so one story can be followed across the services."""
        parent = current_traceparent.get()
        if parent is not None and "traceparent" not in extensions:
            extensions["traceparent"] = child_of(parent)
        return cls(
            id=new_event_id(),
            source=source,
            type=event_type,
            time=datetime.now(UTC),
            extensions=tuple(sorted(extensions.items())),
        )

    @classmethod
    def check_headers(cls, headers: Iterable[tuple[str, bytes]]) -> None:
        """What `from_headers` checks, without building the event: raises `InvalidEvent` when a
        required CloudEvents header is missing or malformed.
        """
        cls._check({name: value for name, value in headers if name in REQUIRED_HEADERS})

    @staticmethod
    def _check(found: Mapping[str, str | bytes]) -> None:
        missing = [h for h in REQUIRED_HEADERS if h not in found]
        if missing:
            raise InvalidEvent(f"missing CloudEvents headers: {', '.join(missing)}")
        version = found["ce_specversion"]
        if isinstance(version, bytes):
            version = version.decode("utf-8", "replace")
        if version != SPEC_VERSION:
            raise InvalidEvent(f"unsupported ce_specversion {version!r}")

    def to_headers(self) -> Headers:
        headers = [
            ("ce_specversion", _SPEC_VERSION_BYTES),
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
            ("ce_time", self.time.isoformat().replace("+00:00", "Z").encode()),
            ("content-type", _CONTENT_TYPE_BYTES),
        ]
        headers.extend((f"ce_{name}", value.encode()) for name, value in self.extensions)
        return headers

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes]]) -> EventMeta:
        """Raises `InvalidEvent` when a required CloudEvents header is missing or malformed."""
        found = {name: value.decode("utf-8", "replace") for name, value in headers}
        cls._check(found)
        try:
            time = datetime.fromisoformat(found.get("ce_time", "").replace("Z", "+00:00"))
        except ValueError:
            time = datetime.now(UTC)
        extensions = [
            (name[3:], value)
            for name, value in found.items()
            if name.startswith("ce_") and name not in _CORE_ATTRIBUTES
        ]
        if len(extensions) > 1:
            extensions.sort()
        return cls(
            id=found["ce_id"],
            source=found["ce_source"],
            type=found["ce_type"],
            time=time,
            extensions=tuple(extensions),
        )


_SPEC_VERSION_BYTES = SPEC_VERSION.encode()
_CONTENT_TYPE_BYTES = CONTENT_TYPE.encode()
# The `ce_*` headers that are attributes of their own; every other is an extension.
_CORE_ATTRIBUTES = frozenset(("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"))


# --- Trace context: the W3C `traceparent`, carried as the CloudEvents extension `ce_traceparent` --

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
INVALID_TRACE = "0" * 32
# The trace of the request or record being handled; set by the HTTP middleware and per record.
current_traceparent: ContextVar[str | None] = ContextVar("current_traceparent", default=None)


_UUID4_MASK = ~(0xF000 << 64) & ~(0xC000 << 48)
_UUID4_BITS = (0x4000 << 64) | (0x8000 << 48)


def new_event_id() -> str:
    """A random (version 4) UUID, as `str(uuid.uuid4())` gives, from the PRNG (an event id
    needs to be unique, not secret): no read of the OS entropy source per event."""
    h = f"{(random.getrandbits(128) & _UUID4_MASK) | _UUID4_BITS:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _random_id(bits: int) -> str:
    # Ids must be unique, not secret: the PRNG (as OpenTelemetry's SDK uses) spares every
    # request two reads of the OS entropy source. All zeros is the invalid id.
    return f"{random.getrandbits(bits) or 1:0{bits // 4}x}"


def new_traceparent() -> str:
    return f"00-{_random_id(128)}-{_random_id(64)}-01"


def child_of(traceparent: str | None) -> str:
    """The same trace with a new span id; a fresh trace when the parent is absent or invalid."""
    match = TRACEPARENT.match(traceparent or "")
    if not match or match.group(1) == INVALID_TRACE:
        return new_traceparent()
    return f"00-{match.group(1)}-{_random_id(64)}-{match.group(3)}"


def trace_id(traceparent: str | None) -> str | None:
    match = TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None


class InvalidEvent(ValueError):
    """A record that does not honour the contract; it belongs on the DLQ."""


def event_type_for(article: Article, previous_version: int | None) -> EventType:
    """Which event an accepted article version is: withdrawn beats updated beats published."""
    if article.is_withdrawn:
        return EventType.WITHDRAWN
    if previous_version is not None:
        return EventType.UPDATED
    return EventType.PUBLISHED


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json(exclude_none=True).encode()


def encode_attempt(**fields: object) -> bytes:
    """`encode(DeliveryAttempt(**fields))`, the same bytes, without building the model (delivery
    writes one per webhook: ~2 µs instead of ~6): every field of the model named, in its order,
    None left out, infinities as null (pydantic's default for the model's JSON)."""
    if len(fields) != len(_ATTEMPT_FIELDS):
        raise TypeError(f"a delivery attempt has the fields {', '.join(_ATTEMPT_FIELDS)}")
    values = ((name, fields[name]) for name in _ATTEMPT_FIELDS)
    return to_json(
        {name: value for name, value in values if value is not None}, inf_nan_mode="null"
    )


_ATTEMPT_FIELDS = tuple(DeliveryAttempt.model_fields)


def encode_enrichment(
    section: SectionAssignment,
    related: Iterable[tuple[str, str, str | None, float]],
    entities: tuple[Iterable[str], Iterable[str], Iterable[str]],
    duplicate_of: str | None,
    enriched_at: datetime,
) -> bytes:
    """`encode(Enrichment(...))` of these, the same bytes, without building the models
    (enrichment writes one a story: ~5 µs instead of ~25 for the models, most of it validating
    each link). Links are (uri, headline, url, score), each url as a validated article holds it
    (already normalised); entities are (people, places, organisations). Text is stripped as
    the models strip it; None is left out."""
    links = [
        {"uri": uri.strip(), "headline": headline.strip(), "url": url, "score": score}
        if url is not None
        else {"uri": uri.strip(), "headline": headline.strip(), "score": score}
        for uri, headline, url, score in related
    ]
    people, places, organisations = entities
    value: dict[str, object] = {
        "section": section,
        "related": links,
        "entities": {
            "people": [name.strip() for name in people],
            "places": [name.strip() for name in places],
            "organisations": [name.strip() for name in organisations],
        },
    }
    if duplicate_of is not None:
        value["duplicate_of"] = duplicate_of.strip()
    value["enriched_at"] = enriched_at
    return to_json(value, inf_nan_mode="null")


def encode_story(article: Article, enrichment: Enrichment | bytes) -> bytes:
    """`encode` of the Story made of these, without building it: the article's JSON with the
    enrichment, the Story's last field, added at the end (the same bytes, in a third the time).
    `enrichment` is the model or its encoding (`encode_enrichment`)."""
    added = enrichment if isinstance(enrichment, bytes) else encode(enrichment)
    return b"".join((encode(article)[:-1], b',"enrichment":', added, b"}"))


def decode_article(value: bytes | None) -> Article:
    return _decode(Article, value)


def decode_story(value: bytes | None) -> Story:
    return _decode(Story, value)


def _decode(model: type[M], value: bytes | None) -> M:
    if value is None:
        raise InvalidEvent("record has no value")
    try:
        return model.model_validate_json(value)
    except ValueError as exc:
        raise InvalidEvent(f"not a valid {model.__name__}: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:500]


def error_headers(error: str, topic: str, partition: int, offset: int) -> Headers:
    """Headers a DLQ record carries besides the original ones."""
    return [
        ("newsflow_error", error[:1000].encode()),
        ("newsflow_original_topic", topic.encode()),
        ("newsflow_original_partition", str(partition).encode()),
        ("newsflow_original_offset", str(offset).encode()),
    ]
