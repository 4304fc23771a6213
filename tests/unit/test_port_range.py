"""The auto-port range (``libnet-agent --port-range``) and ``-p`` parsing of the CLI."""

from __future__ import annotations

import click
import pytest

from agent.cli import _port
from agent.config import load
from libnet.driverapi import PortMapping
from libnet.errors import BadRequest, Conflict, InvalidOption, PortsExhausted
from libnet.ports import AUTO_RANGE, PortRegistry, parse_range
from libnet.store.memory import MemoryStore


def test_parse_range() -> None:
    assert parse_range("49153-65535") == AUTO_RANGE
    assert parse_range(" 80 - 80 ") == (80, 80)
    assert parse_range((1, 65535)) == (1, 65535)
    for bad in ("80", "90-80", "0-10", "1-65536", "a-b", "-5", "1.5-3", "", (1,), (True, 2), ("1", "2")):
        with pytest.raises(InvalidOption):
            parse_range(bad)  # type: ignore[arg-type]


def test_agent_flag_reaches_the_controller_config() -> None:
    assert load([], {}).controller_config().port_range == AUTO_RANGE
    assert load(["--port-range", "2000-2001"], {}).controller_config().port_range == (2000, 2001)
    assert load([], {"LIBNET_PORT_RANGE": "3000-3010"}).controller_config().port_range == (3000, 3010)
    with pytest.raises(BadRequest, match="LOW <= HIGH"):
        load(["--port-range", "3000-2000"], {})


async def test_registry_picks_from_its_range_both_ends_included() -> None:
    reg = PortRegistry(MemoryStore(), None, probe=lambda pm: pm.host_port != 2001, auto_range=(2000, 2002))
    got = [(await reg.reserve(ep, [PortMapping(0, 80)]))[0].host_port for ep in ("a", "b")]
    assert got == [2000, 2002]  # 2001: a host process listens there
    with pytest.raises(PortsExhausted, match="2000-2002"):
        await reg.reserve("c", [PortMapping(0, 80)])


async def test_a_held_port_names_its_holder_without_probing() -> None:
    probed = []
    reg = PortRegistry(MemoryStore(), None, probe=lambda pm: probed.append(pm) or True)
    await reg.reserve("a" * 64, [PortMapping(8080, 80)])
    # the holder's own relay may listen on the port now: the next request is told who holds it
    reg.probe = lambda pm: False
    with pytest.raises(Exception, match="already published by endpoint aaaaaaaaaaaa"):
        await reg.reserve("b" * 64, [PortMapping(8080, 81)])
    assert len(probed) == 1


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("80", {"host_port": 0, "container_port": 80, "protocol": "tcp"}),
        ("8080:80", {"host_port": 8080, "container_port": 80, "protocol": "tcp"}),
        ("127.0.0.1:9090:90", {"host_ip": "127.0.0.1", "host_port": 9090, "container_port": 90, "protocol": "tcp"}),
        ("127.0.0.1::90/udp", {"host_ip": "127.0.0.1", "host_port": 0, "container_port": 90, "protocol": "udp"}),
        ("[::1]:9091:90", {"host_ip": "::1", "host_port": 9091, "container_port": 90, "protocol": "tcp"}),
        ("[2001:db8::1]:80:80", {"host_ip": "2001:db8::1", "host_port": 80, "container_port": 80, "protocol": "tcp"}),
        ("[::1]::80", {"host_ip": "::1", "host_port": 0, "container_port": 80, "protocol": "tcp"}),
    ],
)
def test_cli_port_forms(spec: str, want: dict) -> None:
    assert _port(spec) == want


@pytest.mark.parametrize(
    "spec",
    [
        "::1:9091:90",
        "[::1]:90",
        "[127.0.0.1]:1:2",
        "[::1:1:2",
        "[::1]x:1:2",
        "1:2:3:4",
        "a:b",
        "-1",
        "8080:+80",
        "::80",
        "localhost:1:2",
        "",
        "[]:1:2",
        "[::1]:1:2:3",
    ],
)
def test_cli_port_malformed_is_a_usage_error(spec: str) -> None:
    with pytest.raises(click.BadParameter, match=r"\[\[IP:\]HOST:\]CONTAINER|IPv6"):
        _port(spec)


