"""Chaos: three agents, random operations, SIGKILLs at random moments (issue 13).

Each run prints its seed (``LIBNET_CHAOS_SEED=N`` replays one).  After the
storm and a final restart of every agent, the kernel and the stores must be
consistent: no leaked link, namespace, rule or address, no stuck endpoint, no
duplicate address cluster-wide, and every surviving container pings its
peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import threading
import time

import pytest

from agent.cli import AgentError, Client, Unreachable
from ipam.ipam import StoreIpam
from libnet import ownership
from libnet.cluster.serf import new_key
from libnet.kernel.netlink import Netlink
from libnet.kernel.netns import list_names, run_in
from libnet.store import open_store
from libnet.testing.agents import AgentProcess
from libnet.testing.etcd import EtcdServer, find_etcd
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root
OPS = int(os.environ.get("LIBNET_CHAOS_OPS", "100"))
MIN_KILLS = 30
DEADLINE = 600.0  # seconds for one storm


@pytest.fixture
def bed():
    with Testbed(4) as b:  # h4 holds etcd
        yield b


@contextlib.contextmanager
def _cluster_store(kind: str, bed: Testbed, tmp_path):
    if kind == "sqlite":
        yield f"sqlite://{tmp_path}/cluster.db"
        return
    if find_etcd() is None:
        pytest.skip("no etcd binary: run scripts/install-system-deps")
    with EtcdServer(netns=bed.hosts[3].ns, host=bed.hosts[3].ipv4) as etcd:
        yield etcd.url


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


class Host:
    """One agent and what the test needs to know about it."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.client = Client(agent.socket, timeout=30)

    @property
    def name(self) -> str:
        return self.agent.host.name

    @property
    def instance(self) -> str:
        with open(os.path.join(self.agent.dir, ownership.INSTANCE_FILE)) as f:
            return f.read().strip()

    def api(self, method: str, url: str, body: dict | None = None):
        return self.client.request(method, url, body)

    def restart(self) -> None:
        self.agent.kill()
        self.agent.start(timeout=60)


def _operation(rng: random.Random, host: Host) -> tuple[str, str, dict | None]:
    """A random operation for ``host`` as (method, url, body), from its current state."""
    sandboxes = host.api("GET", "/v1/sandboxes")
    networks = {n["name"] for n in host.api("GET", "/v1/networks")}
    bridge = f"br-{host.name}"
    if bridge not in networks and rng.random() < 0.5:
        return "POST", "/v1/networks", {"name": bridge, "ipv6": True}
    if bridge in networks and rng.random() < 0.05:
        return "DELETE", f"/v1/networks/{bridge}", None  # refused while it has endpoints: fine
    roll = rng.random()
    if not sandboxes or (roll < 0.2 and len(sandboxes) < 6):
        return "POST", "/v1/sandboxes", {}
    sb = rng.choice(sandboxes)
    if roll < 0.6:
        net = rng.choice(["ov", bridge])
        return "POST", f"/v1/networks/{net}/connect", {"sandbox": sb["id"]}
    if roll < 0.85 and sb["endpoints"]:
        ep = host.api("GET", f"/v1/endpoints/{rng.choice(sb['endpoints'])}")
        return "POST", f"/v1/networks/{ep['network_id']}/disconnect", {"sandbox": sb["id"]}
    return "DELETE", f"/v1/sandboxes/{sb['id']}", None


