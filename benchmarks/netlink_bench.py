"""Bulk neighbour + FDB programming on a VXLAN device: libnet vs iproute2 batch.

libnet (``libnet.kernel``, hand-packed netlink messages in chunks) adds and
deletes N FDB entries (MAC -> VTEP) and N permanent IPv6 neighbour entries
(IP -> MAC) on a VXLAN device inside a test-host namespace; in the same run
``bridge -batch`` and ``ip -batch`` do the same work from files.  Entries per
second count both kinds together (2N entries).  Also reported: the time of a
bulk flush of all of them: the FDB in one kernel call, the neighbours as a
dump plus a bulk delete (the kernel has no bulk neighbour delete).
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from benchmarks.common import emit, median, parser, progress, require, timed
from libnet.kernel.neighbours import FdbEntry, Neighbour
from libnet.kernel.netlink import Netlink
from libnet.testing.hosts import Testbed

NAME = "netlink_bench"
DEV = "vx0"


def make_entries(n: int) -> tuple[list[Neighbour], list[FdbEntry]]:
    """N IPv6 neighbour entries (2001:db8:18::/64: 10,000 do not fit in the IPv4 range test
    hosts may use, 198.51.100.0/24) and N FDB entries over 100 VTEPs."""
    neigh, fdb = [], []
    for i in range(n):
        mac = f"02:42:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01"
        neigh.append(Neighbour(f"2001:db8:18::{i + 1:x}", mac))
        fdb.append(FdbEntry(mac, f"203.0.113.{100 + i % 100}"))
    return neigh, fdb


def _batch_files(tmp: str, neigh: list[Neighbour], fdb: list[FdbEntry]) -> dict[str, str]:
    files = {
        "ip_add": [f"neigh replace {n.ip} lladdr {n.mac} dev {DEV} nud permanent" for n in neigh],
        "br_add": [f"fdb replace {e.mac} dev {DEV} dst {e.dst} self permanent" for e in fdb],
        "ip_del": [f"neigh del {n.ip} dev {DEV}" for n in neigh],
        "br_del": [f"fdb del {e.mac} dev {DEV} dst {e.dst} self" for e in fdb],
    }
    paths = {}
    for key, lines in files.items():
        paths[key] = os.path.join(tmp, key)
        with open(paths[key], "w") as f:
            f.write("\n".join(lines) + "\n")
    return paths


def _iproute2(ns: str, ip_file: str, br_file: str) -> None:
    subprocess.run(["ip", "-n", ns, "-batch", ip_file], check=True, capture_output=True)
    subprocess.run(["bridge", "-n", ns, "-batch", br_file], check=True, capture_output=True)


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    require("ip", "iproute2")
    require("bridge", "iproute2")
    n = 1000 if args.quick else 10_000
    rounds = 1 if args.quick else 5
    neigh, fdb = make_entries(n)
    total = 2 * n
    keys = ("add", "delete", "flush_fdb", "flush_neigh", "peer_add", "peer_delete")
    res: dict[str, list[float]] = {k: [] for k in keys}
    with Testbed(1) as bed, tempfile.TemporaryDirectory() as tmp, Netlink(bed.hosts[0].ns) as nl:
        ns = bed.hosts[0].ns
        nl.add_vxlan(DEV, 4242, bed.hosts[0].ipv4)
        nl.set_up(DEV)
        files = _batch_files(tmp, neigh, fdb)

        def programmed() -> tuple[int, int]:
            return len(nl.neighbours(DEV)), len(nl.fdb(DEV))

        for r in range(rounds):
            progress(f"round {r + 1}/{rounds}: {total} entries")
            res["add"].append(timed(lambda: (nl.replace_neighbours(DEV, neigh), nl.replace_fdb(DEV, fdb))))
            assert programmed() == (n, n), programmed()
            res["delete"].append(timed(lambda: (nl.delete_neighbours(DEV, neigh), nl.delete_fdb(DEV, fdb))))
            assert programmed() == (0, 0)

            res["peer_add"].append(timed(lambda: _iproute2(ns, files["ip_add"], files["br_add"])))
            assert programmed() == (n, n), programmed()
            res["peer_delete"].append(timed(lambda: _iproute2(ns, files["ip_del"], files["br_del"])))
            assert programmed() == (0, 0)

            nl.replace_neighbours(DEV, neigh)
            nl.replace_fdb(DEV, fdb)
            res["flush_fdb"].append(timed(lambda: nl.flush_fdb(DEV)))
            res["flush_neigh"].append(timed(lambda: nl.flush_neighbours(DEV)))
            assert programmed() == (0, 0)

    rate = {k: total / median(res[k]) for k in ("add", "delete", "peer_add", "peer_delete")}
    metrics = {
        "add_entries_per_s": round(rate["add"]),
        "delete_entries_per_s": round(rate["delete"]),
        "flush_fdb_ms": round(median(res["flush_fdb"]) * 1000, 2),  # one kernel call
        "flush_neighbours_ms": round(median(res["flush_neigh"]) * 1000, 2),  # dump + bulk delete
    }
    peers = {
        "iproute2_batch_add_entries_per_s": round(rate["peer_add"]),
        "iproute2_batch_delete_entries_per_s": round(rate["peer_delete"]),
    }
    ratios = {
        "add_vs_iproute2_batch": round(rate["add"] / rate["peer_add"], 3),
        "delete_vs_iproute2_batch": round(rate["delete"] / rate["peer_delete"], 3),
    }
    return emit(NAME, {"entries": total, "fdb": n, "neighbours": n, "rounds": rounds}, metrics, peers, ratios)


if __name__ == "__main__":
    main()
