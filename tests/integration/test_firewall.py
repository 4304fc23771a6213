"""nftables through libnet.kernel.firewall: masquerade, isolation, internal."""

from __future__ import annotations

import sys
import textwrap

import pytest

from libnet.errors import BadRequest
from libnet.kernel import sysctl
from libnet.kernel.firewall import Firewall
from libnet.kernel.netlink import Netlink
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root

SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(20)
    print("ready", flush=True)
    conn, peer = s.accept(); print(peer[0], flush=True); conn.close()
    """
)
CLIENT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()"


def _container(bed: Testbed, bridge: str, gw: str, addr: str, name: str) -> str:
    """A namespace with eth0 on ``bridge`` of host 1, default route via ``gw``."""
    host = bed.hosts[0].ns
    ns = bed.namespace(name)
    with Netlink(host) as nl:
        if not nl.has_link(bridge):
            nl.add_bridge(bridge)
            nl.add_address(bridge, gw)
            nl.set_up(bridge)
        nl.add_veth(f"v-{name}", "eth0", peer_ns=ns)
        nl.set_master(f"v-{name}", bridge)
        nl.set_up(f"v-{name}")
    with Netlink(ns) as c:
        c.add_address("eth0", addr)
        c.set_up("eth0")
        c.add_route("default", via=gw.split("/")[0])
    sysctl.set_forwarding(host, True)
    return ns


def _connect_seen_as(bed: Testbed, client_ns: str, server: str, port: int) -> str | None:
    """Source address the server in host 2 sees for a TCP connect, or None."""
    proc = bed.spawn(bed.hosts[1].ns, [sys.executable, "-c", SERVER, str(port)], stdout=-1, text=True)
    assert proc.stdout.readline().strip() == "ready"
    argv = [sys.executable, "-c", CLIENT, server, str(port)]
    if bed.run(client_ns, argv, timeout=10).returncode != 0:
        return None
    return proc.stdout.readline().strip()


def test_masquerade_shows_host_address(bed: Testbed) -> None:
    c1 = _container(bed, "br0", "198.51.100.1/24", "198.51.100.2/24", "c1")
    h1, h2 = bed.hosts
    # without masquerade host 2 has no way back to 198.51.100.0/24
    assert _connect_seen_as(bed, c1, h2.ipv4, 8080) is None
    with Firewall(h1.ns) as fw:
        fw.masquerade("net1:masq", "198.51.100.0/24", "br0")
        assert fw.keys() == {"net1:masq"}
    assert _connect_seen_as(bed, c1, h2.ipv4, 8081) == h1.ipv4


def test_isolation_drops_bridge_to_bridge(bed: Testbed) -> None:
    c1 = _container(bed, "br-a", "198.51.100.1/25", "198.51.100.2/25", "c1")
    _container(bed, "br-b", "198.51.100.129/25", "198.51.100.130/25", "c2")
    assert bed.ping(c1, "198.51.100.130")
    with Firewall(bed.hosts[0].ns) as fw:
        fw.isolate("isolate:a:b", "br-a", "br-b")
        fw.isolate("isolate:a:b", "br-a", "br-b")  # idempotent: one group of two rules
        assert [r["key"] for r in fw.rules()] == ["isolate:a:b", "isolate:a:b"]
        assert not bed.ping(bed.prefix + "c2", "198.51.100.2", wait=1)
        assert not bed.ping(c1, "198.51.100.130", wait=1)
        fw.remove("isolate:a:b")
        fw.remove("isolate:a:b")  # none left: fine
        assert fw.rules() == []
    assert bed.ping(c1, "198.51.100.130")


def test_internal_network_reaches_nothing_outside(bed: Testbed) -> None:
    c1 = _container(bed, "br-i", "198.51.100.1/24", "198.51.100.2/24", "c1")
    h1, h2 = bed.hosts
    with Firewall(h1.ns) as fw:
        fw.masquerade("net:masq", "198.51.100.0/24", "br-i")
        assert bed.ping(c1, h2.ipv4)
        fw.internal("net:internal", "br-i")
        assert not bed.ping(c1, h2.ipv4, wait=1)
        assert bed.ping(c1, "198.51.100.1")  # its own gateway still answers
        fw.remove("net:internal")
        assert bed.ping(c1, h2.ipv4)
        fw.delete_table()
        fw.delete_table()  # gone: fine
        assert fw.rules() == []
    assert bed.run(h1.ns, ["nft", "list", "tables"]).stdout.strip() == ""


def test_bad_rule_input_changes_nothing(single: Testbed) -> None:
    with Firewall(single.hosts[0].ns) as fw:
        fw.masquerade("keep", "198.51.100.0/24", "br0")
        with pytest.raises(BadRequest):
            fw.masquerade("bad", "198.51.100.0/33", "br0")
        with pytest.raises(BadRequest):
            fw.masquerade("", "198.51.100.0/24", "br0")
        assert fw.keys() == {"keep"}


def test_each_table_is_its_own_and_other_tables_are_never_touched(single: Testbed) -> None:
    """``Firewall(table=...)``: rules, set and delete_table stay inside that table."""
    ns = single.hosts[0].ns
    single.run(ns, ["nft", "add", "table", "inet", "other"], check=True)
    single.run(
        ns, ["nft", "add", "chain", "inet", "other", "c", "{ type filter hook forward priority 5 ; }"], check=True
    )
    single.run(ns, ["nft", "add", "rule", "inet", "other", "c", 'iifname "br0" counter accept'], check=True)
    other = single.run(ns, ["nft", "list", "table", "inet", "other"], check=True).stdout
    with Firewall(ns, table="libnet-aaaaaaaaaaaa") as a, Firewall(ns, table="libnet-bbbbbbbbbbbb") as b:
        a.masquerade("net:1:masq", "198.51.100.0/25", "br0")
        assert a.add_bridge("br0") and not a.add_bridge("br0")  # False: there already, nothing changed
        b.masquerade("net:2:masq", "198.51.100.128/25", "br1")
        b.add_bridge("br1")
        assert (a.keys(), a.bridges()) == ({"net:1:masq"}, {"br0"})
        assert (b.keys(), b.bridges()) == ({"net:2:masq"}, {"br1"})
        a.remove_prefix("net:")
        a.delete_table()
        assert a.rules() == [] and a.bridges() == set()
        assert (b.keys(), b.bridges()) == ({"net:2:masq"}, {"br1"})
        b.delete_table()
    tables = single.run(ns, ["nft", "list", "tables"], check=True).stdout.split()
    assert "libnet-aaaaaaaaaaaa" not in tables and "libnet-bbbbbbbbbbbb" not in tables
    assert single.run(ns, ["nft", "list", "table", "inet", "other"], check=True).stdout == other
    with pytest.raises(BadRequest):
        Firewall(ns, table="bad name; flush ruleset")
