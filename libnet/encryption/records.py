"""The cluster store's encryption records: each host's public key, endpoint and tunnel address.

``<P>/nodes/<node>``: a :class:`NodeKey` document (kind ``wireguard_node``),
written by the host itself when its tunnel comes up, read by every other host
with a tunnel (their WireGuard peers).  ``<P>/revoked/<node>``: a host revoked by an
operator (``libnet node revoke``), refused as a peer by every host until the
mark is deleted.  ``<P>/addresses/<ip>``: the node
holding tunnel address ``ip``, created with compare-and-swap, so two hosts
never get the same address.  The private key never leaves its host.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import asdict, dataclass

from libnet import model
from libnet.errors import BadRequest, KeyExists, Unavailable
from libnet.store.base import Store

#: the store prefix of encryption records
P = "libnet/v1/encryption"
KIND = "wireguard_node"


def nodes_prefix() -> str:
    return f"{P}/nodes/"


def revoked_prefix() -> str:
    """``<P>/revoked/<node>``: hosts every other host refuses as a WireGuard peer, whatever key they publish."""
    return f"{P}/revoked/"


#: one WireGuard identity of a host: (public key, ``host:port`` endpoint, tunnel address)
Identity = tuple[str, str, str]


@dataclass(frozen=True)
class NodeKey:
    """One host's WireGuard identity as the other hosts see it.

    ``public_key``: base64 (44 characters); ``endpoint``: ``host:port`` of its
    WireGuard UDP socket on the underlay (IPv6 in brackets); ``tunnel``: its
    tunnel address (the VTEP of its encrypted overlays).  ``others``: during a
    key rotation, the host's other live identity (the coming or the going
    key), each with its own port and tunnel address -- peers accept both.
    ``cidr``: the host's encryption range (``""`` in records of older
    agents: not compared); hosts whose ranges differ cannot carry each
    other's encrypted VXLAN (each routes only its own range into WireGuard),
    so each refuses the other (:meth:`incompatible_with`)."""

    node: str
    public_key: str
    endpoint: str
    tunnel: str
    others: tuple[Identity, ...] = ()
    cidr: str = ""

    def incompatible_with(self, cidr: str) -> str | None:
        """Why this host's tunnel cannot work with one whose encryption range is ``cidr`` (None: it can)."""
        if not self.cidr or str(tunnel_range(self.cidr)) == str(tunnel_range(cidr)):
            return None
        return f"its encryption range is {self.cidr}, this host's {cidr}: set the same --encryption-range on every host"

    def identities(self) -> list[Identity]:
        return [(self.public_key, self.endpoint, self.tunnel), *self.others]

    def encode(self) -> bytes:
        data = asdict(self)
        data["others"] = [list(i) for i in self.others]
        return model.encode(KIND, data)

    @classmethod
    def decode(cls, raw: bytes) -> NodeKey:
        data = model.decode(raw, KIND)
        try:
            others = tuple((str(k), str(e), str(t)) for k, e, t in data.get("others") or [])
            return cls(
                str(data["node"]),
                str(data["public_key"]),
                str(data["endpoint"]),
                str(data["tunnel"]),
                others,
                str(data.get("cidr") or ""),
            )
        except KeyError as exc:
            raise BadRequest(f"stored {KIND} lacks {exc}", kind=KIND) from None
        except (TypeError, ValueError):
            raise BadRequest(f"stored {KIND} has malformed other identities", kind=KIND) from None


def endpoint(address: str, port: int) -> str:
    """``address:port`` (``[v6]:port``)."""
    return f"[{address}]:{port}" if ipaddress.ip_address(address).version == 6 else f"{address}:{port}"


def tunnel_range(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The configured tunnel range, checked: at least 4 host addresses."""
    try:
        net = ipaddress.ip_network(cidr)
    except ValueError:
        raise BadRequest(f"invalid encryption range {cidr!r}", range=cidr) from None
    if net.num_addresses < 4:
        raise BadRequest(f"encryption range {cidr} is too small (fewer than 4 addresses)", range=cidr)
    return net


async def claim_address(store: Store, cidr: str, node: str, attempts: int = 4096) -> str:
    """This node's tunnel address in ``cidr``: the one the store already
    records for it, else the first free one from a start derived from the
    node's name (so hosts rarely race for the same one), claimed by CAS.

    Raises ``Unavailable`` when the range has no free address."""
    net = tunnel_range(cidr)
    for pair in await store.list(f"{P}/addresses/"):
        if pair.value.decode(errors="replace") == node and ipaddress.ip_address(pair.key.rsplit("/", 1)[1]) in net:
            return pair.key.rsplit("/", 1)[1]
    usable = net.num_addresses - 2 if net.version == 4 else net.num_addresses - 1
    start = int.from_bytes(hashlib.sha256(node.encode()).digest()[:8], "big") % usable
    for i in range(min(usable, attempts)):
        addr = str(net.network_address + 1 + (start + i) % usable)
        try:
            await store.atomic_put(f"{P}/addresses/{addr}", node.encode(), None)
        except KeyExists:
            continue
        return addr
    raise Unavailable(f"no free tunnel address in the encryption range {cidr}", range=cidr, node=node)


def slot_owner(node: str, slot: int) -> str:
    """Who holds the tunnel address of ``node``'s WireGuard slot ``slot`` (0: the node's name)."""
    return node if slot == 0 else f"{node}#{slot}"


async def release_address(store: Store, node: str, slot: int | None = None) -> None:
    """Forget the tunnel address of ``node``'s slot ``slot`` (None: all of them, the host left for good)."""
    for pair in await store.list(f"{P}/addresses/"):
        owner = pair.value.decode(errors="replace")
        mine = owner == slot_owner(node, slot) if slot is not None else owner.split("#", 1)[0] == node
        if mine:
            await store.delete(pair.key)


def acks_prefix(node: str) -> str:
    """``<P>/acks/<node>/<peer>``: the public key of ``node``'s coming identity that ``peer`` has configured."""
    return f"{P}/acks/{node}/"
