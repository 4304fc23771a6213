"""The agent's API under load: GET /v1/networks and connect+disconnect, 8 concurrent clients.

A libnet-agent runs in a test host (SQLite store); 60 networks exist (each
its own default /30 of 198.51.100.0/24, which holds 64: test hosts use
documentation ranges only; 100 before that rule was kept).  Eight
clients on the agent's unix socket then, for a fixed time each:
(a) list the networks as fast as they can, each on its own kept-alive
HTTP/1.1 connection (asyncio streams: aiohttp's client cost twice the agent's
CPU per request and was what this measured on 2 cores; every answer is
checked: decoded and counted, or byte-equal to one that was); (b) each
connect its own sandbox (aiohttp)
to a network and disconnect it again, in a loop.  Reported: requests (or
connect+disconnect pairs) per second over all clients, and the p50/p99
latency of one request (one pair).  No peer is named for this benchmark;
the targets are >= 1,000 GET /v1/networks per second and a connect+disconnect
p99 <= 100 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
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


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> tuple[int, bytes]:
    """GET ``path`` on a kept-alive HTTP/1.1 connection: (status, body by Content-Length)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: libnet\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
    length = {k.strip().lower(): v for k, v in fields.items()}.get(b"content-length")
    if length is None:
        raise RuntimeError(f"answer without Content-Length: {head!r}")
    return int(lines[0].split()[1]), await reader.readexactly(int(length))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(sock: str, n_networks: int, seconds: float, pid: int) -> dict:
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

        checked: list[bytes] = []  # answers decoded and found to list every network

        async def lister(lat: list[float], until: float) -> None:
            reader, writer = await asyncio.open_unix_connection(sock)
            try:
                while time.perf_counter() < until:
                    t = time.perf_counter()
                    status, body = await get(reader, writer, "/v1/networks")
                    lat.append(time.perf_counter() - t)
                    if status != 200 or body not in checked:  # equal bytes to a checked answer: checked
                        assert status == 200 and len(json.loads(body)) == n_networks, (status, body[:200])
                        checked.append(body)
            finally:
                writer.close()

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
        t0, cpu0 = time.perf_counter(), cpu_s(pid)
        await asyncio.gather(*(lister(get_lat, t0 + seconds) for _ in range(CLIENTS)))
        get_rps = len(get_lat) / (time.perf_counter() - t0)
        get_cpu_us = (cpu_s(pid) - cpu0) * 1e6 / len(get_lat)

        progress(f"connect+disconnect, {CLIENTS} clients, {seconds:g} s")
        pair_lat: list[float] = []
        t0, cpu0 = time.perf_counter(), cpu_s(pid)
        await asyncio.gather(*(churner(i, pair_lat, t0 + seconds) for i in range(CLIENTS)))
        pair_rps = len(pair_lat) / (time.perf_counter() - t0)
        pair_cpu_ms = (cpu_s(pid) - cpu0) * 1e3 / len(pair_lat)
    return {
        "list_networks_rps": round(get_rps),
        "list_networks_p50_ms": pct(get_lat, 50),
        "list_networks_p99_ms": pct(get_lat, 99),
        # the agent's CPU per GET: what the machine's load moves least
        "list_networks_agent_cpu_us": round(get_cpu_us),
        "connect_disconnect_rps": round(pair_rps, 1),
        "connect_disconnect_p50_ms": pct(pair_lat, 50),
        "connect_disconnect_p99_ms": pct(pair_lat, 99),
        # the agent's CPU per pair (all its threads): with 8 clients on one event loop a pair
        # waits for about 8 others' worth of it, and it moves less with the machine's load
        "connect_disconnect_agent_cpu_ms": round(pair_cpu_ms, 2),
    }


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    n, seconds = (20, 1.0) if args.quick else (60, 10.0)
    with Testbed(1) as bed, tempfile.TemporaryDirectory() as tmp:
        agent = start_agent(bed, tmp)
        try:
            metrics = asyncio.run(load(agent.socket, n, seconds, agent.proc.pid))  # type: ignore[union-attr]
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
