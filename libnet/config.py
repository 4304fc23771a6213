"""The one configuration object, passed down from the composition root."""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipam.pools import IpamConfig
    from libnet.dns.service import DnsConfig


def _default_ipam() -> IpamConfig:
    # imported here: ipam imports libnet.errors, and libnet's package init imports this module
    from ipam.pools import IpamConfig

    return IpamConfig()


def _default_dns() -> DnsConfig:
    from libnet.dns.service import DnsConfig

    return DnsConfig()


# Every default once (issue 17): the modules that need one import it from here.
#: the local store: embedded SQLite
DEFAULT_STORE = "sqlite:///var/lib/libnet/store.db"
#: seconds between overlay anti-entropy rounds
DEFAULT_ANTI_ENTROPY = 30.0
#: seconds a failed or departed host keeps its overlay peers
DEFAULT_GRACE = 10.0
#: tunnel addresses of hosts' WireGuard interfaces (encrypted overlays); must be unused on every host
DEFAULT_ENCRYPTION_RANGE = "100.64.0.0/16"
#: WireGuard's UDP port on the underlay (a key rotation uses the next one too)
DEFAULT_ENCRYPTION_PORT = 51820


def encryption_ports(port: int) -> dict[tuple[str, int], str]:
    """The host's UDP ports WireGuard needs with ``encryption_port`` = ``port``: it and the next (a key
    rotation's second interface), as (protocol, port) -> why; never published for a container (the
    DNAT would take the tunnel's traffic), also while nothing listens there."""
    why = f"WireGuard of encrypted overlays uses UDP {port} and {port + 1} (encryption_port)"
    return {("udp", port): why, ("udp", port + 1): why}


#: seconds between rotations of a host's WireGuard key pair (0: never)
DEFAULT_ENCRYPTION_ROTATION = 12 * 3600.0
#: seconds a join of an encrypted network waits for a working tunnel to each peer host on it
DEFAULT_ENCRYPTION_JOIN_TIMEOUT = 10.0
#: host ports for ``-p CONTAINER`` (Docker's range, above the kernel's usual ephemeral ports)
DEFAULT_PORT_RANGE = (49153, 65535)


@dataclass
class Config:
    """Everything the controller needs to know; nothing is read from globals.

    Defaults work on one machine with nothing else installed.
    """

    #: local-scope store (bridge networks, their endpoints, sandboxes)
    store: str = DEFAULT_STORE
    #: cluster-scope store (overlay networks, global IPAM); None: the local store
    cluster_store: str | None = None
    #: per-sandbox files (resolv.conf, hosts) go under <state_dir>/sandboxes/<id>/
    state_dir: str = "/var/lib/libnet"
    #: the namespace where bridges and host-side interfaces live; None: this process's
    host_netns: str | None = None
    #: MTU of new networks without an mtu option; None: the uplink's MTU
    mtu: int | None = None
    #: dual-stack by default: every network gets an IPv6 subnet unless turned off
    ipv6: bool = True
    ipam: IpamConfig = field(default_factory=_default_ipam)
    #: the host resolver configuration sandboxes inherit
    resolv_conf: str = "/etc/resolv.conf"
    #: this libnet instance (ownership marks, see libnet.ownership); None: kept in state_dir
    instance_id: str | None = None
    #: prefix of the namespaces libnet creates for sandboxes; None: derived from the instance
    sandbox_prefix: str | None = None
    #: this host's name in the cluster, and its VTEP address (IPv4 or IPv6) for overlays
    node_name: str = field(default_factory=socket.gethostname)
    vtep: str | None = None
    #: prefix of the per-network overlay namespaces (<prefix><vni>); None: derived from the instance
    overlay_prefix: str | None = None
    #: seconds between overlay anti-entropy rounds (peers re-read from the store, devices repaired)
    overlay_anti_entropy: float = DEFAULT_ANTI_ENTROPY
    #: seconds before the overlay peers of a host that failed or left are removed (cluster mode)
    peer_grace_period: float = DEFAULT_GRACE
    #: the embedded DNS server of every sandbox (127.0.0.11)
    dns: DnsConfig = field(default_factory=_default_dns)
    #: host ports a published port without a host port (``-p 80``) is given from, both ends included
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    #: tunnel addresses of the hosts' WireGuard interfaces (encrypted overlays' VTEPs), claimed in the cluster store
    encryption_range: str = DEFAULT_ENCRYPTION_RANGE
    #: WireGuard's UDP port on the underlay (encrypted overlays)
    encryption_port: int = DEFAULT_ENCRYPTION_PORT
    #: seconds between rotations of this host's WireGuard key pair, without loss (0: never)
    encryption_rotation: float = DEFAULT_ENCRYPTION_ROTATION
    #: seconds a join of an encrypted network waits for a working tunnel to each peer host on it
    encryption_join_timeout: float = DEFAULT_ENCRYPTION_JOIN_TIMEOUT

    def resolved(self) -> Config:
        """This configuration with the instance id (read or made in ``state_dir``)
        and the prefixes derived from it filled in."""
        from libnet import ownership

        instance = self.instance_id or ownership.load_instance_id(self.state_dir)
        assert instance is not None
        return dataclasses.replace(
            self,
            instance_id=instance,
            sandbox_prefix=self.sandbox_prefix or ownership.sandbox_prefix(instance),
            overlay_prefix=self.overlay_prefix or ownership.overlay_prefix(instance),
        )
