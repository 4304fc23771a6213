"""Every join repeats its network to the DNS records: the same network again costs no parsing,
and a changed one still takes effect."""

from __future__ import annotations

import ipaddress

import pytest

from libnet.dns import records as records_mod
from libnet.dns.records import Records


def test_the_same_network_again_is_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real = ipaddress.ip_network

    def counting(text: str, strict: bool = True) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        parsed.append(text)
        return real(text, strict=strict)

    monkeypatch.setattr(records_mod.ipaddress, "ip_network", counting)
    r = Records()
    changes: list[int] = []
    r.listeners.append(lambda: changes.append(1))
    for _ in range(3):
        r.set_network("n1", "front", ["198.51.100.0/24", None, "2001:db8:1::/64"])
    assert parsed == ["198.51.100.0/24", "2001:db8:1::/64"] and len(changes) == 1
    r.set_network("n1", "front", ["198.51.100.0/24", "2001:db8:1::/64"], external=False)
    assert len(changes) == 2 and not r.forwards(frozenset({"n1"}))
    r.set_network("n1", "back", ["198.51.100.0/24", "2001:db8:1::/64"], external=False)
    assert len(changes) == 3 and r.network_name("n1") == "back"
    r.remove_network("n1")
    assert r.network_name("n1") == "n1"
    r.set_network("n1", "back", ["198.51.100.0/24", "2001:db8:1::/64"], external=False)
    assert r.network_name("n1") == "back" and len(changes) == 5
