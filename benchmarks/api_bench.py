"""The agent's API under load: GET /v1/networks and connect+disconnect, 8 concurrent clients.

A libnet-agent runs in a test host (SQLite store); 60 networks exist (each
its own default /30 of 198.51.100.0/24, which holds 64: test hosts use
documentation ranges only; 100 before that rule was kept).  Eight
clients on the agent's unix socket (aiohttp) then, for a fixed time each:
(a) list the networks as fast as they can; (b) each connect its own sandbox
to a network and disconnect it again, in a loop.  Reported: requests (or
connect+disconnect pairs) per second over all clients, and the p50/p99
latency of one request (one pair).  No peer is named for this benchmark;
the targets are >= 1,000 GET /v1/networks per second and a connect+disconnect
p99 <= 100 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

import aiohttp

from benchmarks.common import emit, parser, progress, start_agent
from libnet.testing.hosts import Testbed

NAME = "api_bench"
CLIENTS = 8


def pct(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 2)


async def load(sock: str, n_networks: int, seconds: float) -> dict:
    conn = aiohttp.UnixConnector(path=sock, limit=CLIENTS * 2)
    async with aiohttp.ClientSession(connector=conn, base_url="http://libnet") as http:
        progress(f"creating {n_networks} networks")
        for i in range(n_networks):
            async with http.post("/v1/networks", json={"name": f"bench{i}"}) as r:
                assert r.status == 201, await r.text()
        sandboxes = []
        for _ in range(CLIENTS):
            async with http.post("/v1/sandboxes", json={}) as r:
                sandboxes.append((await r.json())["id"])

        async def lister(lat: list[float], until: float) -> None:
            while time.perf_counter() < until:
                t = time.perf_counter()
                async with http.get("/v1/networks") as r:
                    body = await r.json()
                lat.append(time.perf_counter() - t)
                assert len(body) == n_networks

        async def churner(i: int, lat: list[float], until: float) -> None:
            net = f"bench{i}"
            while time.perf_counter() < until:
                t = time.perf_counter()
                async with http.post(f"/v1/networks/{net}/connect", json={"sandbox": sandboxes[i]}) as r:
                    assert r.status == 201, await r.text()
                async with http.post(f"/v1/networks/{net}/disconnect", json={"sandbox": sandboxes[i]}) as r:
                    assert r.status == 204, await r.text()
                lat.append(time.perf_counter() - t)

        progress(f"GET /v1/networks, {CLIENTS} clients, {seconds:g} s")
        get_lat: list[float] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(lister(get_lat, t0 + seconds) for _ in range(CLIENTS)))
        get_rps = len(get_lat) / (time.perf_counter() - t0)

        progress(f"connect+disconnect, {CLIENTS} clients, {seconds:g} s")
        pair_lat: list[float] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(churner(i, pair_lat, t0 + seconds) for i in range(CLIENTS)))
        pair_rps = len(pair_lat) / (time.perf_counter() - t0)
    return {
        "list_networks_rps": round(get_rps),
        "list_networks_p50_ms": pct(get_lat, 50),
        "list_networks_p99_ms": pct(get_lat, 99),
        "connect_disconnect_rps": round(pair_rps, 1),
        "connect_disconnect_p50_ms": pct(pair_lat, 50),
        "connect_disconnect_p99_ms": pct(pair_lat, 99),
    }


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    n, seconds = (20, 1.0) if args.quick else (60, 10.0)
    with Testbed(1) as bed, tempfile.TemporaryDirectory() as tmp:
        agent = start_agent(bed, tmp)
        try:
            metrics = asyncio.run(load(agent.socket, n, seconds))
        finally:
            agent.stop()
    ratios = {
        "list_rps_vs_target_1000": round(metrics["list_networks_rps"] / 1000, 2),
        "connect_disconnect_p99_vs_target_100ms": round(100 / metrics["connect_disconnect_p99_ms"], 2),
    }
    params = {"networks": n, "clients": CLIENTS, "seconds": seconds, "store": "sqlite"}
    return emit(NAME, params, metrics, {}, ratios)


if __name__ == "__main__":
    main()