def _storm(hosts: list[Host], seed: int) -> int:
    rng = random.Random(seed)
    kills = 0
    outcomes: dict[str, int] = {}
    refusals: set[str] = set()
    deadline = time.monotonic() + DEADLINE
    for i in range(OPS):
        assert time.monotonic() < deadline, f"storm took over {DEADLINE} s (seed {seed})"
        host = rng.choice(hosts)
        method, url, body = _operation(rng, host)
        must_kill = OPS - i <= MIN_KILLS - kills
        kill = must_kill or rng.random() < 0.4
        delay = rng.uniform(0, 0.08)
        result: list[object] = []

        def call(host=host, method=method, url=url, body=body, result=result) -> None:
            try:
                result.append(host.api(method, url, body))
            except (AgentError, Unreachable) as exc:  # refused, or killed under it
                result.append(exc)

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        if kill:
            time.sleep(delay)
            host.agent.kill()
            kills += 1
        worker.join(60)
        assert not worker.is_alive(), f"{method} {url} hung (seed {seed})"
        what = f"{method} {url.split('/')[2]}{'/' + url.split('/')[-1] if url.count('/') > 3 else ''}"
        status = "ok" if result and not isinstance(result[0], Exception) else type(result[0]).__name__
        outcomes[f"{what} {status}"] = outcomes.get(f"{what} {status}", 0) + 1
        if result and isinstance(result[0], AgentError):
            refusals.add(f"{what}: {str(result[0]).splitlines()[0][:120]}")
        if kill:
            host.agent.start(timeout=60)
    print("outcomes:", json.dumps(outcomes, sort_keys=True))
    print("refusals:", *sorted(refusals), sep="\n  ")
    return kills


def _audit_store(url: str, ns: str) -> list:
    """IPAM's allocations, read from inside test host ``ns`` (where etcd listens)."""

    async def run():
        store = open_store(url)
        try:
            return await StoreIpam(store, store).audit()
        finally:
            await store.close()

    return run_in(ns, asyncio.run, run())


