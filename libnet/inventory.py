"""What one libnet instance owns in the kernel: find it, and remove it all.

Ownership (DESIGN.md, "Ownership"; :mod:`libnet.ownership`) is decided by
marks only, never by names:

- links in the host namespace whose alias is a mark of the instance
  (bridges, host-side veths, a VXLAN device caught before its move);
- namespaces the instance's ledger records (sandbox and overlay ones) that
  exist; a record without its namespace is a crash's leftover;
- the instance's own nftables table (family ``inet``) and the rules in it;
- the encrypted overlays' fail-closed route its state dir records
  (:mod:`libnet.encryption.fence`; removed by :func:`purge` only on an exact match).

:func:`scan` only reads.  :func:`purge` removes exactly what a scan found
(namespaces first: deleting one takes the links inside it along), and
anything unmarked or marked by another instance stays, whatever its name.
The agent uses both at start: a store with nothing in it next to a non-empty
inventory stops the agent (``libnet-agent --adopt`` / ``--purge``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from libnet import ownership, sandbox_files
from libnet.errors import LibnetError
from libnet.ownership import Mark, NamespaceLedger, NamespaceRecord

if TYPE_CHECKING:
    from libnet.kernel.firewall import Firewall

log = logging.getLogger("libnet.inventory")


@dataclass(frozen=True)
class OwnedLink:
    """A link of the host namespace carrying the instance's mark."""

    name: str
    kind: str | None  # the link kind: bridge, veth, vxlan, ...
    mark: Mark


@dataclass
class Inventory:
    """Everything of one instance :func:`scan` found."""

    instance: str
    links: list[OwnedLink] = field(default_factory=list)
    namespaces: list[NamespaceRecord] = field(default_factory=list)  # existing ones
    stale_records: list[NamespaceRecord] = field(default_factory=list)  # records whose namespace is gone
    table: str = ""
    rules: int = 0  # rules in the instance's table (0: no table, or an empty one)
    table_exists: bool = False
    problems: list[str] = field(default_factory=list)  # parts that could not be read

    def empty(self) -> bool:
        """Whether the instance owns nothing in the kernel (a table without rules counts as nothing)."""
        return not self.links and not self.namespaces and not self.rules

    def summary(self, few: int = 3) -> str:
        """``2 links (lnb-x, lnvy), 1 namespace (lns-...), 5 nftables rules in table inet libnet-...``."""
        parts = []
        if self.links:
            parts.append(_counted(len(self.links), "marked link", [link.name for link in self.links], few))
        if self.namespaces:
            parts.append(_counted(len(self.namespaces), "namespace", [r.name for r in self.namespaces], few))
        if self.rules:
            parts.append(f"{self.rules} nftables rule{'s' if self.rules != 1 else ''} in table inet {self.table}")
        return ", ".join(parts) or "nothing"


def _counted(n: int, what: str, names: list[str], few: int) -> str:
    shown = ", ".join(names[:few]) + (", ..." if len(names) > few else "")
    return f"{n} {what}{'s' if n != 1 else ''} ({shown})"


def _firewall(host_ns: str | None, instance: str) -> Firewall:
    from libnet.kernel.firewall import Firewall

    return Firewall(host_ns, table=ownership.firewall_table(instance))


def scan(instance: str, state_dir: str, host_ns: str | None = None) -> Inventory:
    """Read what ``instance`` (whose state is in ``state_dir``) owns; changes nothing (blocking)."""
    from libnet.kernel import netns
    from libnet.kernel.netlink import Netlink

    inv = Inventory(instance, table=ownership.firewall_table(instance))
    with Netlink(host_ns) as nl:
        for link in nl.links():
            mark = Mark.parse(link.alias)
            if mark is not None and mark.instance == instance:
                inv.links.append(OwnedLink(link.name, link.kind, mark))
    for rec in NamespaceLedger(state_dir, instance).records():
        (inv.namespaces if netns.exists(rec.name) else inv.stale_records).append(rec)
    try:
        with _firewall(host_ns, instance) as fw:
            inv.rules = len(fw.rules())
            inv.table_exists = inv.rules > 0 or _has_table(fw)
    except (LibnetError, OSError) as exc:
        inv.problems.append(f"nftables table {inv.table}: {exc}")
    return inv


