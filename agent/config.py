"""The agent's configuration: one dataclass from a TOML file, the
environment and command-line flags (in rising precedence)."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import socket as _socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.paths import DEFAULT_SOCKET
from ipam.pools import IpamConfig, PoolSpec
from libnet.config import Config
from libnet.dns.service import DnsConfig
from libnet.errors import BadRequest
from libnet.ports import parse_range

#: the library's defaults: every setting the agent shares with it takes its default from there
_LIB = Config(node_name="")
_DNS = DnsConfig()


@dataclass
class AgentConfig:
    """Everything libnet-agent needs; defaults work on one machine with nothing else installed.

    Settings it shares with the library (:class:`libnet.config.Config`) take
    their defaults from there; :meth:`controller_config` derives the library's
    configuration from this one."""

    socket: str = DEFAULT_SOCKET
    #: the Docker network/IPAM plugin's socket (agent/docker_plugin.py); "" turns the plugin off
    docker_plugin_socket: str = "/run/docker/plugins/libnet.sock"
    #: dockerd's API socket: the plugin reads container names there (libnet's DNS across hosts); "" : never
    docker_host: str = "/var/run/docker.sock"
    #: seconds between comparisons of the plugin's networks and endpoints with dockerd's (agent/docker_sync.py)
    docker_sync_interval: float = 30.0
    store: str = _LIB.store
    state_dir: str = _LIB.state_dir
    #: cluster mode: a shared store for global objects, and Serf gossip
    cluster_store: str | None = _LIB.cluster_store
    node_name: str = field(default_factory=_socket.gethostname)
    advertise: str | None = None  # this host's address for gossip and VXLAN
    bind: str | None = None  # gossip bind address; default: advertise
    join: list[str] = field(default_factory=list)
    cluster_key: str | None = None  # base64 gossip encryption key
    serf_profile: str = "lan"
    serf_port: int = 7946
    peer_grace_period: float = _LIB.peer_grace_period  # seconds before a failed host's overlay peers are removed
    overlay_anti_entropy: float = _LIB.overlay_anti_entropy  # seconds between re-reads of overlay peers
    #: tunnel addresses of the hosts' WireGuard interfaces (encrypted overlays); unused on every host
    encryption_range: str = _LIB.encryption_range
    encryption_port: int = _LIB.encryption_port  # WireGuard's UDP port on the underlay (rotations use the next too)
    encryption_rotation: float = _LIB.encryption_rotation  # seconds between WireGuard key rotations; 0: never
    #: seconds a join of an encrypted network waits for a working WireGuard tunnel to each peer host on it
    encryption_join_timeout: float = _LIB.encryption_join_timeout
    mtu: int | None = _LIB.mtu
    ipv6: bool = _LIB.ipv6
    #: [{base, size}] as Docker's default-address-pools: IPv4 entries are local networks' defaults, IPv6
    #: entries every network's IPv6 defaults (none: a random ULA /48 per store, RFC 4193); flag form:
    #: --default-address-pool base=CIDR,size=N (repeatable)
    default_pools: list[dict[str, Any]] = field(default_factory=list)
    #: the defaults of global (overlay) networks, IPv4 and IPv6 (IPv6 none: default_pools' IPv6 entries, and
    #: then an overlay and the gateway bridge its containers join get the same first /64: set both in a cluster)
    global_pools: list[dict[str, Any]] = field(default_factory=list)
    sandbox_prefix: str | None = _LIB.sandbox_prefix  # names of the sandbox namespaces; default lns-<instance>-
    overlay_prefix: str | None = _LIB.overlay_prefix  # overlay namespaces (<prefix><vni>); default lno-<instance>-
    dns: bool = _DNS.enabled  # the embedded DNS server (127.0.0.11) in every sandbox
    dns_upstreams: list[str] = field(default_factory=list)  # default: the host's resolv.conf nameservers
    dns_ttl: int = _DNS.ttl  # seconds, for libnet's own names
    dns_upstream_timeout: float = _DNS.upstream_timeout  # seconds per upstream before the next
    dns_max_inflight: int = _DNS.max_inflight  # forwarded queries at a time; more get SERVFAIL at once
    dns_cache_size: int = _DNS.cache_size  # forwarded answers kept, shared by all sandboxes (LRU); 0: no cache
    log_format: str = "text"  # or json
    log_level: str = "info"
    reconcile_interval: float = 300.0
    #: LOW-HIGH: host ports for ``-p CONTAINER`` (no host port given), as Docker's 49153-65535
    port_range: str = f"{_LIB.port_range[0]}-{_LIB.port_range[1]}"
    #: one-shot start actions for a lost store (command line only, see ``libnet-agent --help``)
    adopt: bool = field(default=False, metadata={"flag_only": True})
    purge: bool = field(default=False, metadata={"flag_only": True})
    #: on stop, leave the cluster and stop the Serf agent (decommissioning); default: stay a member
    leave: bool = field(default=False, metadata={"flag_only": True})

    @property
    def cluster_mode(self) -> bool:
        return bool(self.cluster_store or self.join or self.advertise)

    def validate(self) -> None:
        if self.log_format not in ("text", "json"):
            raise BadRequest("log_format must be text or json", log_format=self.log_format)
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise BadRequest("log_level must be debug, info, warning or error", log_level=self.log_level)
        for name in (
            "peer_grace_period",
            "overlay_anti_entropy",
            "reconcile_interval",
            "docker_sync_interval",
            "encryption_join_timeout",
        ):
            if not getattr(self, name) > 0:
                raise BadRequest(f"{name} must be a positive number of seconds", **{name: str(getattr(self, name))})
        if not float(self.encryption_rotation) >= 0:
            raise BadRequest("encryption_rotation must be 0 (never) or a positive number of seconds")
        from libnet.encryption.records import tunnel_range

        tunnel_range(self.encryption_range)  # a bad one is refused at start, not at the first encrypted network
        if not 1 <= int(self.encryption_port) <= 65534:  # a key rotation listens on the next port too
            raise BadRequest(
                "encryption_port must be 1-65534 (a key rotation uses the next port as well)",
                encryption_port=str(self.encryption_port),
            )
        from libnet.kernel.netlink import VXLAN_PORT

        taken = {VXLAN_PORT: "VXLAN's", int(self.serf_port): "Serf gossip's (serf_port)"}
        for port in (int(self.encryption_port), int(self.encryption_port) + 1):
            if port in taken:
                raise BadRequest(
                    f"encryption_port {self.encryption_port}: WireGuard would listen on UDP {port}, "
                    f"{taken[port]} port; choose another (a key rotation uses the next port as well)",
                    encryption_port=str(self.encryption_port),
                )
        if self.adopt and self.purge:
            raise BadRequest("--adopt and --purge exclude each other: rebuild the store, or remove everything")
        if self.cluster_mode and not self.advertise:
            raise BadRequest("cluster mode needs --advertise ADDRESS (this host's address for gossip and VXLAN)")
        self.controller_config().dns.validate()
        for pools in (self.default_pools, self.global_pools):
            for p in pools:
                _check_pool(p)

    def controller_config(self) -> Config:
        """The library's configuration derived from this one."""
        ipam = IpamConfig()
        specs = {
            (kind, v6): [PoolSpec(p["base"], int(p["size"])) for p in pools if (":" in str(p["base"])) == v6]
            for kind, pools in (("local", self.default_pools), ("global", self.global_pools))
            for v6 in (False, True)
        }
        if specs["local", False]:
            ipam.local_v4 = specs["local", False]
        if specs["global", False]:
            ipam.global_v4 = specs["global", False]
        ipam.v6_pools, ipam.global_v6 = specs["local", True], specs["global", True]
        return Config(
            store=self.store,
            cluster_store=self.cluster_store,
            state_dir=self.state_dir,
            mtu=self.mtu,
            ipv6=self.ipv6,
            ipam=ipam,
            sandbox_prefix=self.sandbox_prefix,
            node_name=self.node_name,
            vtep=self.advertise,
            overlay_prefix=self.overlay_prefix,
            overlay_anti_entropy=self.overlay_anti_entropy,
            peer_grace_period=self.peer_grace_period,
            encryption_range=self.encryption_range,
            encryption_port=int(self.encryption_port),
            encryption_rotation=float(self.encryption_rotation),
            encryption_join_timeout=float(self.encryption_join_timeout),
            port_range=parse_range(self.port_range),
            dns=DnsConfig(
                enabled=self.dns,
                ttl=self.dns_ttl,
                upstreams=list(self.dns_upstreams),
                upstream_timeout=self.dns_upstream_timeout,
                max_inflight=self.dns_max_inflight,
                cache_size=self.dns_cache_size,
            ),
        )


