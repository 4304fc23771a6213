"""What libnet owns: the instance id, marks on kernel objects, the namespace ledger.

libnet shares hosts with other software and with running containers, so it
removes only what carries its mark (DESIGN.md, "Ownership").

- **Instance**: every state dir has a persistent random id (12 hex digits in
  ``<state_dir>/instance-id``, made on first use).  Two agents with two state
  dirs are two instances; their default namespace prefixes, nftables tables
  and link marks differ, so neither ever touches the other's objects.
- **Link marks** (``IFLA_IFALIAS``, at most 255 bytes):
  ``libnet:<instance>:<kind>:<owner id>[:<owner name>]``, kind ``net`` (a
  network's bridge or VXLAN device) or ``ep`` (an endpoint's veth; both
  ends).  The host-side mark is set in the same netlink batch that creates
  the link, so a SIGKILL cannot leave it unmarked (the kernel runs a whole
  rtnetlink batch inside one ``send``).  The name (a DNS label, never a
  colon) lets ``libnet-agent --adopt`` rebuild records from the kernel.
- **Namespace ledger**: a namespace has no place for a mark, so the instance
  records each one it creates in ``<state_dir>/netns/<name>.json``
  (``{"instance", "kind", "owner"}``) *before* creating it, and forgets it
  after deleting it.  A record without its namespace is a crash's leftover
  and is simply dropped.
- **nftables**: one table per instance (:func:`firewall_table`); everything in
  it is the instance's.
- **Routes** (no place for a mark but the protocol number): libnet's routes
  carry ``proto`` :data:`ROUTE_PROTO` (108, unassigned in iproute2's
  ``rt_protos``; ``ip route show proto 108``), and libnet removes one only on
  an exact match of destination, type, metric and that protocol, recorded in
  the state dir when made (the encrypted overlays' fail-closed route,
  :mod:`libnet.encryption.fence`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from dataclasses import dataclass

from libnet.errors import BadRequest

PREFIX = "libnet:"
INSTANCE_FILE = "instance-id"
LEDGER_DIR = "netns"
_INSTANCE = re.compile(r"[0-9a-f]{12}")
KINDS = ("net", "ep")
#: the ``rtm_protocol`` of every route libnet makes (iproute2: ``proto 108``); see the module docstring
ROUTE_PROTO = 108


def load_instance_id(state_dir: str, create: bool = True) -> str | None:
    """The instance id kept in ``state_dir`` (made on first use when ``create``).

    Raises ``BadRequest`` if the file holds something that is not an id."""
    path = os.path.join(state_dir, INSTANCE_FILE)
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        if not create:
            return None
        os.makedirs(state_dir, exist_ok=True)
        text = secrets.token_hex(6)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # never replaces an id another process wrote meanwhile
        except FileExistsError:
            os.unlink(tmp)
            return load_instance_id(state_dir, create=False)
        os.unlink(tmp)
        return text
    if not _INSTANCE.fullmatch(text):
        raise BadRequest(f"{path} does not hold a libnet instance id (12 hex digits)", path=path)
    return text


def sandbox_prefix(instance: str) -> str:
    """Default name prefix of the instance's sandbox namespaces."""
    return f"lns-{instance[:6]}-"


def overlay_prefix(instance: str) -> str:
    """Default name prefix of the instance's per-network overlay namespaces."""
    return f"lno-{instance[:6]}-"


def firewall_table(instance: str) -> str:
    """The instance's own nftables table (family ``inet``)."""
    return f"libnet-{instance}"


def dead_group(instance: str) -> int:
    """The link group where the instance parks unplugged veths until they are deleted."""
    return 0x6C6E0000 | int(instance[:4], 16)


@dataclass(frozen=True)
class Mark:
    """A parsed link mark."""

    instance: str
    kind: str
    owner: str
    name: str = ""

    def __str__(self) -> str:
        tail = f":{self.name}" if self.name else ""
        return f"{PREFIX}{self.instance}:{self.kind}:{self.owner}{tail}"

    @classmethod
    def parse(cls, alias: str | None) -> Mark | None:
        """The mark in an alias, or None when the alias is not a libnet mark of this format."""
        if not alias or not alias.startswith(PREFIX):
            return None
        parts = alias[len(PREFIX) :].split(":")
        if not 3 <= len(parts) <= 4 or not _INSTANCE.fullmatch(parts[0]) or parts[1] not in KINDS or not parts[2]:
            return None
        return cls(parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else "")

    def of(self, instance: str, kind: str | None = None, owner: str | None = None) -> bool:
        """Whether this mark is ``instance``'s (and of that kind and owner, when given)."""
        return self.instance == instance and kind in (None, self.kind) and owner in (None, self.owner)


def mark(instance: str, kind: str, owner: str, name: str = "") -> str:
    """The alias marking a link as ``instance``'s, belonging to network/endpoint ``owner`` (named ``name``)."""
    if kind not in KINDS or ":" in owner or ":" in name:
        raise ValueError(f"bad mark {kind}:{owner}:{name}")
    return str(Mark(instance, kind, owner, name))


def owned_by(alias: str | None, instance: str, kind: str | None = None, owner: str | None = None) -> bool:
    """Whether a link alias marks the link as ``instance``'s (of that kind/owner when given)."""
    m = Mark.parse(alias)
    return m is not None and m.of(instance, kind, owner)


@dataclass(frozen=True)
class NamespaceRecord:
    name: str
    instance: str
    kind: str  # "sandbox" or "overlay"
    owner: str  # sandbox id or network id


class NamespaceLedger:
    """The instance's record of the named namespaces it created (see the module docstring)."""

    def __init__(self, state_dir: str, instance: str) -> None:
        self.dir = os.path.join(state_dir, LEDGER_DIR)
        self.instance = instance

    def _path(self, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise BadRequest(f"invalid namespace name {name!r}", netns=name)
        return os.path.join(self.dir, name + ".json")

    def record(self, name: str, kind: str, owner: str) -> None:
        """Write the record (atomically) before the namespace is created."""
        os.makedirs(self.dir, exist_ok=True)
        path = self._path(name)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"instance": self.instance, "kind": kind, "owner": owner}, f)
        os.replace(tmp, path)

    def forget(self, name: str) -> None:
        """Drop the record once the namespace is gone; missing is fine."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))

    def get(self, name: str) -> NamespaceRecord | None:
        """This instance's record of ``name``, or None."""
        try:
            with open(self._path(name)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("instance") != self.instance:
            return None
        return NamespaceRecord(name, self.instance, str(data.get("kind", "")), str(data.get("owner", "")))

    def owns(self, name: str, kind: str | None = None, owner: str | None = None) -> bool:
        rec = self.get(name)
        return rec is not None and (kind is None or rec.kind == kind) and (owner is None or rec.owner == owner)

    def records(self, kind: str | None = None) -> list[NamespaceRecord]:
        """Every record of this instance (of one kind), by name."""
        try:
            names = sorted(n[: -len(".json")] for n in os.listdir(self.dir) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            rec = self.get(name)
            if rec is not None and (kind is None or rec.kind == kind):
                out.append(rec)
        return out
