"""libnet as Docker's network plugin vs Docker's own bridge driver, same dockerd, same run.

One test host with a libnet-agent and a real dockerd (libnet.testing.docker).
Two dual-stack networks: ``-d libnet`` and Docker's ``-d bridge``.

- connect: ``POST /networks/ID/connect`` then ``/disconnect`` of a running
  container, through Docker's API (one HTTP request each, no CLI start-up),
  alternating the two drivers; p50/p90 of connect+disconnect.
- run share: ``docker run --rm IMAGE true`` on each network minus the same
  with ``--network none`` (interleaved), medians: the network's share of a run.

Keys: ``ratios.connect_vs_docker_bridge`` (libnet / Docker; target <= 1.0) and
``ratios.run_share_vs_docker_bridge``.
"""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import time

from benchmarks.common import emit, parser, progress

NAME = "docker_bench"


class _Api:
    """Docker's API over its unix socket (one connection per request: as the CLI does)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def post(self, url: str, body: dict) -> None:
        conn = http.client.HTTPConnection("docker", timeout=60)
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.connect(self.path)
        conn.request("POST", url, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        if r.status >= 300:
            raise RuntimeError(f"docker API {url}: {r.status} {data[:300]!r}")


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> dict:
    p = parser(NAME, __doc__)
    p.add_argument("-n", type=int, default=None, help="samples per figure (default 30; --quick: 20 and 5 runs)")
    args = p.parse_args()
    from libnet.testing.agents import AgentProcess
    from libnet.testing.docker import IMAGE, DockerEngine, missing
    from libnet.testing.hosts import Testbed

    reason = missing()
    if reason:
        raise SystemExit(f"docker_bench {reason}")
    n_connect = args.n or (20 if args.quick else 30)
    n_run = 5 if args.quick and not args.n else n_connect
    with Testbed(1) as bed:
        host = bed.hosts[0]
        agent = AgentProcess(bed, host).start()
        eng = DockerEngine(bed, host, agent.plugin_socket)
        try:
            eng.start()
            nets = {
                "libnet": ["-d", "libnet", "--ipv6", "--subnet", "198.51.100.0/26", "--subnet", "2001:db8:5::/64"],
                "docker_bridge": [
                    "-d", "bridge", "--ipv6", "--subnet", "198.51.100.64/26", "--subnet", "2001:db8:6::/64",
                    "-o", "com.docker.network.bridge.name=lnbench0",
                ],
                "base": [
                    "-d", "bridge", "--subnet", "198.51.100.128/26", "-o", "com.docker.network.bridge.name=lnbench1",
                ],
            }  # fmt: skip
            ids = {k: eng.docker("network", "create", *v, f"bench-{k}").stdout.strip() for k, v in nets.items()}
            ctr = eng.docker("run", "-d", "--network", "bench-base", IMAGE, "sleep", "3600").stdout.strip()
            api = _Api(eng.sock)
            drivers = ["libnet", "docker_bridge"]
            connect: dict[str, list[float]] = {d: [] for d in drivers}
            progress(f"connect+disconnect x{n_connect} per driver")
            for i in range(n_connect + 2):  # two warm-ups
                for d in drivers if i % 2 else reversed(drivers):
                    t = time.perf_counter()
                    api.post(f"/networks/{ids[d]}/connect", {"Container": ctr})
                    api.post(f"/networks/{ids[d]}/disconnect", {"Container": ctr})
                    if i >= 2:
                        connect[d].append(time.perf_counter() - t)
            progress(f"docker run --rm true x{n_run} per network")
            runs: dict[str, list[float]] = {k: [] for k in [*drivers, "none"]}
            targets = {"libnet": "bench-libnet", "docker_bridge": "bench-docker_bridge", "none": "none"}
            for i in range(n_run + 1):
                order = list(runs) if i % 2 else list(reversed(list(runs)))
                for k in order:
                    t = time.perf_counter()
                    eng.docker("run", "--rm", "--network", targets[k], IMAGE, "true", timeout=120)
                    if i >= 1:
                        runs[k].append(time.perf_counter() - t)
            base = statistics.median(runs["none"])
            share = {k: statistics.median(runs[k]) - base for k in drivers}
            figures = {
                d: {
                    "connect_disconnect_p50_s": round(_pct(connect[d], 0.5), 4),
                    "connect_disconnect_p90_s": round(_pct(connect[d], 0.9), 4),
                    "run_median_s": round(statistics.median(runs[d]), 4),
                    "run_network_share_s": round(share[d], 4),
                }
                for d in drivers
            }
        finally:
            eng.close()
    metrics = {**figures["libnet"], "run_none_median_s": round(base, 4)}
    peers = {"docker_bridge": figures["docker_bridge"]}
    ratios = {
        "connect_vs_docker_bridge": round(
            figures["libnet"]["connect_disconnect_p50_s"] / figures["docker_bridge"]["connect_disconnect_p50_s"], 3
        ),
        "run_share_vs_docker_bridge": round(share["libnet"] / share["docker_bridge"], 3)
        if share["docker_bridge"] > 0
        else None,
    }
    params = {"connect_samples": n_connect, "run_samples": n_run, "dual_stack": True, "dockerd": "20.10"}
    return emit(NAME, params, metrics, peers, ratios)


if __name__ == "__main__":
    main()
