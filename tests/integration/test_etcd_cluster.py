"""The cluster store as users run it in production (issue 16): a three-member etcd cluster.

One etcd member in each of three test hosts (peers and clients on the hosts'
underlay addresses), an agent on each host with ``--cluster-store
etcd://h1:port,h2:port,h3:port``, one overlay network (IPv4 and IPv6), a
container per host and continuous ping streams of >= 20 packets/s between
them.  Round 1 kills one member that is not the leader during 50 concurrent
connects spread over the three hosts (through the agents' APIs) and starts it
again; round 2 does the same to the leader.  Then: 0 packets lost, 0 duplicate
addresses (the endpoints' and IPAM's audit), and no operation reported
successful and then lost -- every connect that answered 2xx exists afterwards
with the address it was given, every failed one left no endpoint and no
address.  The counts are printed.

The first test checks the same at the store level, without root: create-only
writes from many tasks while a member and then the leader are killed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from agent.cli import AgentError, Client, Unreachable
from libnet.errors import KeyExists, StoreOutcomeUnknown, StoreUnavailable
from libnet.store import open_store
from libnet.testing import cluster
from libnet.testing.agents import AgentProcess
from libnet.testing.cluster import PingStream, ip, place, wait_ping
from libnet.testing.etcd import EtcdCluster, find_etcd
from libnet.testing.hosts import Testbed, wait_until

CONNECTS = 50
DOWN_S = 3.0  # how long a killed member stays down


@pytest.fixture
def need_etcd() -> None:
    if find_etcd() is None:
        pytest.skip("no etcd binary: run scripts/install-system-deps (Debian etcd-server)")


def test_store_writes_survive_member_and_leader_kills(need_etcd) -> None:
    """Create-only writes under member kills: every reported success stands, every failure left nothing."""
    with EtcdCluster([(None, "127.0.0.1")] * 3) as etcd:

        async def main() -> tuple[dict[str, str], list[tuple[str, str]]]:
            store = open_store(etcd.url)
            outcome: dict[str, str] = {}
            wrote: list[tuple[str, str]] = []
            stop = asyncio.Event()

            async def writer(w: int) -> None:
                i = 0
                while not stop.is_set() and i < 100_000:  # bounded by the kills below
                    key, value = f"libnet/test/cl/{w}/{i}", f"{w}-{i}-{secrets.token_hex(4)}"
                    try:
                        await store.atomic_put(key, value.encode(), None)
                        outcome[key] = "ok"
                        wrote.append((key, value))
                    except StoreOutcomeUnknown:
                        outcome[key] = "unknown"  # the store never answered again in time: either way is right
                    except StoreUnavailable:
                        outcome[key] = "unavailable"
                    except KeyExists:
                        outcome[key] = "conflict"  # would mean a lost answer was taken for someone else's write
                    i += 1

            tasks = [asyncio.create_task(writer(w)) for w in range(20)]
            try:
                for victim in ("follower", "leader"):
                    await asyncio.sleep(1)
                    leader = await asyncio.to_thread(etcd.leader)
                    i = leader if victim == "leader" else (leader + 1) % 3
                    etcd.kill(i)
                    await asyncio.sleep(DOWN_S)
                    await asyncio.to_thread(etcd.restart, i)
                    print(f"killed the {victim} (m{i + 1}), started it again; leader now m{etcd.leader() + 1}")
                await asyncio.sleep(1)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
                await store.close()
            return outcome, wrote

        outcome, wrote = asyncio.run(main())
        stored = etcd.get_prefix("libnet/test/cl/")
    counts = {k: sum(1 for v in outcome.values() if v == k) for k in ("ok", "unavailable", "unknown", "conflict")}
    print(f"store writes: {json.dumps(counts)}")
    assert counts["ok"] > 100, counts
    assert counts["conflict"] == 0, counts
    lost = [k for k, v in wrote if stored.get(k) != v.encode()]
    assert not lost, f"{len(lost)} writes reported successful and then lost: {lost[:5]}"
    assert counts["unknown"] <= 5, counts  # a 3 s outage settles within the second deadline
    phantom = [k for k, v in outcome.items() if v in ("unavailable", "conflict") and k in stored]
    assert not phantom, f"{len(phantom)} writes reported failed that stand: {phantom[:5]}"


@pytest.mark.root
def test_member_and_leader_kills_lose_no_packet_and_no_operation(need_etcd, tmp_path) -> None:
    with Testbed(3) as bed, EtcdCluster([(h.ns, h.ipv4) for h in bed.hosts]) as etcd:
        agents = cluster.start_agents(bed, str(tmp_path), etcd.url)
        r = agents[0].cli(
            "network",
            "create",
            "ov",
            "--driver",
            "overlay",
            "--subnet",
            "198.51.100.0/25",
            "--subnet6",
            "2001:db8:16::/64",
        )
        assert r.returncode == 0, r.stderr
        (c1, ep1), (c2, ep2), (c3, ep3) = (place(a) for a in agents)
        pairs = {
            "h1->h3 IPv4": (c1, ip(ep3["ipv4"])),
            "h1->h3 IPv6": (c1, ip(ep3["ipv6"])),
            "h3->h2 IPv4": (c3, ip(ep2["ipv4"])),
            "h2->h1 IPv6": (c2, ip(ep1["ipv6"])),
        }
        for src, addr in pairs.values():
            wait_ping(bed, src, addr)
        # the sandboxes the connects will use: 2 rounds x 50, spread over the three hosts
        clients = [Client(a.socket) for a in agents]
        rounds = [
            [(n % 3, clients[n % 3].request("POST", "/v1/sandboxes", {})["id"]) for n in range(CONNECTS)]
            for _ in range(2)
        ]
        streams = {
            name: PingStream(bed, src, addr, str(tmp_path / f"ping-{i}.txt"))
            for i, (name, (src, addr)) in enumerate(pairs.items())
        }
        results: dict[str, tuple[int, int]] = {}
        outcomes: dict[str, tuple[int, dict | str]] = {}  # sandbox id -> (host index, endpoint or error)
        try:
            time.sleep(2)
            for victim, todo in zip(("follower", "leader"), rounds, strict=True):
                outcomes.update(_round(etcd, agents, clients, victim, todo))
        finally:
            for name, stream in streams.items():
                results[name] = stream.stop()
            print()
            for name, (sent, lost) in results.items():
                print(f"ping {name}: {sent} sent in {streams[name].seconds:.0f}s, {lost} lost")
        for name, (sent, lost) in results.items():
            assert sent >= 20 * streams[name].seconds, f"{name}: only {sent} packets in {streams[name].seconds:.0f}s"
            assert lost == 0, f"{name}: {lost} of {sent} packets lost"
        for a in agents:
            assert wait_until(lambda a=a: a.cli_json("agent", "status")["status"] == "ok", 30, 0.5)
        _audit(bed, agents, clients, outcomes, etcd)
        for a in agents:
            a.stop()


def _round(
    etcd: EtcdCluster, agents: list[AgentProcess], clients: list[Client], victim: str, todo: list[tuple[int, str]]
) -> dict[str, tuple[int, dict | str]]:
    """50 concurrent connects; kill ``victim`` (a follower or the leader) 0.3 s in, start it again."""

    ended: list[float] = []

    def connect(job: tuple[int, str]) -> tuple[str, tuple[int, dict | str]]:
        host, sid = job
        try:
            return sid, (host, clients[host].request("POST", "/v1/networks/ov/connect", {"sandbox": sid}))
        except (AgentError, Unreachable) as exc:
            return sid, (host, str(exc).splitlines()[0])
        finally:
            ended.append(time.monotonic())

    leader = etcd.leader()
    target = leader if victim == "leader" else (leader + 1) % 3
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(todo)) as pool:
        futures = [pool.submit(connect, job) for job in todo]
        time.sleep(0.3)
        killed = time.monotonic()
        etcd.kill(target)
        time.sleep(DOWN_S)
        etcd.restart(target)
        out = dict(f.result(timeout=180) for f in futures)
    ok = sum(1 for _, r in out.values() if isinstance(r, dict))
    errors = sorted({r for _, r in out.values() if isinstance(r, str)})
    in_flight = sum(1 for t in ended if t > killed)
    print(
        f"killed the {victim} (m{target + 1}, leader was m{leader + 1}, now m{etcd.leader() + 1}) during "
        f"{len(todo)} concurrent connects ({in_flight} still in flight at the kill): {ok} succeeded, "
        f"{len(todo) - ok} failed, the last after {max(ended) - t0:.1f}s"
    )
    assert in_flight > 0, "every connect ended before the kill: nothing was tested"
    for e in errors:
        print(f"  refused: {e}")
    return out


AUDIT = """
import asyncio, dataclasses, json, sys
from ipam.ipam import StoreIpam
from libnet.store import open_store

