"""Serf gossip through libnet: broadcast latency to the last host, failure
detection, memory per agent, and what libnet's client adds.

For N = 10 and N = 30 test hosts (namespaces on one switch), one supervised
Serf agent each (``lan`` profile, encrypted gossip).  Every host reads the
event stream twice: through libnet's asyncio :class:`SerfClient`, and through
a raw socket on a thread of its own (blocking reads, msgpack decoding, no
event loop) -- the peer.  Each broadcast is timed from the send until the
last of the other N-1 hosts has it, both ways; the client's overhead is
libnet's arrival time minus the raw reader's, per host and event.  Failure
detection: SIGKILL one agent (no restart) and time until every other host's
stream reports ``member-failed``.  Memory: RSS of the agent processes.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import tempfile
import threading
import time

import msgpack

from benchmarks.common import emit, parser, progress, require
from libnet.cluster.agent import SerfAgent, SerfAgentConfig
from libnet.cluster.serf import new_key
from libnet.kernel import netns
from libnet.testing.hosts import Testbed

NAME = "gossip_bench"


class RawReader(threading.Thread):
    """The peer: a blocking socket reading the agent's event stream, no asyncio."""

    def __init__(self, ns: str, port: int, auth: str) -> None:
        super().__init__(daemon=True)
        self.sock = netns.open_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(0.5)
        self.auth = auth
        self.arrivals: dict[bytes, float] = {}
        self.failed: dict[str, float] = {}
        self.stop = False

    def run(self) -> None:
        send = lambda *objs: self.sock.sendall(b"".join(msgpack.packb(o) for o in objs))  # noqa: E731
        send({"Command": "handshake", "Seq": 1}, {"Version": 1})
        send({"Command": "auth", "Seq": 2}, {"AuthKey": self.auth})
        send({"Command": "stream", "Seq": 3}, {"Type": "user,member-failed"})
        unpacker = msgpack.Unpacker(raw=False)
        while not self.stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            now = time.perf_counter()
            unpacker.feed(data)
            for obj in unpacker:
                if obj.get("Event") == "user":
                    self.arrivals[bytes(obj["Payload"])] = now
                elif obj.get("Event") == "member-failed":
                    for m in obj.get("Members", []):
                        self.failed.setdefault(m["Name"], now)
        self.sock.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def run_cluster(n: int, events: int, detect: bool) -> dict:
    with Testbed(n) as bed, tempfile.TemporaryDirectory() as tmp:
        key = new_key()
        agents = []
        progress(f"n={n}: starting {n} serf agents")
        for h in bed.hosts:
            cfg = SerfAgentConfig(
                node=h.name,
                bind=h.ipv4,
                state_dir=f"{tmp}/{h.name}",
                encrypt_key=key,
                tags={"vtep": h.ipv4},
                netns=h.ns,
                join=[] if h is bed.hosts[0] else [bed.hosts[0].ipv4],
            )
            agent = SerfAgent(cfg)
            await agent.start()
            agents.append(agent)
        try:
            deadline = time.monotonic() + 60
            while sum(m.status == "alive" for m in await agents[-1].client.members()) < n:
                if time.monotonic() > deadline:
                    raise SystemExit("serf cluster did not converge in 60 s")
                await asyncio.sleep(0.2)
            progress(f"n={n}: converged; {events} broadcasts")
            receivers = agents[1:]
            libnet_arrivals: list[dict[bytes, float]] = [{} for _ in receivers]
            failed_at: list[dict[str, float]] = [{} for _ in receivers]

            async def listen(i: int, agent: SerfAgent) -> None:
                async for rec in agent.client.stream("user,member-failed"):
                    now = time.perf_counter()
                    if rec.get("Event") == "user":
                        libnet_arrivals[i][rec["Payload"]] = now
                    else:
                        for m in rec.get("Members", []):
                            failed_at[i].setdefault(m.name, now)

            tasks = [asyncio.ensure_future(listen(i, a)) for i, a in enumerate(receivers)]
            raws = [RawReader(a.config.netns, a.config.rpc_port, a.config.rpc_auth) for a in receivers]
            for r in raws:
                r.start()
            await asyncio.sleep(1)
            sent: dict[bytes, float] = {}
            for k in range(events):
                tag = f"e{k}".encode()
                sent[tag] = time.perf_counter()
                await agents[0].client.event("bench", tag)
                await asyncio.sleep(0.5)
            # every broadcast at every receiver, both ways of reading, or 10 s (a loaded machine
            # delays gossip: a fixed 2 s once counted a late event as lost)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(
                tag in a for tag in sent for a in [*libnet_arrivals, *(r.arrivals for r in raws)]
            ):
                await asyncio.sleep(0.1)
            last_libnet, last_raw, overhead = [], [], []
            for tag, t0 in sent.items():
                lib = [a.get(tag) for a in libnet_arrivals]
                raw = [r.arrivals.get(tag) for r in raws]
                if None in lib or None in raw:
                    continue  # a lost event (rare with gossip); reported as delivered count
                last_libnet.append(max(lib) - t0)
                last_raw.append(max(raw) - t0)
                overhead += [a - b for a, b in zip(lib, raw, strict=True)]
            result = {
                "delivered": len(last_libnet),
                "sent": events,
                "last_host_p50_ms": round(pct(last_libnet, 50) * 1000, 1),
                "last_host_p99_ms": round(pct(last_libnet, 99) * 1000, 1),
                "raw_last_host_p50_ms": round(pct(last_raw, 50) * 1000, 1),
                "raw_last_host_p99_ms": round(pct(last_raw, 99) * 1000, 1),
                "client_overhead_p50_ms": round(pct(overhead, 50) * 1000, 3),
                "agent_rss_mib": round(statistics.mean(rss_kib(a.pid) for a in agents) / 1024, 1),
            }
            if detect:
                victim = agents[-1]
                progress(f"n={n}: SIGKILL {victim.config.node}, waiting for member-failed everywhere")
                t0 = time.perf_counter()
                victim.kill(restart=False)
                deadline = time.monotonic() + 60
                while not all(victim.config.node in f for f in failed_at[:-1]):
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                seen = [f[victim.config.node] for f in failed_at[:-1] if victim.config.node in f]
                result["failure_detection_s"] = round(max(seen) - t0, 2) if seen else None
            for t in tasks:
                t.cancel()
            for r in raws:
                r.stop = True
            return result
        finally:
            await asyncio.gather(*(a.stop(leave=False) for a in agents), return_exceptions=True)


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    require("serf", "serf")
    sizes, events = ([3, 5], 5) if args.quick else ([10, 30], 20)
    metrics: dict = {}
    for i, n in enumerate(sizes):
        metrics[f"n{n}"] = asyncio.run(run_cluster(n, events, detect=i == 0))
    first = metrics[f"n{sizes[0]}"]
    metrics["failure_detection_s"] = first.pop("failure_detection_s")
    peers = {
        k: {"raw_last_host_p50_ms": v["raw_last_host_p50_ms"], "raw_last_host_p99_ms": v["raw_last_host_p99_ms"]}
        for k, v in metrics.items()
        if k.startswith("n")
    }
    ratios = {
        "client_overhead_p50_ms": max(v["client_overhead_p50_ms"] for k, v in metrics.items() if k.startswith("n"))
    }
    params = {"hosts": sizes, "broadcasts": events, "profile": "lan", "encrypted": True}
    return emit(NAME, params, metrics, peers, ratios)


if __name__ == "__main__":
    main()
