"""nftables rule documents (pure JSON, no kernel)."""

from __future__ import annotations

import pytest

from libnet.errors import BadRequest
from libnet.kernel import firewall


def test_masquerade_rule_v4_and_v6() -> None:
    chain, expr = firewall.masquerade_rule("198.51.100.0/24", "br0")
    assert chain == "postrouting"
    assert expr[0]["match"]["left"] == {"payload": {"protocol": "ip", "field": "saddr"}}
    assert expr[0]["match"]["right"] == {"prefix": {"addr": "198.51.100.0", "len": 24}}
    assert expr[1] == {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br0"}}
    assert expr[2] == {"masquerade": None}
    _, expr6 = firewall.masquerade_rule("2001:db8:1::/64", "br0")
    assert expr6[0]["match"]["left"]["payload"]["protocol"] == "ip6"


def test_isolation_is_both_ways_and_internal_in_and_out() -> None:
    rules = firewall.drop_between_rules("br-a", "br-b")
    pairs = [(r[1][0]["match"]["right"], r[1][1]["match"]["right"]) for r in rules]
    assert pairs == [("br-a", "br-b"), ("br-b", "br-a")]
    assert all(r[1][-1] == {"drop": None} for r in rules + firewall.internal_rules("br-i"))


def test_invalid_subnet_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        firewall.masquerade_rule("198.51.100.1/24", "br0")  # host bits set
    with pytest.raises(BadRequest):
        firewall.masquerade_rule("nonsense", "br0")