_FIELDS = {f.name: f for f in dataclasses.fields(AgentConfig)}
#: fields given on the command line only: one-shot actions, never from a file or the environment
FLAG_ONLY = {name for name, f in _FIELDS.items() if f.metadata.get("flag_only")}
ADOPT_HELP = (
    "rebuild the local store from what this instance owns in the kernel (its marked bridges, its "
    "sandbox namespaces and the endpoints in them), then start; for a store that was lost (deleted, "
    "mistyped --store, lost -wal). Overlay networks are not rebuilt (they live in the cluster store)"
)
PURGE_HELP = (
    "remove everything this instance owns in the kernel (its sandbox and overlay namespaces, its "
    "marked bridges and veths, its nftables table), then start empty; only with a store that holds no "
    "libnet objects. Nothing unmarked or of another instance is touched"
)
LEAVE_HELP = (
    "when this run stops, leave the cluster and stop the Serf agent (decommissioning: other hosts remove "
    "this host's overlay peers after their grace period). Without it a stop leaves the Serf agent running "
    "and the host in the cluster, and the next start re-attaches to it"
)
_HELP = {"adopt": ADOPT_HELP, "purge": PURGE_HELP, "leave": LEAVE_HELP}
EPILOG = (
    "On start the agent refuses to run on an empty or unexpected store while this instance owns kernel "
    "objects (removing them would cut running containers off): fix --store, or choose --adopt or --purge."
)


