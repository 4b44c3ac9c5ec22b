"""delivery's rules: subscriptions and their filters, Standard Webhooks signing with rotation,
what an answer means (retry, disable, give up), retry timing, ninjs 2 rendering, the SSRF policy.
No I/O."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import random
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, Literal, NamedTuple, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, StringConstraints, field_validator

from shared.events import RETRY_TIERS_S, EventType, Story

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)
SECRET_BYTES = 32

Secret = Annotated[str, StringConstraints(pattern=r"^whsec_[A-Za-z0-9+/]{32,88}={0,2}$")]
WebhookType = Literal["story.published", "story.updated", "story.withdrawn"]
Format = Literal["newsflow", "ninjs2"]


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _check_secret(value: str | None) -> str | None:
    if value is not None:
        key = base64.b64decode(value.removeprefix(SECRET_PREFIX), validate=True)
        if not 24 <= len(key) <= 64:
            raise ValueError("the key must be 24 to 64 random bytes, base64-encoded")
    return value


class Filters(BaseModel):
    """What a subscription wants; an empty list means "any"."""

    sections: list[str] = Field(default_factory=list, description="Taxonomy section ids.")
    event_types: list[WebhookType] = Field(default_factory=list)
    keywords: list[str] = Field(
        default_factory=list, description="Any of these in keywords or headline (case-blind)."
    )
    languages: list[str] = Field(default_factory=list)
    max_urgency: int | None = Field(
        default=None, ge=1, le=9, description="Only stories with urgency <= this (1 = flash)."
    )


class SubscriptionRequest(Filters):
    """What a partner manager sends to subscribe an endpoint."""

    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    secret: Secret | None = Field(
        default=None, description="`whsec_<base64>`; generated if absent."
    )
    format: Format = "newsflow"
    description: str | None = Field(default=None, max_length=500)

    secret_has_enough_key = field_validator("secret")(_check_secret)


class SubscriptionUpdate(BaseModel):
    """A partial update: only the fields sent change."""

    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = None
    sections: list[str] | None = None
    event_types: list[WebhookType] | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None
    max_urgency: int | None = Field(default=None, ge=1, le=9)
    format: Format | None = None
    description: str | None = Field(default=None, max_length=500)


class RotationRequest(BaseModel):
    secret: Secret | None = Field(default=None, description="The new secret; generated if absent.")
    overlap_s: float | None = Field(
        default=None, ge=0, description="How long the old secret still signs (default 24 h)."
    )

    secret_has_enough_key = field_validator("secret")(_check_secret)


def _norm(values: Iterable[str]) -> list[str]:
    return sorted({v.strip().lower() for v in values if v.strip()})


class RecentDelivery(NamedTuple):
    """What the status page shows of one subscription's recent deliveries."""

    attempts: list[dict[str, Any]]  # the latest, newest first
    dead_letters: int


