"""Through real agents: kills during disconnect leave nothing stuck, reconcile on
one host never frees another host's addresses, a refused create writes
nothing (issue 13, faults 5, 6 and 9)."""

from __future__ import annotations

import contextlib
import ipaddress
import random
import threading
import time

import pytest

from agent.cli import AgentError, Client, Unreachable
from libnet.cluster.serf import new_key
from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


@pytest.fixture
def bed():
    with Testbed(3) as b:
        yield b


def test_kills_during_disconnect_leave_no_stuck_endpoint(bed: Testbed, tmp_path) -> None:
    """Fault 5: SIGKILL at random moments of ``disconnect``, 12 times; after
    each restart the sandbox can connect again (same name), and at the end
    nothing is stuck and ``network rm`` works."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    agent = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "h1")).start()
    api = Client(agent.socket, timeout=30)
    try:
        api.request("POST", "/v1/networks", {"name": "front", "ipv4_subnet": "198.51.100.0/24"})
        sandboxes = [api.request("POST", "/v1/sandboxes", {"hostname": f"b{i}"})["id"] for i in range(3)]
        for sid in sandboxes:
            api.request("POST", "/v1/networks/front/connect", {"sandbox": sid})
        for i in range(12):
            sid = sandboxes[i % 3]
            worker = threading.Thread(
                target=_quietly, args=(api, "POST", "/v1/networks/front/disconnect", {"sandbox": sid}), daemon=True
            )
            worker.start()
            time.sleep(rng.uniform(0, 0.05))
            agent.kill()
            worker.join(30)
            agent.start(timeout=60)
            eps = api.request("GET", "/v1/endpoints")
            stuck = [e for e in eps if not e["sandbox_id"] or e["removing"] or e["leaving"] or e["connecting"]]
            assert not stuck, f"seed {seed}: stuck after kill {i}: {stuck}"
            if not any(e["sandbox_id"] == sid for e in eps):  # the disconnect went through (or was finished)
                ep = api.request("POST", "/v1/networks/front/connect", {"sandbox": sid})
                assert ep["name"] == f"b{i % 3}"
        for sid in sandboxes:
            api.request("DELETE", f"/v1/sandboxes/{sid}")
        api.request("DELETE", "/v1/networks/front")
        assert api.request("GET", "/v1/endpoints") == []
    finally:
        agent.stop()


def _quietly(api: Client, method: str, url: str, body: dict | None) -> None:
    with contextlib.suppress(AgentError, Unreachable):  # killed under it
        api.request(method, url, body)


def test_reconcile_during_connects_on_other_hosts_frees_nothing_live(bed: Testbed, tmp_path) -> None:
    """Fault 6: host 1 reconciles over and over while hosts 2 and 3 connect
    containers to one overlay (global IPAM in a shared store): no live
    address is freed, no address or MAC is handed out twice."""
    key = new_key()
    url = f"sqlite://{tmp_path}/cluster.db"
    agents = [
        AgentProcess(
            bed,
            h,
            "--cluster-store",
            url,
            "--advertise",
            h.ipv4,
            "--join",
            bed.hosts[0].ipv4,
            "--cluster-key",
            key,
            state_dir=str(tmp_path / h.name),
        ).start()
        for h in bed.hosts
    ]
    apis = [Client(a.socket, timeout=60) for a in agents]
    try:
        apis[0].request(
            "POST",
            "/v1/networks",
            {"name": "ov", "driver": "overlay", "ipv4_subnet": "198.51.100.0/24", "internal": True},
        )
        done = threading.Event()
        removed: list[str] = []

        def reconcile_loop() -> None:
            for _ in range(200):
                if done.is_set():
                    return
                removed.extend(apis[0].request("POST", "/v1/reconcile")["removed"])

        def connect_many(api: Client, n: int) -> None:
            for _ in range(n):
                sid = api.request("POST", "/v1/sandboxes", {})["id"]
                api.request("POST", "/v1/networks/ov/connect", {"sandbox": sid})

        reconciler = threading.Thread(target=reconcile_loop, daemon=True)
        connectors = [threading.Thread(target=connect_many, args=(api, 12), daemon=True) for api in apis[1:]]
        reconciler.start()
        for t in connectors:
            t.start()
        for t in connectors:
            t.join(240)
            assert not t.is_alive()
        done.set()
        reconciler.join(60)
        assert not [line for line in removed if "address" in line or "name reservation" in line], removed
        eps = apis[0].request("GET", "/v1/endpoints?network=ov")
        assert len(eps) == 24
        assert len({_ip(e["ipv4"]) for e in eps}) == 24 and len({e["mac"] for e in eps}) == 24
    finally:
        for a in agents:
            a.stop()


def test_a_refused_overlay_create_writes_nothing(bed: Testbed, tmp_path) -> None:
    """Fault 9: without a cluster, ``network create --driver overlay`` is refused
    and leaves no key in the store (no ``ipam/global/...``)."""
    agent = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "h1")).start()
    try:
        before = _keys(agent)
        r = agent.cli("network", "create", "ov", "--driver", "overlay")
        assert r.returncode == 1 and "cluster" in r.stderr, r.stderr
        assert _keys(agent) == before
        assert not [k for k in _keys(agent) if "/ipam/global/" in k]
    finally:
        agent.stop()


def _keys(agent: AgentProcess) -> list[str]:
    import asyncio

    from libnet.store import open_store

    async def run() -> list[str]:
        store = open_store(f"sqlite://{agent.dir}/store.db")
        try:
            return [p.key for p in await store.list("libnet/")]
        finally:
            await store.close()

    return asyncio.run(run())