@pytest.mark.parametrize(
    ("held", "asked", "clash"),
    [
        ("0.0.0.0", "203.0.113.11", True),  # every IPv4 address holds each one
        ("203.0.113.11", "0.0.0.0", True),
        ("0.0.0.0", "::", False),  # different families
        ("::", "2001:db8::1", True),
        ("::", "::1", True),
        ("0.0.0.0", "::1", False),
        ("203.0.113.11", "203.0.113.12", False),
        (None, "::", True),  # no host IP: every address of both families
    ],
)
async def test_unspecified_host_ip_is_every_address_of_its_family(held, asked, clash) -> None:
    """Docker's ``-p 0.0.0.0:80:80`` publishes on every IPv4 address, ``[::]`` on every IPv6 one:
    before, "0.0.0.0" was one more address and two endpoints could both hold the port."""
    reg = PortRegistry(MemoryStore(), None, probe=lambda pm: True)
    await reg.reserve("a" * 64, [PortMapping(8080, 80, host_ip=held)])
    if clash:
        with pytest.raises(Exception, match="already published"):
            await reg.reserve("b" * 64, [PortMapping(8080, 80, host_ip=asked)])
    else:
        await reg.reserve("b" * 64, [PortMapping(8080, 80, host_ip=asked)])


@pytest.mark.parametrize(
    "mappings",
    [
        [PortMapping(0, 80), PortMapping(0, 81)],  # before: both got 2000, and their [::1] relays clashed
        [PortMapping(0, 80), PortMapping(0, 90, host_ip="127.0.0.1")],  # before: 2000 twice, :90 unreachable
        [PortMapping(0, 80), PortMapping(2000, 90)],  # the explicit port is not picked for the other
        [PortMapping(0, 80, "udp"), PortMapping(0, 81, "udp")],
    ],
)
async def test_ports_picked_in_one_request_are_distinct(mappings) -> None:
    reg = PortRegistry(MemoryStore(), None, probe=lambda pm: True, auto_range=(2000, 2005))
    got = await reg.reserve("a" * 64, mappings)
    assert [g.container_port for g in got] == [m.container_port for m in mappings]  # order kept
    sockets = [(g.protocol, g.host_port) for g in got]
    assert len(set(sockets)) == len(sockets), got
    assert all(g.host_port == m.host_port for g, m in zip(got, mappings, strict=True) if m.host_port)


def test_time_wait_connections_do_not_hold_a_port() -> None:
    """Breaker: after a client used a port published on [::1] (libnet's relay), the relay's TIME_WAIT
    sockets made the bind probe say "in use by a process" for about a minute; a listener still holds it."""
    import socket

    from libnet.driverapi import PortMapping
    from libnet.ports import bindable

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the relay's (and most servers') listeners
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()  # the server side closes first: its end waits in TIME_WAIT on the port
    cli.close()
    pm = PortMapping(port, 80, "tcp")
    assert not bindable(None, pm)  # still listening
    srv.close()
    assert bindable(None, pm)  # only TIME_WAIT left


async def test_wireguard_ports_are_never_published() -> None:
    """Breaker (issue 20): the bind test let a container publish UDP 51821 (a key rotation's second WireGuard
    port, bound only during a rotation; also picked automatically from 49153-65535) or 51820 while the tunnel
    restarted: the DNAT then took the peers' WireGuard packets, and the rotated host was cut off."""
    from libnet.config import encryption_ports

    reg = PortRegistry(MemoryStore(), None, probe=lambda pm: True, auto_range=(51820, 51822),
                       reserved=encryption_ports(51820))  # fmt: skip
    for port in (51820, 51821):
        with pytest.raises(Conflict, match="reserved: WireGuard"):
            await reg.reserve("a", [PortMapping(port, 80, "udp")])
    assert (await reg.reserve("a", [PortMapping(0, 80, "udp")]))[0].host_port == 51822
    assert (await reg.reserve("b", [PortMapping(51820, 80, "tcp")]))[0].host_port == 51820  # TCP: no clash


def test_encryption_port_must_not_clash_with_vxlan_or_serf() -> None:
    """Breaker (issue 20): --encryption-port 4789 (or 4788: the rotation's 4789) made WireGuard and the VXLAN
    devices fight over one UDP port, and 7946 Serf's; refused at start, saying which."""
    for bad, what in (("4789", "VXLAN"), ("4788", "VXLAN"), ("7946", "Serf"), ("7945", "Serf")):
        with pytest.raises(BadRequest, match=what):
            load(["--encryption-port", bad], {})
    with pytest.raises(BadRequest, match="Serf"):
        load(["--encryption-port", "7000", "--serf-port", "7001"], {})
    assert load(["--encryption-port", "4790"], {}).encryption_port == 4790
