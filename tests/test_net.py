"""kercr._net: the probe multi-worker training and the distributed search wait for peers with."""

from __future__ import annotations

import socket

import pytest

from kercr._net import bare_host, connect_error, listens


def _free_port(family=socket.AF_INET, host="127.0.0.1") -> int:
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("given", "expected"), [
    ("[::1]", "::1"), ("::1", "::1"), ("127.0.0.1", "127.0.0.1"), (" localhost ", "localhost"), ("[fe80::1", "[fe80::1"),
])
def test_bare_host_strips_only_a_pair_of_brackets(given, expected):
    assert bare_host(given) == expected


def test_listens_tells_a_listening_port_from_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert listens("127.0.0.1", server.getsockname()[1])
        assert listens("127.0.0.1", str(server.getsockname()[1]))  # a port as TF_CONFIG's text gives it
    assert not listens("127.0.0.1", _free_port())


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
def test_listens_takes_an_ipv6_host_in_brackets():
    try:
        server = socket.socket(socket.AF_INET6)
        server.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with server:
        server.listen()
        port = server.getsockname()[1]
        assert listens("[::1]", port) and listens("::1", port)


def test_listens_is_false_for_a_port_that_is_not_a_number_or_a_host_that_does_not_resolve():
    assert not listens("127.0.0.1", "http")
    assert not listens("no-such-host.invalid", 80, timeout=0.5)


def test_connect_error_says_why_and_is_none_when_it_connects():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert connect_error("127.0.0.1", server.getsockname()[1]) is None
    assert "refused" in connect_error("127.0.0.1", _free_port()).lower()
