"""A change of the DNS records clears the answer caches of the listeners that hold answers, and
only those (issue 22, attach_bench: every attach changes the records, and clearing every
sandbox's cache made each attach cost more the more sandboxes the host had)."""

from __future__ import annotations

import asyncio
import socket

from dnslib import DNSRecord

from libnet.dns.forwarder import Forwarder
from libnet.dns.records import Entry, Records
from libnet.dns.resolver import Resolver, ResolverConfig
from libnet.dns.server import DnsServer


async def test_a_record_change_clears_the_caches_that_hold_answers() -> None:
    records = Records()
    records.set_network("n1", "front", ["198.51.100.0/24"])
    records.put(Entry.build("e1", "n1", "web", "198.51.100.7/24", None, [], []))
    server = DnsServer(Resolver(records, ResolverConfig()), Forwarder(list), "127.0.0.1", 0, v6_address=None)
    records.listeners.append(server.invalidate)  # as EmbeddedDns wires them
    for sid in ("sb1", "sb2", "sb3"):
        await server.attach(sid, None, frozenset({"n1"}))
    asking, idle = server._listeners["sb1"], server._listeners["sb2"]
    port = asking._udp[0].getsockname()[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    loop = asyncio.get_running_loop()

    async def ask(qid: int) -> str:
        q = DNSRecord.question("web", "A")
        q.header.id = qid
        await loop.sock_sendto(client, q.pack(), ("127.0.0.1", port))
        return str(DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(client, 65535), 2)).rr[0].rdata)

    try:
        assert await ask(1) == "198.51.100.7" and await ask(2) == "198.51.100.7"  # the second from the cache
        assert asking.cache and server.cached == {asking} and not idle.cache  # only the one that answered
        records.put(Entry.build("e1", "n1", "web", "198.51.100.8/24", None, [], []))
        assert not asking.cache and server.cached == set()
        assert await ask(3) == "198.51.100.8"  # no old answer served
        assert server.cached == {asking}
        await server.detach("sb1")
        assert server.cached == set()  # a detached listener is not held
    finally:
        client.close()
        await server.close()
