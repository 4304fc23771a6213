"""Each sandbox's DNS sees only its own world (issue 15, faults 1 and 2).

``dig`` inside sandboxes on a test host (h1); the "upstream" is dnsmasq on
another test host (h2), logging every query it receives, so a test can tell
what reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import subprocess
import uuid

import pytest

from libnet import Controller
from libnet.dns.service import DnsConfig
from libnet.testing.hosts import Testbed, host_config, wait_until

pytestmark = pytest.mark.root

PUBLIC = "198.51.100.201"  # what the upstream answers for its names
GODEV = "198.51.100.202"
GOPHER = "198.51.100.203"


@dataclasses.dataclass
class Upstream:
    address: str
    log: str

    def queries(self) -> list[str]:
        """Every ``query[TYPE] name`` line dnsmasq logged, as ``"TYPE name"``."""
        with open(self.log, errors="replace") as f:
            return [f"{m.group(1)} {m.group(2)}" for m in re.finditer(r"query\[(\w+)\] (\S+) from", f.read())]

    def asked(self, name: str) -> int:
        return sum(1 for q in self.queries() if q.split()[1].lower() == name.lower())


@pytest.fixture
def bed(tmp_path):
    with Testbed(2) as b:
        up = b.hosts[1]
        log = tmp_path / "upstream.log"
        with open(log, "wb") as out:
            b.spawn(
                up.ns,
                [
                    "dnsmasq",
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--pid-file=",
                    "--bind-interfaces",
                    f"--listen-address={up.ipv4}",
                    "--log-queries",
                    "--log-facility=-",
                    f"--address=/public.example.com/{PUBLIC}",
                    f"--address=/go.dev/{GODEV}",
                    f"--address=/gopher/{GOPHER}",
                    f"--address=/gopher.dev/{GOPHER}",
                    "--address=/ready.example/198.51.100.99",
                    "--ptr-record=177.100.51.198.in-addr.arpa,upstream-ptr.example",
                ],
                stdout=out,
                stderr=out,
            )
        b.upstream = Upstream(up.ipv4, str(log))  # type: ignore[attr-defined]
        assert wait_until(lambda: "NOERROR" in dig_sync(b, up.ns, "ready.example", server=up.ipv4), 10)
        yield b


def dig_sync(bed: Testbed, ns: str, *args: str, server: str = "127.0.0.11") -> str:
    try:
        return bed.run(ns, ["dig", f"@{server}", "+time=2", "+tries=1", *args], timeout=15).stdout
    except subprocess.TimeoutExpired:
        return ""


async def dig(bed: Testbed, sb, *args: str) -> str:
    """dig inside the sandbox (on a thread: the event loop must keep serving)."""
    return await asyncio.to_thread(dig_sync, bed, os.path.basename(sb.netns), *args)


def status(out: str) -> str:
    m = re.search(r"status: (\w+)", out)
    return m.group(1) if m else "no answer"


def answers(out: str) -> list[str]:
    section = out.split(";; ANSWER SECTION:\n", 1)
    if len(section) < 2:
        return []
    return [" ".join(line.split()[3:]) for line in section[1].split("\n\n", 1)[0].splitlines()]


@contextlib.asynccontextmanager
async def controller(bed: Testbed, tmp_path):
    cfg = host_config(bed, bed.hosts[0], str(tmp_path))
    cfg = dataclasses.replace(cfg, dns=DnsConfig(upstreams=[bed.upstream.address], upstream_timeout=1.0))  # type: ignore[attr-defined]
    c = await Controller(cfg).start()
    try:
        yield c
    finally:
        await c.close()


async def test_an_internal_only_sandbox_never_forwards(bed: Testbed, tmp_path) -> None:
    """Fault 1 (CVE-2024-29018 kind): no query of an internal-only sandbox reaches the upstream."""
    up: Upstream = bed.upstream  # type: ignore[attr-defined]
    async with controller(bed, tmp_path) as c:
        await c.create_network("sealed", "bridge", ipv4_subnet="198.51.100.0/25", ipv6=False, internal=True)
        await c.create_network("open", "bridge", ipv4_subnet="198.51.100.128/26", ipv6=False)
        inside = await c.create_sandbox(hostname="inside")
        await c.connect("sealed", inside.id)
        both = await c.create_sandbox(hostname="both")
        await c.connect("sealed", both.id)
        await c.connect("open", both.id)

        secret = f"leak-{uuid.uuid4().hex[:12]}.public.example.com"
        for args in ((secret,), (secret, "AAAA"), (secret, "TXT"), (secret, "+tcp"), ("public.example.com",)):
            out = await dig(bed, inside, *args)
            assert status(out) == "REFUSED" and answers(out) == [], out
        assert status(await dig(bed, inside, "-x", "198.51.100.177")) == "REFUSED"
        assert status(await dig(bed, inside, "single-label")) == "REFUSED"
        # its own network's names still resolve, and unknown ones there are NXDOMAIN
        assert answers(await dig(bed, inside, "both")) == [f"A {(await c.endpoint('both', 'sealed')).ipv4[:-3]}"]
        assert status(await dig(bed, inside, "no-such.sealed")) == "NXDOMAIN"

        # on an internal and a normal network: forwarded as usual
        assert answers(await dig(bed, both, "public.example.com")) == [f"A {PUBLIC}"]
        assert up.asked("public.example.com") >= 1
        assert up.asked(secret) == 0 and not any("leak-" in q for q in up.queries())
        assert not any("single-label" in q or "177.100.51.198" in q for q in up.queries())

        # leaving the normal network makes it internal-only: refused from then on
        await c.disconnect("open", both.id)
        assert status(await dig(bed, both, "again." + secret)) == "REFUSED"
        assert up.asked("again." + secret) == 0


async def _go_dev(bed: Testbed, c: Controller, sb) -> None:
    """What a sandbox that is not on network ``dev`` must see, whatever happened elsewhere."""
    up: Upstream = bed.upstream  # type: ignore[attr-defined]
    before = up.asked("go.dev")
    out = await dig(bed, sb, "go.dev")
    assert status(out) == "NOERROR" and answers(out) == [f"A {GODEV}"], out
    assert up.asked("go.dev") == before + 1
    # a container name on a network the sandbox is not on is not libnet's for it either
    assert answers(await dig(bed, sb, "gopher")) == [f"A {GOPHER}"]
    assert answers(await dig(bed, sb, "gopher.dev")) == [f"A {GOPHER}"]
    # nor is the reverse zone of a subnet outside its view
    assert answers(await dig(bed, sb, "-x", "198.51.100.177")) == ["PTR upstream-ptr.example."]


@pytest.mark.parametrize("join_first", [False, True], ids=["query-then-join", "join-then-query"])
async def test_a_network_name_hides_no_domain_from_other_sandboxes(bed: Testbed, tmp_path, join_first) -> None:
    """Fault 2: ``go.dev`` from a sandbox not on network ``dev`` goes upstream, before and after a join to ``dev``."""
    async with controller(bed, tmp_path) as c:
        await c.create_network("other", "bridge", ipv4_subnet="198.51.100.0/25", ipv6=False)
        await c.create_network("dev", "bridge", ipv4_subnet="198.51.100.128/26", ipv6=False)
        asker = await c.create_sandbox(hostname="asker")
        await c.connect("other", asker.id)
        gopher = await c.create_sandbox(hostname="gopher")

        async def join() -> None:
            await c.connect("dev", gopher.id, ipv4="198.51.100.177")

        if join_first:
            await join()
        await _go_dev(bed, c, asker)
        if not join_first:
            await join()
            await _go_dev(bed, c, asker)
        # inside ``dev`` the domain is libnet's: its names answer, unknown ones are NXDOMAIN
        assert answers(await dig(bed, gopher, "gopher.dev")) == ["A 198.51.100.177"]
        assert status(await dig(bed, gopher, "go.dev")) == "NXDOMAIN"
        assert answers(await dig(bed, gopher, "-x", "198.51.100.177")) == ["PTR gopher.dev."]
        # and the asker is unaffected by that
        assert answers(await dig(bed, asker, "go.dev")) == [f"A {GODEV}"]