class Subscription(Filters):
    id: str
    url: str
    secret: str
    previous_secret: str | None = None
    previous_secret_expires_at: datetime | None = None
    format: Format = "newsflow"
    description: str | None = None
    created_at: datetime
    paused: bool = False
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    failing_since: datetime | None = None

    @classmethod
    def create(cls, request: SubscriptionRequest, now: datetime | None = None) -> Subscription:
        return cls(
            id="sub_" + uuid.uuid4().hex,
            url=request.url,
            sections=_norm(request.sections),
            event_types=request.event_types,
            keywords=_norm(request.keywords),
            languages=_norm(request.languages),
            max_urgency=request.max_urgency,
            secret=request.secret or new_secret(),
            format=request.format,
            description=request.description,
            created_at=now or datetime.now(UTC),
        )

    def updated(self, change: SubscriptionUpdate) -> Subscription:
        fields = change.model_dump(exclude_unset=True)
        for name in ("sections", "keywords", "languages"):
            if fields.get(name) is not None:
                fields[name] = _norm(fields[name])
        return self.model_copy(update=fields)

    @property
    def revision(self) -> str:
        """Changes with every change to the subscription, the same on every instance: its
        ETag, for an admin's change that must not undo one made since they looked."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:24]

    @property
    def status(self) -> Literal["active", "paused", "disabled"]:
        if self.disabled_at is not None:
            return "disabled"
        return "paused" if self.paused else "active"

    @property
    def active(self) -> bool:
        return self.status == "active"

    def wants(self, story: Story, event_type: EventType) -> bool:
        """Whether this story version matches the filters (status is not looked at here)."""
        if self.sections and story.enrichment.section.id not in self.sections:
            return False
        if self.event_types and event_type.webhook_type not in self.event_types:
            return False
        if self.languages and story.language.lower().split("-")[0] not in {
            lang.split("-")[0] for lang in self.languages
        }:
            return False
        if self.max_urgency is not None and story.urgency > self.max_urgency:
            return False
        if self.keywords:
            words = {k.lower() for k in story.keywords}
            headline = story.headline.lower()
            if not any(k in words or k in headline for k in self.keywords):
                return False
        return True

    def signing_secrets(self, now: datetime) -> list[str]:
        """The current secret, and the previous one while its overlap lasts."""
        found = [self.secret]
        expires = self.previous_secret_expires_at
        if self.previous_secret and expires is not None and now < expires:
            found.append(self.previous_secret)
        return found

    def rotated(self, new: str, overlap: timedelta, now: datetime) -> Subscription:
        return self.model_copy(
            update={
                "secret": new,
                "previous_secret": self.secret,
                "previous_secret_expires_at": now + overlap,
            }
        )


# --- Standard Webhooks ---------------------------------------------------------------------


def webhook_id(subscription_id: str, story_uri: str, version: int, event_type: str) -> str:
    """The same for every retry and redelivery of one message, so partners can de-duplicate."""
    seed = f"{subscription_id}\n{story_uri}\n{version}\n{event_type}".encode()
    return "msg_" + hashlib.sha256(seed).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)
def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` keyed by the decoded secret."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.digest(_key(secret), signed, "sha256")  # one-shot: OpenSSL's fast path
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: Sequence[str], message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<sig>` per valid secret, space-separated (rotation overlap)."""
    return " ".join(sign(s, message_id, timestamp, body) for s in secrets_)


def webhook_headers(
    subscription: Subscription, message_id: str, now: datetime, body: bytes
) -> dict[str, str]:
    timestamp = int(now.timestamp())
    return {
        "content-type": "application/json",
        "user-agent": "newsflow-webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(
            subscription.signing_secrets(now), message_id, timestamp, body
        ),
    }


def webhook_body(event_type: EventType, timestamp: datetime, story_json: bytes) -> bytes:
    """`{"type", "timestamp", "data": Story}` built around the story's bytes (no re-encoding)."""
    head = f'{{"type":"{event_type.webhook_type}","timestamp":"{_iso(timestamp)}","data":'
    return head.encode() + story_json + b"}"


def render(fmt: Format, event_type: EventType, now: datetime, story_json: bytes) -> bytes:
    if fmt == "ninjs2":
        data = json.dumps(to_ninjs2(Story.model_validate_json(story_json))).encode()
        return webhook_body(event_type, now, data)
    return webhook_body(event_type, now, story_json)


def ping_body(subscription_id: str, now: datetime) -> bytes:
    return json.dumps(
        {"type": "ping", "timestamp": _iso(now), "data": {"subscription_id": subscription_id}},
        separators=(",", ":"),
    ).encode()


def to_ninjs2(story: Story) -> dict[str, Any]:
    """IPTC ninjs 2.2 rendering of a story (validated against IPTC's schema in the tests)."""
    item: dict[str, Any] = {
        "uri": story.uri,
        "type": "text",
        "profile": "newsflow-story",
        "version": str(story.version),
        "versioncreated": _iso(story.versioncreated),
        "pubstatus": story.pubstatus,
        "urgency": story.urgency,
        "language": story.language,
        "headlines": [{"role": "main", "value": story.headline}],
        "bodies": [{"role": "main", "contenttype": "text/html", "value": story.body_html}],
        "subjects": [
            {
                "name": story.enrichment.section.name,
                "uri": f"newsflow:section:{story.enrichment.section.id}",
                "relevance": round(story.enrichment.section.confidence * 100),
            },
            # ninjs 2 has no `keywords`: they travel as free-text subjects.
            *({"name": k, "rel": "keyword", "literal": k} for k in story.keywords),
        ],
    }
    if story.firstcreated:
        item["firstcreated"] = _iso(story.firstcreated)
    if story.embargoed:
        item["embargoed"] = _iso(story.embargoed)
    if story.subheadline:
        item["headlines"].append({"role": "sub", "value": story.subheadline})
    if story.summary:
        item["descriptions"] = [{"role": "summary", "value": story.summary}]
    if story.byline:
        item["by"] = story.byline
    if story.provider:
        item["copyrightholder"] = story.provider
    if story.url:
        item["altids"] = [{"role": "url", "value": str(story.url)}]
    entities = story.enrichment.entities
    if entities.people:
        item["people"] = [{"name": p} for p in entities.people]
    if entities.places:
        item["places"] = [{"name": p} for p in entities.places]
    if entities.organisations:
        item["organisations"] = [{"name": o} for o in entities.organisations]
    associations: list[dict[str, Any]] = []
    for i, image in enumerate(story.images):
        picture: dict[str, Any] = {"name": f"image{i}", "type": "picture", "uri": str(image.href)}
        if image.caption:
            picture["headlines"] = [{"role": "caption", "value": image.caption}]
        if image.credit:
            picture["by"] = image.credit
        associations.append(picture)
    associations += [
        {"name": f"related{i}", "type": "text", "uri": r.uri, "headlines": [
            {"role": "main", "value": r.headline}]}
        for i, r in enumerate(story.enrichment.related)
    ]  # fmt: skip
    if associations:
        item["associations"] = associations
    return item


