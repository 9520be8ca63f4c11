"""Who is asking the study server and how often (crn_repro/study/access.py): the client address from a
trusted proxy's headers only, and the per-address token bucket on joins."""

from __future__ import annotations

import pytest

from crn_repro.errors import CrnError
from crn_repro.study.access import JoinLimiter, client_of, retry_after, trusted_networks

LOCAL = trusted_networks(["127.0.0.1"])


@pytest.mark.parametrize("peer,forwarded_for,proto,expected", [
    # an untrusted peer: its own address, whatever it claims
    ("192.0.2.5", ["203.0.113.7"], ["https"], ("192.0.2.5", "http", False)),
    ("127.0.0.2", ["203.0.113.7"], ["https"], ("127.0.0.2", "http", False)),
    # the trusted proxy: the rightmost address it did not add itself, and its scheme
    ("127.0.0.1", ["203.0.113.7"], ["https"], ("203.0.113.7", "https", True)),
    ("127.0.0.1", ["10.1.1.1, 203.0.113.7"], ["https"], ("203.0.113.7", "https", True)),  # the left one may be forged
    ("127.0.0.1", ["10.1.1.1", "203.0.113.7"], [], ("203.0.113.7", "http", True)),  # two header lines = one list
    ("127.0.0.1", ["203.0.113.7, 127.0.0.1"], ["https"], ("203.0.113.7", "https", True)),  # a chain of trusted proxies
    ("127.0.0.1", ["2001:db8::7"], ["https"], ("2001:db8::7", "https", True)),
    ("127.0.0.1", ["127.0.0.1"], ["https"], ("127.0.0.1", "https", True)),  # a browser on the proxy's machine
    # the trusted proxy without usable headers: the proxy is the client
    ("127.0.0.1", [], [], ("127.0.0.1", "http", False)),
    ("127.0.0.1", ["not-an-address"], ["gopher"], ("127.0.0.1", "http", False)),
    ("::ffff:127.0.0.1", ["203.0.113.7"], ["https"], ("203.0.113.7", "https", True)),  # v4-mapped peer
])
def test_client_address_comes_from_a_trusted_proxy_only(peer, forwarded_for, proto, expected):
    assert tuple(client_of(peer, forwarded_for, proto, LOCAL)) == expected


def test_without_trusted_proxies_headers_never_count():
    assert tuple(client_of("127.0.0.1", ["203.0.113.7"], ["https"], ())) == ("127.0.0.1", "http", False)


def test_trusted_networks_are_parsed_or_refused():
    assert [str(n) for n in trusted_networks(["127.0.0.1", "10.0.0.0/8", "::1"])] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    assert tuple(client_of("10.2.3.4", ["203.0.113.7"], [], trusted_networks(["10.0.0.0/8"])))[0] == "203.0.113.7"
    with pytest.raises(CrnError, match="--trusted-proxy 'proxy.example'"):
        trusted_networks(["proxy.example"])


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_a_steady_rate_per_address():
    clock = Clock()
    limiter = JoinLimiter(60, clock=clock)
    assert [limiter.wait("a") for _ in range(60)] == [0.0] * 60  # a burst of 60 at once
    assert limiter.wait("a") == pytest.approx(1.0)  # then one a second
    assert limiter.wait("b") == 0.0  # another address is not held back
    clock.now += 1.0
    assert limiter.wait("a") == 0.0 and limiter.wait("a") > 0
    clock.now += 60.0
    assert [limiter.wait("a") for _ in range(60)] == [0.0] * 60  # a minute later: a full burst again
    assert retry_after(0.2) == 1 and retry_after(20.0) == 20 and retry_after(20.01) == 21


def test_zero_means_no_limit_and_bad_limits_are_refused():
    limiter = JoinLimiter(0)
    assert all(limiter.wait("a") == 0.0 for _ in range(10_000))
    for bad in (-1, 1.5, True, "30"):
        with pytest.raises(CrnError, match="--joins-per-minute"):
            JoinLimiter(bad)


def test_memory_stays_bounded_under_many_addresses():
    clock = Clock()
    limiter = JoinLimiter(10, clock=clock)
    for i in range(5000):
        limiter.wait(f"10.0.{i // 256}.{i % 256}")
    clock.now += 120.0
    limiter.wait("192.0.2.1")
    assert len(limiter._buckets) < 4096
