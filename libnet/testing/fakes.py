"""In-memory stand-ins for the kernel side of the controller, for unit tests."""

from __future__ import annotations

import hashlib
from typing import Any

from libnet.driverapi import Capabilities, EndpointInfo, NetworkInfo, ReconcileReport, SandboxInfo
from libnet.errors import Conflict, InvalidOption, KernelError, KernelObjectExists, NotANamespace


class FakeDriver:
    """Records what it is asked to do; ``fail_on`` makes a method raise once."""

    def __init__(self, name: str = "bridge", scope: str = "local") -> None:
        self.name = name
        self.scope = scope
        self.calls: list[tuple[str, str]] = []
        self.networks: set[str] = set()
        self.joined: dict[str, SandboxInfo] = {}  # endpoint id -> where
        self.gateways: dict[str, bool] = {}
        self.ports: set[str] = set()
        self.fail_on: str | None = None

    def _call(self, method: str, obj_id: str) -> None:
        self.calls.append((method, obj_id))
        if self.fail_on == method:
            self.fail_on = None
            raise KernelError(f"injected failure in {method}", errno=5)

    def capabilities(self) -> Capabilities:
        return Capabilities(scope=self.scope)  # type: ignore[arg-type]

    def parse_network_options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = set(options) - {"mtu"}
        if unknown:
            raise InvalidOption(f"unknown option(s) {sorted(unknown)}")
        if "mtu" in options and not isinstance(options["mtu"], int):
            raise InvalidOption("mtu must be a number")
        return dict(options)

    async def check_network(self, nw: NetworkInfo) -> None:
        self._call("check_network", nw.id)

    async def create_network(self, nw: NetworkInfo) -> None:
        self._call("create_network", nw.id)
        self.networks.add(nw.id)

    async def delete_network(self, nw: NetworkInfo) -> None:
        self._call("delete_network", nw.id)
        self.networks.discard(nw.id)

    async def create_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        self._call("create_endpoint", ep.id)

    async def delete_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        self._call("delete_endpoint", ep.id)

    async def join(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        self._call("join", ep.id)
        self.joined[ep.id] = sb
        self.gateways[ep.id] = sb.gateway

    async def leave(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        self._call("leave", ep.id)
        self.joined.pop(ep.id, None)
        self.gateways.pop(ep.id, None)

    async def set_gateway(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo, gateway: bool) -> None:
        self._call("set_gateway", ep.id)
        self.gateways[ep.id] = gateway

    async def program_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        self._call("program_external_connectivity", ep.id)
        if ep.ports:
            self.ports.add(ep.id)

    async def revoke_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        self._call("revoke_external_connectivity", ep.id)
        self.ports.discard(ep.id)

    async def reconcile(
        self, networks: list[NetworkInfo], endpoints: list[tuple[EndpointInfo, SandboxInfo | None]]
    ) -> ReconcileReport:
        report = ReconcileReport()
        for nw in networks:
            if nw.id not in self.networks:
                report.missing.append(f"network {nw.id}")
        return report

    async def close(self) -> None:
        pass


class FakeNamespaces:
    """Namespaces as a set of paths; ``owners`` are the ones this instance made."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.owners: dict[str, str] = {}
        self.busy: set[str] = set()  # namespaces holding interfaces besides lo

    def create(self, name: str, owner: str) -> str:
        path = f"/run/netns/{name}"
        if path in self.paths:
            raise KernelObjectExists("namespace exists", errno=17, netns=name)
        self.paths.add(path)
        self.owners[path] = owner
        return path

    def delete(self, path: str) -> bool:
        if path not in self.owners:
            return False
        self.paths.discard(path)
        del self.owners[path]
        return True

    def exists(self, path: str) -> bool:
        return path in self.paths

    def owned(self) -> dict[str, str]:
        return {p: o for p, o in self.owners.items() if p in self.paths}

    def in_use(self, path: str) -> bool:
        return path in self.busy

    def identity(self, path: str) -> str | None:
        return hashlib.sha256(path.encode()).hexdigest()[:16] if path in self.paths else None

    #: the host's own namespaces, refused as a container's
    host = ("/proc/self/ns/net", "/proc/1/ns/net")

    def check_external(self, path: str, sandboxes: dict[str, str]) -> None:
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
            raise NotANamespace(f"netns {path!r} must be an absolute path to a network namespace", netns=str(path))
        if path in self.host:
            raise NotANamespace(f"netns path {path} is the host's own network namespace", netns=path)
        if path not in self.paths:
            raise NotANamespace(f"netns path {path} does not exist", netns=path)
        for sid, other in sandboxes.items():
            if other == path:
                raise Conflict(f"netns path {path} is the namespace of sandbox {sid} already", netns=path, holder=sid)


class FakeProxyPlane:
    """:class:`libnet.proxies.ProxyPlane` that records, per namespace, the sysctls
    prepared and the last table applied (no kernel)."""

    def __init__(self) -> None:
        self.prepared: list[str] = []
        self.tables: dict[str, Any] = {}  # netns -> ProxyTable
        self.applied = 0
        self.forgotten: list[tuple[str, list[str]]] = []  # (netns, the UDP backends whose conntrack entries stay)
        self.untracked: tuple[list[str], list[str]] = ([], [])  # the host's notrack (ports, MACs), last given

    async def prepare(self, netns: str) -> None:
        self.prepared.append(netns)

    async def apply(self, netns: str, table: Any) -> None:
        self.tables[netns] = table
        self.applied += 1

    async def forget(self, netns: str, keep: Any) -> int:
        self.forgotten.append((netns, sorted(keep)))
        return 0

    async def untrack(self, ports: Any, macs: Any) -> None:
        self.untracked = (sorted(ports), sorted(macs))

    async def rules(self, netns: str) -> list[dict[str, Any]]:
        from libnet.kernel.proxy_nat import rules

        table = self.tables.get(netns)
        return [] if table is None else [{"chain": c, "expr": e} for c, e in rules(table)]