def _check_pool(p: Any) -> None:
    """A default pool entry: ``{base = "CIDR", size = PREFIXLEN}``, size within the base's family."""
    if not isinstance(p, dict) or set(p) != {"base", "size"}:
        raise BadRequest('a default pool is {base = "CIDR", size = PREFIXLEN}', pool=str(p))
    try:
        base = ipaddress.ip_network(str(p["base"]))
        size = int(p["size"])
    except (TypeError, ValueError):
        raise BadRequest(
            f"default pool {p} needs a CIDR base without host bits and a number size", pool=str(p)
        ) from None
    if not base.prefixlen <= size <= base.max_prefixlen:
        raise BadRequest(
            f"default pool {base} cannot be cut into /{size} subnets (size {base.prefixlen}-{base.max_prefixlen})",
            pool=str(p),
        )


def parse_pool_flag(text: str) -> dict[str, Any]:
    """``base=CIDR,size=N`` (dockerd's --default-address-pool) as a pool entry."""
    fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    if set(fields) != {"base", "size"} or text.count(",") != 1:
        raise BadRequest(f"--default-address-pool takes base=CIDR,size=N, not {text!r}", option=text)
    entry = {"base": fields["base"], "size": fields["size"]}
    _check_pool(entry)
    return {"base": entry["base"], "size": int(entry["size"])}


def _coerce(name: str, value: Any) -> Any:
    kind = str(_FIELDS[name].type)
    try:
        if "list" in kind:
            if isinstance(value, str):
                return [v for v in value.split(",") if v]
            if not isinstance(value, list):
                raise TypeError
            return value
        if "bool" in kind:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise TypeError
        if "float" in kind:
            return float(value)
        if "int" in kind:
            return None if value in (None, "") else int(value)
        return None if value is None else str(value)
    except (TypeError, ValueError):
        raise BadRequest(f"configuration {name!r} has an invalid value {value!r}", option=name) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="libnet-agent", description="libnet per-host agent", epilog=EPILOG)
    p.add_argument("--config", help="TOML configuration file (also LIBNET_CONFIG)")
    for name, f in _FIELDS.items():
        flag = "--" + name.replace("_", "-")
        if name in FLAG_ONLY:
            p.add_argument(flag, dest=name, action="store_true", default=None, help=_HELP[name])
        elif name == "join":
            p.add_argument(flag, action="append", dest=name, help="address of a cluster member (repeatable)")
        elif "bool" in str(f.type):
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        elif name == "default_pools":
            p.add_argument(
                "--default-address-pool",
                dest="default_address_pool",
                action="append",
                metavar="base=CIDR,size=N",
                help="a default pool, as dockerd's flag (repeatable; IPv4 or IPv6); replaces the config file's",
            )
        elif name == "global_pools":
            continue  # TOML only
        else:
            p.add_argument(flag, dest=name, default=None)
    return p


def load(argv: list[str], env: Mapping[str, str]) -> AgentConfig:
    """File, then environment (``LIBNET_<NAME>``), then flags."""
    args = parser().parse_args(argv)
    values: dict[str, Any] = {}
    path = args.config or env.get("LIBNET_CONFIG")
    if path:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BadRequest(f"cannot read configuration file {path}: {exc}") from None
        unknown = set(doc) - set(_FIELDS)
        if unknown:
            raise BadRequest(f"unknown configuration key(s) in {path}: {', '.join(sorted(unknown))}")
        only = set(doc) & FLAG_ONLY
        if only:
            flags = ", ".join("--" + k for k in sorted(only))
            raise BadRequest(f"{flags} can only be given on the command line (in {path})")
        values.update({k: _coerce(k, v) for k, v in doc.items()})
    for name in [n for n in _FIELDS if n not in FLAG_ONLY]:
        key = "LIBNET_" + name.upper()
        if key in env:
            values[name] = _coerce(name, env[key])
    for name in _FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = _coerce(name, value)
    if args.default_address_pool:
        values["default_pools"] = [parse_pool_flag(t) for t in args.default_address_pool]
    config = AgentConfig(**values)
    config.validate()
    return config


def default_env() -> Mapping[str, str]:
    return os.environ
