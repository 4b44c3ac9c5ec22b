"""delivery's rules: subscriptions, Standard Webhooks signing, the SSRF policy. No I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, StringConstraints, field_validator

from shared.events import EventType

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)
SECRET_BYTES = 32

Secret = Annotated[str, StringConstraints(pattern=r"^whsec_[A-Za-z0-9+/]{32,88}={0,2}$")]


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class SubscriptionRequest(BaseModel):
    """What a partner manager sends to subscribe an endpoint."""

    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    sections: list[str] = Field(default_factory=list, description="Empty: every section.")
    secret: Secret | None = Field(
        default=None, description="`whsec_<base64>`; generated if absent."
    )
    description: str | None = Field(default=None, max_length=500)

    @field_validator("secret")
    @classmethod
    def secret_has_enough_key(cls, value: str | None) -> str | None:
        if value is not None:
            key = base64.b64decode(value.removeprefix(SECRET_PREFIX), validate=True)
            if not 24 <= len(key) <= 64:
                raise ValueError("the key must be 24 to 64 random bytes, base64-encoded")
        return value


class Subscription(BaseModel):
    id: str
    url: str
    sections: list[str]
    secret: str
    description: str | None = None
    created_at: datetime
    active: bool = True

    @classmethod
    def create(cls, request: SubscriptionRequest) -> Subscription:
        return cls(
            id="sub_" + uuid.uuid4().hex,
            url=request.url,
            sections=sorted({s.strip().lower() for s in request.sections if s.strip()}),
            secret=request.secret or new_secret(),
            description=request.description,
            created_at=datetime.now(UTC),
        )

    def wants(self, section_id: str) -> bool:
        return self.active and (not self.sections or section_id in self.sections)


# --- Standard Webhooks ---------------------------------------------------------------------


def webhook_id(subscription_id: str, story_uri: str, version: int, event_type: str) -> str:
    """The same for every retry and redelivery of one message, so partners can de-duplicate."""
    seed = f"{subscription_id}\n{story_uri}\n{version}\n{event_type}".encode()
    return "msg_" + hashlib.sha256(seed).hexdigest()[:32]


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` keyed by the decoded secret."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_body(event_type: EventType, timestamp: datetime, story_json: bytes) -> bytes:
    """`{"type", "timestamp", "data": Story}` built around the story's bytes (no re-encoding)."""
    head = f'{{"type":"{event_type.webhook_type}","timestamp":"{_iso(timestamp)}","data":'
    return head.encode() + story_json + b"}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- SSRF ----------------------------------------------------------------------------------


class TargetRefused(ValueError):
    """A webhook URL newsflow will not call."""


def check_scheme(url: str) -> str:
    """Returns the host to resolve; refuses anything but http(s) with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"scheme {parts.scheme or '(none)'!r} is not allowed; use https")
    if not parts.hostname:
        raise TargetRefused("the URL has no host")
    if parts.username or parts.password:
        raise TargetRefused("credentials in the URL are not allowed; use the signing secret")
    return parts.hostname


def check_addresses(host: str, addresses: Iterable[str], allow_private: bool) -> None:
    """Refuses loopback, private, link-local, multicast, reserved and metadata addresses."""
    found = list(addresses)
    if not found:
        raise TargetRefused(f"{host} does not resolve")
    if allow_private:
        return
    for address in found:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise TargetRefused(
                f"{host} resolves to {ip}, a non-public address; webhooks go to public hosts only"
            )


# --- Ports ---------------------------------------------------------------------------------


class SubscriptionStore(Protocol):
    async def add(self, subscription: Subscription) -> None: ...

    async def remove(self, subscription_id: str) -> bool: ...

    async def get(self, subscription_id: str) -> Subscription | None: ...

    async def all(self) -> list[Subscription]: ...


class StoryCache(Protocol):
    async def latest(self, section_id: str | None, limit: int) -> list[bytes]: ...

    async def story(self, uri: str) -> bytes | None: ...


Resolver = Callable[[str], Awaitable[list[str]]]


async def vet_target(url: str, resolve: Resolver, allow_private: bool) -> None:
    """Resolve first, then judge every address: a refusal happens before any connection."""
    host = check_scheme(url)
    check_addresses(host, await resolve(host), allow_private)