async def main():
    store = open_store(sys.argv[1])
    try:
        print(json.dumps([dataclasses.asdict(a) for a in await StoreIpam(store, store).audit()]))
    finally:
        await store.close()

asyncio.run(main())
"""


def _ipam_audit(bed: Testbed, url: str) -> list[dict]:
    """IPAM's audit of the cluster store, by a process in h1: gRPC connects from threads of its own,
    which must all be in a test host, never in this process's namespace (no underlay there)."""
    r = bed.run(bed.hosts[0].ns, [sys.executable, "-c", AUDIT, url], timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _audit(
    bed: Testbed,
    agents: list[AgentProcess],
    clients: list[Client],
    outcomes: dict[str, tuple[int, dict | str]],
    etcd: EtcdCluster,
) -> None:
    """Every 2xx connect exists with its addresses; every failed one left nothing; no address twice."""
    eps = {e["id"]: e for e in clients[0].request("GET", "/v1/endpoints?network=ov")}
    by_sandbox = {e["sandbox_id"]: e for e in eps.values()}
    problems = []
    for sid, (host, r) in outcomes.items():
        ep = by_sandbox.get(sid)
        if isinstance(r, dict):
            if ep is None or ep["id"] != r["id"]:
                problems.append(f"connect of {sid[:12]} on h{host + 1} answered 2xx and is gone")
            elif (ep["ipv4"], ep["ipv6"]) != (r["ipv4"], r["ipv6"]):
                problems.append(f"endpoint {r['id'][:12]}: {r['ipv4']} {r['ipv6']} became {ep['ipv4']} {ep['ipv6']}")
        elif ep is not None:
            problems.append(f"connect of {sid[:12]} failed ({r}) and left endpoint {ep['id'][:12]}")
    # addresses: the endpoints' own, and IPAM's allocations
    seen: dict[str, str] = {}
    duplicates = 0
    for e in eps.values():
        for fam in ("ipv4", "ipv6"):
            if e[fam]:
                a = ip(e[fam])
                if a in seen:
                    duplicates += 1
                    problems.append(f"address {a} held by endpoints {seen[a][:12]} and {e['id'][:12]}")
                seen[a] = e["id"]
    allocs = _ipam_audit(bed, etcd.url)
    held: dict[str, list[str]] = {}
    for alloc in allocs:
        held.setdefault(ip(alloc["address"]), []).append(alloc["owner"])
        if alloc["owner"] != "gateway" and not alloc["owner"].startswith("aux:") and alloc["owner"] not in eps:
            problems.append(f"leaked address {alloc['address']} of {alloc['owner'][:12]}")
    for a, owner in seen.items():
        if held.get(a) != [owner]:
            problems.append(f"address {a} of endpoint {owner[:12]}: IPAM says {held.get(a)}")
    ok = sum(1 for _, r in outcomes.values() if isinstance(r, dict))
    print(
        f"audit: {len(outcomes)} connects ({ok} succeeded, {len(outcomes) - ok} failed), {len(eps)} endpoints, "
        f"{len(allocs)} IPAM allocations, {duplicates} duplicate addresses, {len(problems)} problems"
    )
    assert not problems, "\n".join(problems)
