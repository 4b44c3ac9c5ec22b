"""SSRF policy for every URL newsflow calls (partner webhooks, newsroom feeds): only http(s),
no credentials in the URL, and every resolved address public unless a setting allows private
ones (local demos and tests). Resolve first, judge, then connect only to what was judged."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

Resolver = Callable[[str], Awaitable[list[str]]]


class TargetRefused(ValueError):
    """A URL newsflow will not call."""


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
                f"{host} resolves to {ip}, a non-public address; only public hosts are called"
            )


async def vet_target(url: str, resolve: Resolver, allow_private: bool) -> None:
    """Resolve first, then judge every address: a refusal happens before any connection."""
    host = check_scheme(url)
    check_addresses(host, await resolve(host), allow_private)