def _iso(moment: datetime) -> str:
    if moment.tzinfo is not UTC:  # (the times delivery makes are UTC: no copy for them)
        moment = moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


# --- What an answer means ------------------------------------------------------------------

RETRY_AFTER_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Answer:
    """What the partner's endpoint did with one attempt."""

    status: int | None
    error: str | None
    duration_ms: float
    body: str | None = None
    retry_after: str | None = None


@dataclass(frozen=True)
class Verdict:
    outcome: Literal["delivered", "retry", "gave_up", "gone"]
    delay_s: float | None = None  # before the next attempt, when retrying


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def judge(
    answer: Answer,
    attempt: int,
    schedule: Sequence[float],
    now: datetime,
    jitter: float,
    max_retry_after_s: float,
    rng: random.Random | None = None,
) -> Verdict:
    """2xx delivered; 410 gone (disable now); other answers retry on the schedule, or with the
    endpoint's `Retry-After` for 429/502/503/504, until the attempts run out."""
    if answer.error is None and answer.status is not None and 200 <= answer.status < 300:
        return Verdict("delivered")
    if answer.status == 410:
        return Verdict("gone")
    if attempt >= len(schedule):
        return Verdict("gave_up")
    delay = jittered(schedule[attempt], jitter, rng)
    if answer.status in RETRY_AFTER_STATUSES:
        asked = retry_after_s(answer.retry_after, now)
        if asked is not None:
            delay = min(asked, max_retry_after_s)
    return Verdict("retry", delay)


def jittered(delay: float, jitter: float, rng: random.Random | None = None) -> float:
    if delay <= 0 or jitter <= 0:
        return max(0.0, delay)
    return delay * (rng or random).uniform(1 - jitter, 1 + jitter)


def tier_for(wait_s: float) -> int | None:
    """The retry tier (seconds) a job waiting `wait_s` goes to; None: due now (the outbox)."""
    if wait_s < RETRY_TIERS_S[0]:
        return None
    return max(t for t in RETRY_TIERS_S if t <= wait_s)


def should_hop(tier_s: int | None, wait_s: float) -> bool:
    """A job found waiting much longer than its tier moves to a slower tier instead of blocking."""
    nominal = 0 if tier_s is None else tier_s
    return wait_s > max(1.0, nominal * 1.5)


class Breaker:
    """Per endpoint: after `failures` failures in a row, hold its jobs for `cooldown_s`."""

    def __init__(self, failures: int, cooldown_s: float) -> None:
        self._failures = failures
        self._cooldown_s = cooldown_s
        self._streak: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    def open_until(self, endpoint: str, now: float) -> float | None:
        until = self._open_until.get(endpoint)
        return until if until is not None and until > now else None

    def record(self, endpoint: str, ok: bool, now: float) -> None:
        if ok:
            self._streak.pop(endpoint, None)
            self._open_until.pop(endpoint, None)
            return
        streak = self._streak.get(endpoint, 0) + 1
        self._streak[endpoint] = streak
        if streak >= self._failures:
            self._open_until[endpoint] = now + self._cooldown_s


