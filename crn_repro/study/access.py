"""Who is asking the study server, and how often (docs/study-deployment.md): the client address and scheme
of a request, taken from a trusted reverse proxy's X-Forwarded-For / X-Forwarded-Proto only, and the
per-address limit on joins (a token bucket: a burst of up to N joins, refilled at N a minute).

Standard library only; pure functions and one small thread-safe class, so the server stays thin.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Iterable
from typing import NamedTuple

from crn_repro.errors import CrnError

DEFAULT_JOINS_PER_MINUTE = 120  # per client address; a burst of this many may join at once
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Client(NamedTuple):
    """The client a request comes from: ``address`` (the real client's where a trusted proxy says so, else
    the peer's), ``scheme`` ("https" only where a trusted proxy says so), ``proxied`` (the request came
    through a trusted proxy that named the client)."""

    address: str
    scheme: str
    proxied: bool


def trusted_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Parse ``--trusted-proxy`` values (addresses or networks: 127.0.0.1, ::1, 10.0.0.0/8); CrnError on a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise CrnError(f"--trusted-proxy {value!r}: expected an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address.ipv4_mapped or address if isinstance(address, ipaddress.IPv6Address) else address


def _trusted(address, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in networks)


def client_of(peer: str, forwarded_for: list[str], forwarded_proto: list[str], networks: tuple[Network, ...]) -> Client:
    """The client of a request from ``peer`` with these X-Forwarded-For / X-Forwarded-Proto header values.

    The headers count only when the peer is a trusted proxy: then the client is the rightmost address of
    X-Forwarded-For that is not itself a trusted proxy (each proxy appends the address it was reached
    from; anything left of that was written by the client and may be forged). From any other peer the
    headers are ignored and the peer is the client."""
    peer_address = _address(peer)
    if not _trusted(peer_address, networks):
        return Client(str(peer_address or peer), "http", False)
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    client = None
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:  # unreadable: stop at the last hop we could trust
            break
        client = address
        if not _trusted(address, networks):
            break
    protos = [p.strip().lower() for value in forwarded_proto for p in value.split(",") if p.strip()]
    scheme = protos[-1] if protos and protos[-1] in ("http", "https") else "http"
    if client is None:
        return Client(str(peer_address), scheme, False)
    return Client(str(client), scheme, True)


class JoinLimiter:
    """At most ``per_minute`` joins a minute per client address, as a token bucket: an address may join
    ``per_minute`` times at once, then once every 60/per_minute seconds. ``per_minute`` 0: no limit."""

    def __init__(self, per_minute: int = DEFAULT_JOINS_PER_MINUTE, clock=time.monotonic):
        if isinstance(per_minute, bool) or not isinstance(per_minute, int) or per_minute < 0:
            raise CrnError(f"--joins-per-minute {per_minute!r}: expected a whole number >= 0 (0: no limit)")
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, time of that count)
        self._lock = threading.Lock()

    def wait(self, address: str) -> float:
        """0 if ``address`` may join now (and counts the join), else the seconds until it may."""
        if self.per_minute == 0:
            return 0.0
        now = self.clock()
        rate = self.per_minute / 60.0
        with self._lock:
            tokens, then = self._buckets.get(address, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - then) * rate)
            if tokens >= 1.0:
                self._buckets[address] = (tokens - 1.0, now)
                self._forget_full(now)
                return 0.0
            self._buckets[address] = (tokens, now)
            return (1.0 - tokens) / rate

    def _forget_full(self, now: float) -> None:
        """Drop addresses whose bucket has refilled (bounded memory under many addresses)."""
        if len(self._buckets) < 4096:
            return
        full = 60.0  # any bucket untouched for a minute is full again
        self._buckets = {a: (t, w) for a, (t, w) in self._buckets.items() if now - w < full}


def retry_after(seconds: float) -> int:
    """The Retry-After header's whole seconds for a wait (at least 1)."""
    return max(1, math.ceil(seconds))