def _has_table(fw: Firewall) -> bool:
    probe = getattr(fw, "has_table", None) or getattr(fw, "_has_table", None)
    return bool(probe()) if probe is not None else False


def purge(inv: Inventory, state_dir: str, host_ns: str | None = None) -> list[str]:
    """Remove what ``inv`` lists (blocking); returns one line per object removed.

    Namespaces go first (with the interfaces in them), then the marked links
    of the host namespace (re-checked: a link whose mark changed meanwhile
    stays), then the fence route the state dir records, then the instance's
    nftables table; sandbox files of purged sandboxes and the ledger records go too."""
    from libnet.encryption import fence
    from libnet.kernel import netns
    from libnet.kernel.netlink import Netlink

    removed: list[str] = []
    ledger = NamespaceLedger(state_dir, inv.instance)
    for rec in inv.namespaces:
        if not ledger.owns(rec.name, rec.kind, rec.owner):
            continue
        netns.delete(rec.name)
        ledger.forget(rec.name)
        if rec.kind == "sandbox":
            sandbox_files.remove(state_dir, rec.owner)
        owner = "sandbox" if rec.kind == "sandbox" else "network"
        removed.append(f"{rec.kind} namespace {rec.name} ({owner} {rec.owner[:12]})")
    for rec in inv.stale_records:
        ledger.forget(rec.name)
    order = {"veth": 0, "vxlan": 1, "bridge": 3}
    with Netlink(host_ns) as nl:
        for link in sorted(inv.links, key=lambda lk: order.get(lk.kind or "", 2)):
            try:
                current = nl.link(link.name)
            except LibnetError:
                continue  # gone with its peer or its namespace
            if Mark.parse(current.alias) != link.mark:
                continue  # re-marked meanwhile: not what the scan found
            try:
                nl.delete_link(link.name)
            except LibnetError as exc:
                log.warning("purge: %s not removed: %s", link.name, exc)
                continue
            what = "network" if link.mark.kind == "net" else "endpoint"
            removed.append(f"{link.kind or 'link'} {link.name} ({what} {link.mark.name or link.mark.owner[:12]})")
    removed += _stop_wireguard_go(inv.instance, state_dir, host_ns)
    with Netlink(host_ns) as nl:
        if fenced := fence.remove(nl, state_dir):
            removed.append(f"route unreachable {fenced} proto {ownership.ROUTE_PROTO} (encrypted overlays' guard)")
    if inv.table_exists or inv.rules:
        with _firewall(host_ns, inv.instance) as fw:
            fw.delete_table()
        removed.append(f"nftables table inet {inv.table} ({inv.rules} rules)")
    from libnet.kernel.proxy_nat import untrack_commands

    with _firewall(host_ns, inv.instance) as fw:  # the proxies' notrack table of the same name (family bridge)
        fw.replace_table(untrack_commands(fw.table, [], []))
    return removed


def _stop_wireguard_go(instance: str, state_dir: str, host_ns: str | None) -> list[str]:
    """The instance's ``wireguard-go`` processes (encrypted overlays' tunnels), by their pid records in
    the state dir (trusted only while the process is still ``wireguard-go`` of that interface)."""
    import os

    from libnet.encryption.backend import UserspaceBackend
    from libnet.encryption.tunnel import ifname_of

    backend = UserspaceBackend(host_ns, os.path.join(state_dir, "wireguard"))
    removed = []
    for slot in (0, 1):
        ifname = ifname_of(instance, slot)
        if (pid := backend.pid(ifname)) is not None:
            backend.delete(ifname)
            removed.append(f"wireguard-go {pid} of {ifname} (encrypted overlays' tunnel)")
    return removed
