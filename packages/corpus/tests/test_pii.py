"""PII redaction: each kind with markers and counts, validated against ipaddress and known card test numbers."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus.pii import PiiRedactor, luhn_ok

R = PiiRedactor()


@pytest.mark.parametrize(("text", "kind", "marker"), [
    ("mail me at jane.doe+tag@mail.example.co.uk today", "email", "<EMAIL>"),
    ("call +1 (415) 555-2671 now", "phone", "<PHONE_NUMBER>"),
    ("call 415-555-2671 now", "phone", "<PHONE_NUMBER>"),
    ("ring +44 20 7946 0958 please", "phone", "<PHONE_NUMBER>"),
    ("host 192.168.10.254 is up", "ipv4", "<IP_ADDRESS>"),
    ("host 2001:db8:85a3::8a2e:370:7334 is up", "ipv6", "<IP_ADDRESS>"),
    ("link-local fe80::1 here", "ipv6", "<IP_ADDRESS>"),
    ("visa 4111 1111 1111 1111 exp", "card", "<CARD_NUMBER>"),
    ("amex 378282246310005 exp", "card", "<CARD_NUMBER>"),
    ("mc 5500-0055-5555-5559 exp", "card", "<CARD_NUMBER>"),
])
def test_redacts(text: str, kind: str, marker: str) -> None:
    out, counts = R(text)
    assert marker in out and counts == {kind: 1}, (out, counts)


@pytest.mark.parametrize("text", [
    "x = data[1::2] + a[::3]", "released 2023-10-05 as 3.11.7", "addr 256.1.1.1 and 1.2.3.4.5",
    "time 12:30:45", "card 4111111111111112 fails Luhn", "id 1234567890123", "n = 5551234",
    "user@localhost", "version 10.0.0.1.2",
])
def test_leaves_non_pii(text: str) -> None:
    out, counts = R(text)
    assert out == text and not counts, (out, counts)


def test_luhn_known_numbers() -> None:
    for good in ("4111111111111111", "5500005555555559", "378282246310005", "6011111111111117", "79927398713"):
        assert luhn_ok(good)
    for bad in ("4111111111111112", "79927398710", "378282246310006"):
        assert not luhn_ok(bad)


@given(st.ip_addresses(v=4))
@settings(max_examples=100, deadline=None)
def test_every_ipv4_redacted(ip: ipaddress.IPv4Address) -> None:
    out, counts = R(f"peer {ip} connected")
    assert out == "peer <IP_ADDRESS> connected" and counts == {"ipv4": 1}


@given(st.ip_addresses(v=6).filter(lambda ip: len([g for g in str(ip).split(":") if g]) >= 3))
@settings(max_examples=100, deadline=None)
def test_ipv6_redacted(ip: ipaddress.IPv6Address) -> None:
    out, counts = R(f"peer {ip} connected")
    assert "<IP_ADDRESS>" in out and str(ip) not in out and counts.get("ipv6", 0) + counts.get("ipv4", 0) >= 1


def test_multiline_counts() -> None:
    text = "a@b.io\nnothing here\nc@d.org and 10.0.0.1\n"
    out, counts = R(text)
    assert out == "<EMAIL>\nnothing here\n<EMAIL> and <IP_ADDRESS>\n" and counts == {"email": 2, "ipv4": 1}
