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


def _chains(rules: list) -> list[str]:
    return [chain for chain, _ in rules]


def test_port_rules_dnat_hairpin_and_self_masquerade() -> None:
    rules = firewall.port_rules(8080, "198.51.100.2", 80, "tcp", "br0")
    assert _chains(rules) == ["prerouting", "output", "postrouting", "postrouting"]
    assert rules[0][1][-1] == {"dnat": {"family": "ip", "addr": "198.51.100.2", "port": 80}}
    # other containers of the bridge (routed: iif and oif the bridge)
    assert rules[2][1][:2] == [firewall._meta("iifname", "==", "br0"), firewall._meta("oifname", "==", "br0")]
    # a container to itself (Docker: -s C -d C --dport P -j MASQUERADE): no interface match, since with
    # br_netfilter the frame is bridged back and has no input interface in postrouting
    own = rules[3][1]
    assert not any("meta" in str(e) for e in own)
    assert own[0]["match"]["left"] == {"payload": {"protocol": "ip", "field": "saddr"}}
    assert own[0]["match"]["right"] == own[1]["match"]["right"] == "198.51.100.2"
    assert own[-1] == {"masquerade": None}


def test_port_rules_ipv6_output_leaves_loopback_to_the_relay() -> None:
    rules = firewall.port_rules(8080, "2001:db8:14::2", 80, "tcp", "br0")
    output = dict(rules)["output"]
    assert {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "::1"}} in output
    # published on ::1 only: no rule at all (a relay serves it)
    assert firewall.port_rules(9091, "2001:db8:14::2", 90, "tcp", "br0", "::1") == []


def test_port_rules_on_ipv4_loopback_have_no_prerouting_dnat() -> None:
    rules = firewall.port_rules(9090, "198.51.100.2", 90, "udp", "br0", "127.0.0.1")
    assert _chains(rules) == ["output", "postrouting", "postrouting"]
    daddr = {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.0.0.1"}}
    assert daddr in rules[0][1]
    with pytest.raises(BadRequest):
        firewall.port_rules(9090, "198.51.100.2", 90, "tcp", "br0", "::1")  # versions differ


def test_localhost_rules_masquerade_loopback_sources_and_guard_127() -> None:
    (post_chain, post), (in_chain, guard) = firewall.localhost_rules("br0")
    loopback = {"prefix": {"addr": "127.0.0.0", "len": 8}}
    assert post_chain == "postrouting" and in_chain == "input"
    assert post == [
        firewall._meta("oifname", "==", "br0"),
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": loopback}},
        {"masquerade": None},
    ]
    assert guard[0] == firewall._meta("iifname", "==", "br0")
    assert guard[1]["match"]["right"] == loopback
    assert guard[2]["match"] == {
        "op": "!=",
        "left": {"ct": {"key": "state"}},
        "right": {"set": ["established", "related"]},
    }
    assert guard[-1] == {"drop": None}
    assert "input" in firewall.CHAINS


def test_unspecified_host_ip_matches_every_local_address_of_its_family() -> None:
    """``-p 0.0.0.0:80:80``: before, the DNAT matched daddr 0.0.0.0, which no packet has."""
    from libnet.kernel.firewall import port_rules

    rules = port_rules(8080, "198.51.100.2", 80, "tcp", "br0", "0.0.0.0")
    text = repr(rules)
    assert "0.0.0.0" not in text and "'local'" in text and "ipv4" in text