def endpoint_of(url: str) -> str:
    """What the concurrency limit and the breaker count by: the endpoint URL (one partner host
    may serve several endpoints; one failing path does not hold up its siblings)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


# --- Jobs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One webhook message for one subscription, waiting for its next attempt."""

    subscription_id: str
    story_uri: str
    version: int
    event_type: EventType
    attempt: int  # the number of the next attempt, from 1
    due: float  # epoch seconds
    story_json: bytes

    @functools.cached_property
    def message_id(self) -> str:
        return webhook_id(self.subscription_id, self.story_uri, self.version, self.event_type)

    def to_headers(self) -> list[tuple[str, bytes]]:
        return [
            ("nf_subscription", self.subscription_id.encode()),
            ("nf_uri", self.story_uri.encode()),
            ("nf_version", str(self.version).encode()),
            ("nf_event", self.event_type.value.encode()),
            ("nf_attempt", str(self.attempt).encode()),
            ("nf_due", repr(self.due).encode()),
        ]

    @classmethod
    def from_record(cls, headers: Iterable[tuple[str, bytes]], value: bytes) -> list[Job]:
        """A record holds one job, or one story version for several subscriptions (the
        fan-out: `nf_subscriptions`, comma-separated), so a story is written once, not once
        per subscription."""
        found = {name: raw.decode() for name, raw in headers}
        many = found.get("nf_subscriptions")
        ids = many.split(",") if many is not None else [found["nf_subscription"]]
        return [
            cls(
                subscription_id=sub_id,
                story_uri=found["nf_uri"],
                version=int(found["nf_version"]),
                event_type=EventType(found["nf_event"]),
                attempt=int(found["nf_attempt"]),
                due=float(found["nf_due"]),
                story_json=value,
            )
            for sub_id in ids
            if sub_id
        ]

    def to_json(self) -> str:
        return json.dumps(
            {
                "webhook_id": self.message_id,
                "subscription_id": self.subscription_id,
                "story_uri": self.story_uri,
                "version": self.version,
                "event_type": self.event_type.value,
                "attempt": self.attempt,
                "due": self.due,
                "story": self.story_json.decode(),
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Job:
        found = json.loads(raw)
        return cls(
            subscription_id=found["subscription_id"],
            story_uri=found["story_uri"],
            version=int(found["version"]),
            event_type=EventType(found["event_type"]),
            attempt=int(found["attempt"]),
            due=float(found["due"]),
            story_json=found["story"].encode(),
        )


def fanout_headers(jobs: Sequence[Job]) -> list[tuple[str, bytes]]:
    """Headers of one record carrying the same story version for every job in `jobs`."""
    first = jobs[0]
    return [
        ("nf_subscriptions", ",".join(j.subscription_id for j in jobs).encode()),
        *(h for h in first.to_headers() if h[0] != "nf_subscription"),
    ]


# --- Ports ---------------------------------------------------------------------------------


class SubscriptionStore(Protocol):
    async def add(self, subscription: Subscription) -> None: ...

    async def remove(self, subscription_id: str) -> bool: ...

    async def get(self, subscription_id: str) -> Subscription | None:
        """As this instance holds it (a write made elsewhere shows a moment later)."""
        ...

    async def latest(self, subscription_id: str) -> Subscription | None:
        """As stored now, with every write acknowledged before the call, whichever instance
        made it: what a change starts from."""
        ...

    async def read_to_now(self) -> None:
        """Returns once every write acknowledged before the call is held (`all` shows it)."""
        ...

    async def all(self) -> Sequence[Subscription]:
        """Every subscription, oldest first. The same object until one changes (the fan-out
        works out its section map once per such object)."""
        ...

    async def reseal(self) -> int:
        """Writes again those stored with secrets not sealed with the current key; how many."""
        ...


class Tagged(NamedTuple):
    """A cached story's bytes with their fingerprint (the read API's ETag), stored together so
    no read hashes a body."""

    body: bytes
    etag: str


def fingerprint(body: bytes) -> str:
    """A strong entity tag for `body`: a quoted 24-hex-digit BLAKE2b digest (26 characters)."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def page_fingerprint(stories: Sequence[Tagged], cursor: float | None) -> str:
    """The entity tag of a page of stories: what its items' tags and its cursor determine."""
    return fingerprint(b"".join(s.etag.encode() for s in stories) + repr(cursor).encode())


class StoryCache(Protocol):
    async def latest(
        self, section_id: str | None, limit: int, before: float | None
    ) -> tuple[list[bytes], float | None]: ...

    async def latest_tagged(
        self, section_id: str | None, limit: int, before: float | None
    ) -> tuple[list[Tagged], float | None]: ...

    async def story(self, uri: str) -> bytes | None: ...

    async def story_tagged(self, uri: str) -> Tagged | None: ...

    async def sections(self) -> list[dict[str, Any]]: ...