def _check(bed: Testbed, hosts: list[Host], cluster_url: str, seed: int) -> None:
    problems: list[str] = []
    all_eps: dict[str, dict] = {}
    for h in hosts:
        inst = h.instance
        nets = {n["id"]: n for n in h.api("GET", "/v1/networks")}
        eps = {e["id"]: e for e in h.api("GET", "/v1/endpoints")}
        sbs = {s["id"]: s for s in h.api("GET", "/v1/sandboxes")}
        for ep in eps.values():
            nw = nets.get(ep["network_id"])
            if nw is None:
                problems.append(f"{h.name}: endpoint {ep['name']} on a missing network")
                continue
            if nw["scope"] == "local" or ep["node"] == h.name:
                all_eps[ep["id"]] = {**ep, "host": h, "network": nw["name"]}
                if not ep["sandbox_id"] or ep["connecting"] or ep["leaving"] or ep["removing"]:
                    problems.append(f"{h.name}: stuck endpoint {ep['name']} {ep['id'][:12]}: {ep}")
                elif ep["sandbox_id"] not in sbs:
                    problems.append(f"{h.name}: endpoint {ep['id'][:12]} joined to a missing sandbox")
        for nw in nets.values():
            if nw["removing"]:
                problems.append(f"{h.name}: network {nw['name']} stuck being deleted")
        for sb in sbs.values():
            if sb["removing"]:
                problems.append(f"{h.name}: sandbox {sb['id'][:12]} stuck being deleted")
        # namespaces: exactly the stored sandboxes' (the test gives every agent its own prefix)
        prefix = f"{bed.prefix}{h.name}-sb-"
        present = {f"/run/netns/{n}" for n in list_names(prefix)}
        stored = {s["netns"] for s in sbs.values()}
        if present != stored:
            problems.append(f"{h.name}: namespaces {sorted(present ^ stored)} differ from the store")
        # links in the host namespace marked by this instance
        joined_here = {e["id"] for e in eps.values() if e["sandbox_id"] in sbs}
        with Netlink(h.agent.host.ns) as nl:
            for link in nl.links():
                mark = ownership.Mark.parse(link.alias)
                if mark is None or mark.instance != inst:
                    continue
                if mark.kind == "net" and mark.owner not in nets:
                    problems.append(f"{h.name}: leaked bridge {link.name} of network {mark.owner[:12]}")
                if mark.kind == "ep" and mark.owner not in joined_here:
                    problems.append(f"{h.name}: leaked veth {link.name} of endpoint {mark.owner[:12]}")
        # rules in the instance's table
        out = bed.run(h.agent.host.ns, ["nft", "-j", "list", "table", "inet", ownership.firewall_table(inst)])
        if out.returncode == 0:
            for item in json.loads(out.stdout)["nftables"]:
                comment = item.get("rule", {}).get("comment", "")
                if not comment.startswith("libnet:"):
                    continue
                kind, _, rest = comment[len("libnet:") :].partition(":")
                owner = rest.split(":", 1)[0]
                if (kind == "net" and owner not in nets) or (kind == "ep" and owner not in eps):
                    problems.append(f"{h.name}: leaked rule {comment}")
    # addresses: every allocation belongs to a live endpoint, no address twice
    seen: dict[tuple[str, str], str] = {}
    for ep in all_eps.values():
        for fam in ("ipv4", "ipv6"):
            if ep[fam]:
                key = (ep["network_id"], _ip(ep[fam]))
                if key in seen and seen[key] != ep["id"]:
                    problems.append(f"duplicate address {key[1]}: endpoints {seen[key][:12]} and {ep['id'][:12]}")
                seen[key] = ep["id"]
    for alloc in _audit_store(cluster_url, hosts[0].agent.host.ns):
        if alloc.owner not in ("gateway",) and not alloc.owner.startswith("aux:") and alloc.owner not in all_eps:
            problems.append(f"leaked address {alloc.address} of {alloc.owner[:12]} in {alloc.pool_id}")
    for h in hosts:
        for alloc in _audit_store(f"sqlite://{h.agent.dir}/store.db", h.agent.host.ns):
            if alloc.owner != "gateway" and not alloc.owner.startswith("aux:") and alloc.owner not in all_eps:
                problems.append(f"{h.name}: leaked address {alloc.address} of {alloc.owner[:12]}")
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)
    print(f"consistent: {len(all_eps)} endpoints, {sum(len(h.api('GET', '/v1/sandboxes')) for h in hosts)} sandboxes")

    # every surviving container reaches a peer on each of its networks
    by_net: dict[str, list[dict]] = {}
    for ep in all_eps.values():
        by_net.setdefault(ep["network_id"], []).append(ep)
    for members in by_net.values():
        for a, b in zip(members, members[1:] + members[:1], strict=True):
            if a is b:
                continue
            src = os.path.basename(a["host"].api("GET", f"/v1/sandboxes/{a['sandbox_id']}")["netns"])
            ok = any(bed.ping(src, _ip(b["ipv4"]), wait=1) for _ in range(10))
            assert ok, f"seed {seed}: {a['name']} on {a['host'].name} cannot reach {b['name']} on {b['host'].name}"


@pytest.mark.parametrize("store", ["sqlite", "etcd"])
def test_random_operations_with_kills_leave_a_consistent_cluster(bed: Testbed, tmp_path, store: str) -> None:
    seed = int(os.environ.get("LIBNET_CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed {seed} ({store}); replay with LIBNET_CHAOS_SEED={seed}")
    with _cluster_store(store, bed, tmp_path) as url:
        key = new_key()
        first = bed.hosts[0].ipv4
        hosts = [
            Host(
                AgentProcess(
                    bed,
                    h,
                    "--cluster-store",
                    url,
                    "--advertise",
                    h.ipv4,
                    "--join",
                    first,
                    "--cluster-key",
                    key,
                    "--peer-grace-period",
                    "30",
                    state_dir=str(tmp_path / h.name),
                ).start()
            )
            for h in bed.hosts[:3]
        ]
        try:
            hosts[0].api("POST", "/v1/networks", {"name": "ov", "driver": "overlay", "ipv4_subnet": "198.51.100.0/25"})
            kills = _storm(hosts, seed)
            assert kills >= MIN_KILLS
            for h in hosts:  # the final restart
                h.restart()
            _check(bed, hosts, url, seed)
        finally:
            for h in hosts:
                h.agent.stop()
